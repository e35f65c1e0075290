//! `wgspin train` and `wgspin sft` as a library call: the files around a [`Trainer`] run, the
//! same for both objectives.
//!
//! Output folder layout:
//! - `train_config.json`: the resolved settings, objective included (a resumed run must use the
//!   same ones);
//! - `ref_logps.jsonl` (SPIN): the reference model's log-probs of every pair, computed once;
//! - `metrics.jsonl`: one row of [`StepMetrics`] per logging step;
//! - `checkpoint/`: Hugging Face layout plus `trainer_state.json` (and, while the run is not
//!   finished, `optimizer.safetensors` and f32 weights), replaced atomically at every save; the
//!   finished checkpoint stores the weights in the input's dtype. With LoRA it is a PEFT adapter
//!   folder instead (`adapter_config.json`, `adapter_model.safetensors`, f32) on the input's base.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::{Value, json};

use super::card::{CardFacts, RunNotes, training_section};
use super::optim::{OptimConfig, Optimizer};
use super::state::LossScaler;
use super::{
    Objective, ObjectiveKind, PairLogps, StepMetrics, TrainConfig, Trainer, pair_logps,
    tokenize_pairs, tokenize_sft,
};
use crate::data::SftExample;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::hf::weights::StoredDtype;
use crate::load::ModelSource;
use crate::load::bundle::ModelBundle;
use crate::load::checkpoint;
use crate::manifest;
use crate::model::precision::set_compute;
use crate::report::ReportTo;
use crate::report::tensorboard::{EventWriter, RUNS_DIR};

pub const CHECKPOINT: &str = "checkpoint";
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const REF_FILE: &str = "ref_logps.jsonl";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CONFIG_FILE: &str = "train_config.json";

/// What the job reports while it runs (the CLI draws bars and prints from these).
pub enum TrainEvent<'a> {
    /// Reference scoring progress (SPIN): sequences scored of total.
    Reference {
        done: usize,
        total: usize,
    },
    /// Reference log-probs were found in the output folder.
    ReferenceCached,
    /// Resuming at this step.
    Resumed {
        step: usize,
    },
    Step {
        metrics: &'a StepMetrics,
        total_steps: usize,
    },
    Saved {
        step: usize,
        path: &'a Path,
    },
}

/// Outcome of a training job.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub checkpoint: PathBuf,
    pub steps: usize,
    pub last: Option<StepMetrics>,
    pub seconds: f64,
}

fn state_of(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join(CHECKPOINT).join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// True when `out` holds a finished training run.
pub fn is_complete(out: &Path) -> Result<bool> {
    Ok(state_of(out)?
        .and_then(|s| s.get("complete").and_then(Value::as_bool))
        .unwrap_or(false))
}

fn load_ref_cache(path: &Path, ids: &[String]) -> Option<PairLogps> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    if rows.len() != ids.len() {
        return None;
    }
    let mut out = PairLogps {
        real: vec![],
        generated: vec![],
    };
    for (row, id) in rows.iter().zip(ids) {
        if row.get("id")?.as_str()? != id {
            return None;
        }
        out.real.push(row.get("real")?.as_f64()?);
        out.generated.push(row.get("generated")?.as_f64()?);
    }
    Some(out)
}

/// What `wgspin train` and `sft` write into their output folder (the lock and a crashed save's
/// `.checkpoint.*` leftovers are hidden, and handled by the lock and [`checkpoint::recover`]).
pub const LAYOUT: manifest::RunLayout = manifest::RunLayout {
    writer: "`wgspin train` or `sft`",
    marker: CONFIG_FILE,
    entries: &[CONFIG_FILE, CHECKPOINT, METRICS_FILE, REF_FILE, RUNS_DIR],
};

/// What [`run_train`] does with a run already in its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it (a new run needs an empty folder or a new one).
    Refuse,
    /// Continue it from its checkpoint: same model, data and settings only.
    Resume,
    /// Remove it first (only what a run wrote there) and start over.
    Overwrite,
    /// The folder belongs to the caller (a `spin` iteration beside its generated pairs):
    /// continue what is there without the folder checks.
    Within,
}

/// The settings a saved run's state records, in today's shape: a setting added since the run was
/// saved reads as its default, which is what that run did.
fn saved_config(state: &Value) -> Option<Value> {
    state
        .get("config")
        .and_then(|c| serde_json::from_value::<TrainConfig>(c.clone()).ok())
        .and_then(|c| serde_json::to_value(c).ok())
}

/// Which settings of a saved run differ from `now`, for the refusal to resume it.
fn settings_differ(saved: &Value, now: &Value) -> String {
    if serde_json::from_value::<TrainConfig>(saved.clone()).is_err() {
        return format!(
            "the run there was saved by an earlier wgspin whose settings had another shape ({saved}); \
             finish it with that version"
        );
    }
    let diffs = manifest::differences(saved, now);
    format!("the run there used other settings ({})", diffs.join("; "))
}

/// The reference's log-probs of `pairs`: from `out`'s cache when it matches, else scored with
/// `model` (the opponent θ_t) and cached.
fn reference_logps(
    model: &crate::model::Transformer,
    pairs: &[super::TrainPair],
    pad: u32,
    out: &Path,
    cfg: &TrainConfig,
    report: &mut impl FnMut(TrainEvent),
) -> Result<PairLogps> {
    let ids: Vec<String> = pairs.iter().map(|p| p.id.clone()).collect();
    let ref_path = out.join(REF_FILE);
    if let Some(r) = load_ref_cache(&ref_path, &ids) {
        report(TrainEvent::ReferenceCached);
        return Ok(r);
    }
    let total = 2 * pairs.len();
    let mut done = 0;
    let r = pair_logps(model, pairs, pad, cfg.batch_size, cfg.max_logits, |n| {
        done += n;
        report(TrainEvent::Reference { done, total });
    })?;
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        text.push_str(
            &json!({"id": id, "real": r.real[i], "generated": r.generated[i]}).to_string(),
        );
        text.push('\n');
    }
    fsutil::write_atomic(&ref_path, text.as_bytes())?;
    Ok(r)
}

/// Trains on `examples` from the model at `model_path`, into `out`, with `cfg.objective`: SPIN
/// (examples need `generated`) or SFT. `existing` says what to do with a run already in `out`.
#[allow(clippy::too_many_arguments)]
pub fn run_train(
    model_path: &Path,
    examples: &[SftExample],
    out: &Path,
    cfg: &TrainConfig,
    existing: Existing,
    notes: &RunNotes,
    device: &Device,
    mut report: impl FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let start = std::time::Instant::now();
    cfg.validate()?;
    super::memory::check_budget(model_path, cfg, device)?;
    let _lock = manifest::lock_dir(out)?;
    // Refuse a foreign folder before touching anything; clear an earlier run only after a crashed
    // save's copy was put back, so that copy goes too.
    if existing != Existing::Within {
        LAYOUT.prepare(out, false)?;
    }
    checkpoint::recover(out, CHECKPOINT)?;
    if existing == Existing::Overwrite {
        LAYOUT.prepare(out, true)?;
    }
    let state = state_of(out)?;
    if state.is_some() && existing == Existing::Refuse {
        return Err(Error::Invalid(format!(
            "{} already holds a training run; pass --resume to continue it, --overwrite to \
             replace it, or choose another --out",
            out.display()
        )));
    }
    let config_json = serde_json::to_value(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(s) = &state
        && saved_config(s).as_ref() != Some(&config_json)
    {
        let saved = saved_config(s)
            .or_else(|| s.get("config").cloned())
            .unwrap_or(Value::Null);
        return Err(Error::Invalid(format!(
            "{}: {}; resume with the same flags, or start over with --overwrite or another --out",
            out.join(CHECKPOINT).join(STATE_FILE).display(),
            settings_differ(&saved, &config_json)
        )));
    }
    // What this run is made of (hashing reads every weight, so after the cheap checks): a resume
    // must continue the same model on the same data.
    let (data_key, data_noun) = match cfg.objective {
        ObjectiveKind::Spin => ("pairs_sha256", "pairs"),
        ObjectiveKind::Sft => ("data_sha256", "data"),
    };
    let saved_identity = state.as_ref().and_then(|s| s.get("identity"));
    let model_files = ModelSource::resolve(model_path)?.files()?;
    let identity = json!({
        "model": manifest::identity_for(
            &model_files,
            manifest::model_identity(&model_files)?,
            saved_identity.and_then(|i| i.get("model")),
        )?,
        data_key: manifest::content_hash(&examples),
    });
    if let Some(saved) = saved_identity
        && saved != &identity
    {
        return Err(Error::Invalid(format!(
            "{} was trained from another model or on other {data_noun} ({}); resume with the \
             same --model and --data, or start over with --overwrite or another --out",
            out.display(),
            manifest::differences(saved, &identity).join("; ")
        )));
    }
    // What this run writes, recorded before it is written: `--overwrite` removes only these.
    let mut written = vec![CONFIG_FILE, CHECKPOINT, METRICS_FILE];
    if cfg.objective == ObjectiveKind::Spin {
        written.push(REF_FILE);
    }
    if notes.report_to == ReportTo::Tensorboard {
        written.push(RUNS_DIR);
    }
    for name in written {
        LAYOUT.claim(out, name)?;
    }
    fsutil::write_atomic(
        &out.join(CONFIG_FILE),
        serde_json::to_string_pretty(&config_json)
            .unwrap_or_default()
            .as_bytes(),
    )?;

    // The input θ_t: tokenizer, stored dtype, and for SPIN the frozen reference's log-probs of
    // every pair (then dropped, so one model is in memory while training). A fresh SFT run
    // trains the input itself, loaded once.
    let ckpt = out.join(CHECKPOINT);
    let resume_step = state
        .as_ref()
        .and_then(|s| s.get("step").and_then(Value::as_u64))
        .unwrap_or(0) as usize;
    let train_device = cfg.train_device(device);
    let load_player =
        |from: &Path| ModelBundle::load_for_training(from, &train_device, &cfg.lora, cfg.data_seed);
    let fresh_sft = cfg.objective == ObjectiveKind::Sft && state.is_none();
    let compute = cfg.dtype.resolve(device)?;
    let mut input = if fresh_sft {
        load_player(model_path)?
    } else {
        ModelBundle::load(model_path, device)?
    };
    let pad = input.tokenizer.pad_id();
    let (dtype, source_dir) = (input.stored_dtype, input.dir.clone());
    let objective = match cfg.objective {
        ObjectiveKind::Spin => {
            // The reference scores in the dtype the player trains in, so both start equal.
            set_compute(&mut input.model, compute);
            let pairs = tokenize_pairs(&input.tokenizer, examples, cfg)?;
            let reference = reference_logps(&input.model, &pairs, pad, out, cfg, &mut report)?;
            Objective::Spin { pairs, reference }
        }
        ObjectiveKind::Sft => Objective::Sft {
            seqs: tokenize_sft(&input.tokenizer, examples, cfg)?,
        },
    };

    // The main player, from θ_t or from the checkpoint being resumed.
    let mut player = if fresh_sft {
        input
    } else {
        drop(input);
        load_player(if state.is_some() { &ckpt } else { model_path })?
    };
    set_compute(&mut player.model, compute);
    let base_name = player.adapter_base_name(model_path);
    let mut trainer = Trainer::new(player.model, cfg.clone(), objective, pad)?;
    if let Some(s) = &state {
        trainer.state.step = resume_step;
        let scaler = s
            .get("loss_scaler")
            .and_then(|v| serde_json::from_value::<LossScaler>(v.clone()).ok());
        if trainer.state.scaler.is_some() {
            trainer.state.scaler = scaler.or(trainer.state.scaler);
        }
        // Steps the scaler skipped did not reach the optimizer.
        let skipped = scaler.map_or(0, |s| s.skipped);
        let opt_path = ckpt.join(OPTIMIZER_FILE);
        if opt_path.exists() {
            trainer.state.optimizer = Optimizer::load(
                OptimConfig::from(cfg),
                &opt_path,
                resume_step.saturating_sub(skipped) as u64,
                &trainer.state.model,
                device,
            )?;
        }
        report(TrainEvent::Resumed { step: resume_step });
    }

    // Metrics rows past the resumed step came from work that was lost: drop them.
    let metrics_path = out.join(METRICS_FILE);
    let kept: String = std::fs::read_to_string(&metrics_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(Value::as_u64))
                .is_some_and(|s| (s as usize) <= resume_step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fsutil::write_atomic(&metrics_path, kept.as_bytes())?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    let base = model_path.to_string_lossy();
    let save = |trainer: &Trainer, complete: bool, last: Option<&StepMetrics>| -> Result<()> {
        let card = training_section(&CardFacts {
            base: &base,
            identity: &identity,
            cfg: &trainer.state.cfg,
            compute: serde_json::to_value(compute)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{compute:?}")),
            notes,
            step: trainer.state.step,
            total_steps: trainer.state.plan.total_steps,
            last,
        });
        let state = json!({
            "step": trainer.state.step,
            "total_steps": trainer.state.plan.total_steps,
            "complete": complete,
            "source_model": model_path.to_string_lossy(),
            "identity": identity,
            "config": serde_json::to_value(&trainer.state.cfg).unwrap_or(Value::Null),
            "loss_scaler": trainer.state.scaler,
        });
        let mut extra = vec![(
            STATE_FILE,
            serde_json::to_string_pretty(&state)
                .unwrap_or_default()
                .into_bytes(),
        )];
        let tmp_opt = out.join(format!(".optimizer.tmp-{}", std::process::id()));
        if !complete {
            trainer
                .state
                .optimizer
                .save(&tmp_opt, &trainer.state.model)?;
            let bytes = std::fs::read(&tmp_opt).map_err(|e| Error::io(&tmp_opt, e))?;
            let _ = std::fs::remove_file(&tmp_opt);
            extra.push((OPTIMIZER_FILE, bytes));
        }
        if cfg.lora.enabled() {
            return crate::load::adapter::save(
                &trainer.state.model,
                &cfg.lora,
                &base_name,
                &ckpt,
                Some(&card),
                &extra,
            );
        }
        // A resumable checkpoint keeps the f32 master weights (a bf16 round trip would change
        // the continued run); the finished one is stored like the input.
        let save_dtype = if complete { dtype } else { StoredDtype::F32 };
        checkpoint::save(
            &trainer.state.model,
            &source_dir,
            &ckpt,
            save_dtype,
            Some(&card),
            &extra,
        )
    };

    let mut events = match notes.report_to {
        ReportTo::Tensorboard if !trainer.is_done() => Some(EventWriter::create(
            &out.join(RUNS_DIR),
            trainer.state.step as u64 + 1,
        )?),
        _ => None,
    };
    let mut last = None;
    while !trainer.is_done() {
        let m = trainer.train_step()?;
        if m.step % cfg.logging_steps == 0 || m.step == trainer.state.plan.total_steps {
            let row = m.to_json();
            writeln!(metrics_file, "{row}")
                .and_then(|_| metrics_file.flush())
                .map_err(|e| Error::io(&metrics_path, e))?;
            if let Some(w) = events.as_mut() {
                w.metrics_row(&row)?;
            }
        }
        report(TrainEvent::Step {
            metrics: &m,
            total_steps: trainer.state.plan.total_steps,
        });
        if cfg.save_every > 0 && m.step % cfg.save_every == 0 && !trainer.is_done() {
            save(&trainer, false, Some(&m))?;
            report(TrainEvent::Saved {
                step: m.step,
                path: &ckpt,
            });
        }
        last = Some(m);
    }
    if !is_complete(out)? {
        save(&trainer, true, last.as_ref())?;
        report(TrainEvent::Saved {
            step: trainer.state.step,
            path: &ckpt,
        });
    }
    Ok(TrainSummary {
        checkpoint: ckpt,
        steps: trainer.state.step,
        last,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_saved_before_a_setting_existed_resumes_with_its_default() {
        let now = serde_json::to_value(TrainConfig::default()).unwrap();
        let mut old = now.clone();
        old.as_object_mut().unwrap().remove("group_by_length");
        assert_eq!(saved_config(&json!({ "config": old })), Some(now.clone()));
        let mut other = now.clone();
        other["group_by_length"] = json!(true);
        assert_ne!(saved_config(&json!({ "config": other })), Some(now));
    }

    #[test]
    fn a_refused_resume_names_what_differs() {
        let now = serde_json::to_value(TrainConfig::default()).unwrap();
        let mut saved = now.clone();
        saved["lr"] = serde_json::json!(0.001);
        let msg = settings_differ(&saved, &now);
        assert!(msg.contains("lr: 0.001 there, 5e-7 now"), "{msg}");
        assert!(!msg.contains("epochs"), "{msg}");
        // The flat shape of the releases before `loss` became {kind, beta} and `seed` data_seed.
        let old = serde_json::json!({"loss": "sigmoid", "beta": 0.1, "seed": 42, "lr": 5e-7});
        let msg = settings_differ(&old, &now);
        assert!(msg.contains("saved by an earlier wgspin"), "{msg}");
    }
}

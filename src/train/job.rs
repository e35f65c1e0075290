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

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::{Value, json};

use super::card::RunNotes;
use super::optim::{OptimConfig, Optimizer};
use super::state::LossScaler;
use super::{
    Objective, ObjectiveKind, PairLogps, StepMetrics, TrainConfig, Trainer, pair_logps,
    tokenize_pairs, tokenize_sft,
};
use crate::data::SftExample;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::job::ModelIdentity;
use crate::load::ModelSource;
use crate::load::bundle::ModelBundle;
use crate::load::checkpoint;
use crate::manifest;
use crate::model::precision::set_compute;
use crate::report::ReportTo;
use crate::report::tensorboard::RUNS_DIR;

mod save;

use save::{MetricsLog, Saver};

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
    crate::job::read_json(&dir.join(CHECKPOINT).join(STATE_FILE))
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
    let source = ModelSource::resolve(model_path)?;
    super::memory::check_budget(&source, cfg, device)?;
    let run = TrainRun::open(&source, examples, out, cfg, existing, notes)?;
    let compute = cfg.dtype.resolve(device)?;
    let (mut trainer, saver) = run.trainer(examples, compute, notes, device, &mut report)?;
    let mut metrics = MetricsLog::open(out, trainer.state.step, notes, &trainer)?;
    let mut last = None;
    while !trainer.is_done() {
        let m = trainer.train_step()?;
        if m.step % cfg.logging_steps == 0 || m.step == trainer.state.plan.total_steps {
            metrics.write(&m)?;
        }
        report(TrainEvent::Step {
            metrics: &m,
            total_steps: trainer.state.plan.total_steps,
        });
        if cfg.save_every > 0 && m.step % cfg.save_every == 0 && !trainer.is_done() {
            saver.save(&trainer, false, Some(&m))?;
            report(TrainEvent::Saved {
                step: m.step,
                path: &saver.ckpt,
            });
        }
        last = Some(m);
    }
    if !is_complete(out)? {
        saver.save(&trainer, true, last.as_ref())?;
        report(TrainEvent::Saved {
            step: trainer.state.step,
            path: &saver.ckpt,
        });
    }
    Ok(TrainSummary {
        checkpoint: saver.ckpt,
        steps: trainer.state.step,
        last,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A training run's output folder, checked and claimed: the saved state of the run being resumed
/// (if any) and the identity of what this run is made of.
struct TrainRun<'a> {
    folder: crate::job::RunFolder<'a>,
    source: &'a ModelSource,
    cfg: &'a TrainConfig,
    state: Option<Value>,
    identity: Value,
}

impl<'a> TrainRun<'a> {
    /// Locks `out`, deals with a run already there as `existing` says, refuses to resume one made
    /// of another model, data or settings, and records what this run writes.
    fn open(
        source: &'a ModelSource,
        examples: &[SftExample],
        out: &'a Path,
        cfg: &'a TrainConfig,
        existing: Existing,
        notes: &RunNotes,
    ) -> Result<Self> {
        let folder = crate::job::RunFolder::lock(out, &LAYOUT)?;
        // Refuse a foreign folder before touching anything; clear an earlier run only after a
        // crashed save's copy was put back, so that copy goes too.
        if existing != Existing::Within {
            folder.prepare(false)?;
        }
        checkpoint::recover(out, CHECKPOINT)?;
        if existing == Existing::Overwrite {
            folder.prepare(true)?;
        }
        let state = state_of(out)?;
        if state.is_some() && existing == Existing::Refuse {
            return Err(Error::Invalid(format!(
                "{} already holds a training run; pass --resume to continue it, --overwrite to \
                 replace it, or choose another --out",
                out.display()
            )));
        }
        let config_json = check_settings(out, state.as_ref(), cfg)?;
        // Hashing reads every weight, so after the cheap checks.
        let identity = check_identity(out, state.as_ref(), source, examples, cfg)?;
        // What this run writes, recorded before it is written: `--overwrite` removes only these.
        let mut written = vec![CONFIG_FILE, CHECKPOINT, METRICS_FILE];
        if cfg.objective == ObjectiveKind::Spin {
            written.push(REF_FILE);
        }
        if notes.report_to == ReportTo::Tensorboard {
            written.push(RUNS_DIR);
        }
        folder.claim(&written)?;
        crate::job::write_json(&out.join(CONFIG_FILE), &config_json)?;
        Ok(Self {
            folder,
            source,
            cfg,
            state,
            identity,
        })
    }

    /// The trainer (resumed from the checkpoint when there is one) and what saves it. Loads the
    /// input θ_t: tokenizer, stored dtype, and for SPIN the frozen reference's log-probs of every
    /// pair (then dropped, so one model is in memory while training). A fresh SFT run trains the
    /// input itself, loaded once.
    fn trainer(
        self,
        examples: &[SftExample],
        compute: burn::tensor::DType,
        notes: &'a RunNotes,
        device: &Device,
        report: &mut impl FnMut(TrainEvent),
    ) -> Result<(Trainer, Saver<'a>)> {
        let (cfg, out) = (self.cfg, self.folder.dir);
        let ckpt = out.join(CHECKPOINT);
        let train_device = cfg.train_device(device);
        let fresh_sft = cfg.objective == ObjectiveKind::Sft && self.state.is_none();
        let mut input = if fresh_sft {
            ModelBundle::load_source_for_training(
                self.source,
                &train_device,
                &cfg.lora,
                cfg.data_seed,
            )?
        } else {
            ModelBundle::load_source(self.source, device)?
        };
        let pad = input.tokenizer.pad_id();
        let (dtype, source_dir) = (input.stored_dtype, input.dir.clone());
        let objective = match cfg.objective {
            ObjectiveKind::Spin => {
                // The reference scores in the dtype the player trains in, so both start equal.
                set_compute(&mut input.model, compute);
                let pairs = tokenize_pairs(&input.tokenizer, examples, cfg)?;
                let reference = reference_logps(&input.model, &pairs, pad, out, cfg, report)?;
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
            let from = match self.state {
                Some(_) => &ModelSource::resolve(&ckpt)?,
                None => self.source,
            };
            ModelBundle::load_source_for_training(from, &train_device, &cfg.lora, cfg.data_seed)?
        };
        set_compute(&mut player.model, compute);
        let model_path = self.source.path();
        let saver = Saver {
            base_name: player.adapter_base_name(model_path),
            model_path,
            ckpt,
            out,
            identity: self.identity,
            compute,
            notes,
            cfg,
            dtype,
            source_dir,
            _folder: self.folder,
        };
        let mut trainer = Trainer::new(player.model, cfg.clone(), objective, pad)?;
        if let Some(s) = &self.state {
            resume(&mut trainer, s, &saver.ckpt, cfg, device)?;
            report(TrainEvent::Resumed {
                step: trainer.state.step,
            });
        }
        Ok((trainer, saver))
    }
}

/// The settings of this run, refused when they differ from those of the run being resumed.
fn check_settings(out: &Path, state: Option<&Value>, cfg: &TrainConfig) -> Result<Value> {
    let config_json = serde_json::to_value(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(s) = state
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
    Ok(config_json)
}

/// What this run is made of (its model and its data): a resume must continue the same model on
/// the same data.
fn check_identity(
    out: &Path,
    state: Option<&Value>,
    source: &ModelSource,
    examples: &[SftExample],
    cfg: &TrainConfig,
) -> Result<Value> {
    let (data_key, data_noun) = match cfg.objective {
        ObjectiveKind::Spin => ("pairs_sha256", "pairs"),
        ObjectiveKind::Sft => ("data_sha256", "data"),
    };
    let saved = state.and_then(|s| s.get("identity"));
    let identity = json!({
        "model": ModelIdentity::of(source)?.against(saved.and_then(|i| i.get("model")))?,
        data_key: manifest::content_hash(&examples),
    });
    if let Some(saved) = saved
        && let Some(diffs) = crate::job::differences(saved, &identity)
    {
        return Err(Error::Invalid(format!(
            "{} was trained from another model or on other {data_noun} ({diffs}); resume with \
             the same --model and --data, or start over with --overwrite or another --out",
            out.display(),
        )));
    }
    Ok(identity)
}

/// Puts the saved run's step, loss scaler and optimizer state into `trainer`.
fn resume(
    trainer: &mut Trainer,
    state: &Value,
    ckpt: &Path,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<()> {
    let step = resume_step(Some(state));
    trainer.state.step = step;
    let scaler = state
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
            step.saturating_sub(skipped) as u64,
            &trainer.state.model,
            device,
        )?;
    }
    Ok(())
}

/// The step a saved run reached (0 for a new run).
fn resume_step(state: Option<&Value>) -> usize {
    state
        .and_then(|s| s.get("step").and_then(Value::as_u64))
        .unwrap_or(0) as usize
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

//! The self-play loop: for t = 0, 1, …, the opponent θ_t writes responses to the training prompts,
//! the main player (initialised from θ_t) learns to tell them from the human ones, and becomes
//! θ_{t+1}. Iteration t trains on the pairs of t and t−1 together, as the paper does.
//!
//! Layout of the output folder:
//! `iter-T/{generated.jsonl, ref_logps.jsonl, metrics.jsonl, checkpoint/, eval_generated.jsonl,
//! eval.json}` and `summary.json`. Every stage is resumable on its own (generation keeps finished
//! rows, training resumes from its checkpoint, a finished stage is skipped), so rerunning the same
//! command after an interruption picks up at the right stage of the right iteration.
//!
//! Evaluation uses a held-out slice of the data: θ_t answers the held-out prompts, then θ_{t+1}
//! and θ_t score the human and the generated responses. Reward accuracy near 50% means the
//! player can no longer tell real from generated, SPIN's convergence signal.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::{DataFormat, SftExample, read_dataset};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::generate::GenOptions;
use crate::generate::job::{
    GenModel, GenProgress, GenSummary, Opponent, has_every_row, reorder_rows, run_generate_with,
};
use crate::generate::serve::{ServerProcess, SpinServer};
use crate::generate::server::ServerClient;
use crate::load::ModelSource;
use crate::load::bundle::ModelBundle;
use crate::load::bundle::{read_source_text_side, stop_ids};
use crate::model::precision::set_compute;
use crate::train::TrainConfig;
use crate::train::card::RunNotes;
use crate::train::job::{CHECKPOINT, Existing, TrainEvent, TrainSummary, is_complete, run_train};

/// Loop settings (training and sampling settings live in their own structs). Also the flags of
/// `wgspin spin`: the doc comments are their help, [`Default`] their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct SpinConfig {
    /// Self-play iterations (the paper runs 3).
    #[arg(long, default_value_t = Self::default().iterations)]
    pub iterations: usize,
    /// Use only the first N training prompts. Reading the data stops after N + 64 rows (N +
    /// --eval-size), so a large dataset is never read whole; the held-out slice is the end of
    /// what was read (of the whole data without --limit).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Train iteration t on the pairs of t and t−1 together (as the paper).
    #[arg(long, default_value_t = Self::default().mix_previous, action = clap::ArgAction::Set)]
    pub mix_previous: bool,
    /// Stop when held-out reward accuracy of a finished iteration is at most this: the player
    /// can no longer tell real from generated (0 = never stop early).
    #[arg(long, default_value_t = Self::default().stop_accuracy)]
    pub stop_accuracy: f64,
    /// Held-out examples for evaluation, from the end of the data read (default: 10%, at most
    /// 64).
    #[arg(long)]
    pub eval_size: Option<usize>,
}

impl Default for SpinConfig {
    fn default() -> Self {
        Self {
            iterations: 3,
            limit: None,
            mix_previous: true,
            stop_accuracy: 0.55,
            eval_size: None,
        }
    }
}

/// Progress of the loop, for the CLI to draw.
pub enum SpinEvent<'a> {
    Stage {
        iteration: usize,
        stage: &'static str,
    },
    Generate(&'a GenProgress),
    Generated(&'a GenSummary),
    Train(TrainEvent<'a>),
    Trained(&'a TrainSummary),
    Evaluated {
        iteration: usize,
        eval: &'a EvalResult,
    },
    Skipped {
        iteration: usize,
        stage: &'static str,
    },
}

/// Held-out evaluation of θ_{t+1} against θ_t.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub examples: usize,
    /// Share of held-out pairs where θ_{t+1}'s reward for the human response beats the generated one.
    pub reward_accuracy: f64,
    pub reward_margin: f64,
    pub loss: f64,
    /// Mean log-likelihood per token of the held-out human responses under θ_{t+1} (and θ_t).
    pub human_logprob_per_token: f64,
    pub human_logprob_per_token_before: f64,
}

fn iter_dir(out: &Path, t: usize) -> PathBuf {
    out.join(format!("iter-{t}"))
}

// The settings a run was started with (written by the CLI before the first stage), and per
// held-out pair of an iteration its id and θ_{t+1}'s reward margin (`iter-T/`): named where the
// page that reads them back lives, below the loop that writes them.
pub use crate::report::game::{CONFIG_FILE, EVAL_FILE, EVAL_GENERATED_FILE, EVAL_MARGINS_FILE};

mod eval;
use eval::{add_eval_to_card, evaluate};
/// The iterations done, their held-out results and final models.
pub const SUMMARY_FILE: &str = "summary.json";

/// What `wgspin spin` writes into its output folder.
pub const LAYOUT: crate::manifest::RunLayout = crate::manifest::RunLayout {
    writer: "`wgspin spin`",
    marker: CONFIG_FILE,
    entries: &[
        CONFIG_FILE,
        SUMMARY_FILE,
        crate::report::html::PAGE_FILE,
        "iter-*",
    ],
};

/// The model θ_t: the input for t = 0, else the checkpoint of iteration t−1.
pub fn model_of(out: &Path, input: &Path, t: usize) -> PathBuf {
    if t == 0 {
        input.to_path_buf()
    } else {
        iter_dir(out, t - 1).join(CHECKPOINT)
    }
}

impl SpinConfig {
    /// Whether held-out reward accuracy `acc` ends the loop. 0 turns the stop off: accuracy is
    /// exactly 0 when every generated answer ties with the human one, which is not convergence.
    pub fn converged(&self, acc: f64) -> bool {
        self.stop_accuracy > 0.0 && acc <= self.stop_accuracy
    }

    /// Every setting checked before anything runs (a bad one must not cost a generate stage).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(m.into()));
        if self.iterations == 0 {
            return bad("--iterations must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.stop_accuracy) {
            return bad("--stop-accuracy is a reward accuracy: give a number in [0, 1]");
        }
        if self.eval_size == Some(0) {
            return bad("--eval-size must be at least 1 (the held-out prompts SPIN is judged on)");
        }
        if self.limit == Some(0) {
            return bad("--limit must be at least 1");
        }
        Ok(())
    }
}

/// The most held-out examples by default.
const MAX_EVAL: usize = 64;

impl SpinConfig {
    /// How many examples of the data the loop can use: with `--limit`, the training prompts and
    /// the largest held-out slice after them; the data is read no further.
    pub fn read_limit(&self) -> Option<usize> {
        self.limit
            .map(|n| n.saturating_add(self.eval_size.unwrap_or(MAX_EVAL)))
    }
}

/// Splits examples into (train, held-out): the held-out slice is the end of the data. When
/// `--limit` stopped the reading (the data had more), it is the rows read after the training
/// prompts: --eval-size of them, else 64, as the whole data would have given.
pub fn split(examples: &[SftExample], cfg: &SpinConfig) -> (Vec<SftExample>, Vec<SftExample>) {
    let n = examples.len();
    let stopped = cfg.read_limit().is_some_and(|read| n >= read);
    let eval = cfg
        .eval_size
        .or(stopped.then_some(MAX_EVAL))
        .unwrap_or_else(|| (n / 10).clamp(1, MAX_EVAL))
        .min(n.saturating_sub(1));
    let (train, held) = examples.split_at(n - eval);
    let mut train = train.to_vec();
    if let Some(p) = cfg.limit {
        train.truncate(p);
    }
    (train, held.to_vec())
}

fn read_pairs(path: &Path) -> Result<Vec<SftExample>> {
    Ok(read_dataset(path, DataFormat::Spin)?.examples)
}

/// Outcome of the loop.
#[derive(Debug, Clone)]
pub struct SpinSummary {
    pub iterations_done: usize,
    pub converged_at: Option<usize>,
    pub final_model: PathBuf,
    pub evals: Vec<EvalResult>,
}

/// Runs (or resumes) the self-play loop. The stop ids and pad id of `gen_opts` are replaced by
/// those of each iteration's model.
#[allow(clippy::too_many_arguments)]
pub fn run_spin(
    model: &Path,
    examples: &[SftExample],
    out: &Path,
    cfg: &SpinConfig,
    gen_opts: &GenOptions,
    server: Option<&SpinServer>,
    train_cfg: &TrainConfig,
    notes: &RunNotes,
    device: &Device,
    report: impl FnMut(SpinEvent),
) -> Result<SpinSummary> {
    check_settings(examples, cfg, gen_opts, server, train_cfg)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (train, held) = split(examples, cfg);
    let mut run = SpinRun {
        out,
        model,
        gen_opts,
        server,
        train_cfg,
        notes,
        device,
        train,
        held,
        report,
    };
    let mut evals = vec![];
    let mut converged_at = None;
    let mut done = 0;
    for t in 0..cfg.iterations {
        let dir = iter_dir(out, t);
        LAYOUT.claim(out, &format!("iter-{t}"))?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        if is_complete(&dir)? {
            (run.report)(SpinEvent::Skipped {
                iteration: t,
                stage: "generate+train",
            });
        } else {
            run.generate(t)?;
            run.train(t, cfg.mix_previous)?;
        }
        let eval = run.evaluate(
            t,
            evals.last().map(|e: &EvalResult| e.human_logprob_per_token),
        )?;
        (run.report)(SpinEvent::Evaluated {
            iteration: t,
            eval: &eval,
        });
        evals.push(eval.clone());
        done = t + 1;
        write_summary(out, model, &evals, None)?;
        if cfg.converged(eval.reward_accuracy) {
            converged_at = Some(t);
            break;
        }
    }
    write_summary(out, model, &evals, converged_at)?;
    Ok(SpinSummary {
        iterations_done: done,
        converged_at,
        final_model: iter_dir(out, done - 1).join(CHECKPOINT),
        evals,
    })
}

/// Every setting of the loop checked before anything runs (a bad one must not cost a stage).
fn check_settings(
    examples: &[SftExample],
    cfg: &SpinConfig,
    gen_opts: &GenOptions,
    server: Option<&SpinServer>,
    train_cfg: &TrainConfig,
) -> Result<()> {
    cfg.validate()?;
    if let Some(s) = server {
        s.options.base_url()?;
    }
    if let Some(s) = server
        && s.command.is_none()
        && cfg.iterations > 1
    {
        return Err(Error::Invalid(
            "--server without --server-cmd serves one model, but iteration t ≥ 1 generates with \
             θt (the previous iteration's checkpoint); pass --server-cmd (e.g. \
             \"llama-server -m {gguf} --port 8080\") so wgspin serves each iteration's model, or \
             --iterations 1"
                .into(),
        ));
    }
    if examples.len() < 2 {
        return Err(Error::Invalid(
            "SPIN needs at least 2 examples (training prompts plus a held-out one)".into(),
        ));
    }
    train_cfg.validate()?;
    gen_opts.sampling.validate()
}

/// What every stage of every iteration works with.
struct SpinRun<'a, R: FnMut(SpinEvent)> {
    out: &'a Path,
    /// The input model θ_0.
    model: &'a Path,
    gen_opts: &'a GenOptions,
    server: Option<&'a SpinServer>,
    train_cfg: &'a TrainConfig,
    notes: &'a RunNotes,
    device: &'a Device,
    /// The training prompts and the held-out ones.
    train: Vec<SftExample>,
    held: Vec<SftExample>,
    report: R,
}

impl<R: FnMut(SpinEvent)> SpinRun<'_, R> {
    fn stage(&mut self, iteration: usize, stage: &'static str) {
        (self.report)(SpinEvent::Stage { iteration, stage });
    }

    /// θ_t answers the training prompts and the held-out ones (evaluation compares against
    /// them), on this device or on the server.
    fn generate(&mut self, t: usize) -> Result<()> {
        self.stage(t, "generate");
        let dir = iter_dir(self.out, t);
        let theta = model_of(self.out, self.model, t);
        let (gen_path, eval_gen_path) = (dir.join(GENERATED), dir.join(EVAL_GENERATED_FILE));
        let jobs = [(&self.train, &gen_path), (&self.held, &eval_gen_path)];
        let report = &mut self.report;
        match self.server {
            None => {
                let mut bundle = ModelBundle::load(&theta, self.device)?;
                // θ_t generates in the dtype the player trains in (`--dtype`), its weights
                // stored in it once here.
                set_compute(
                    &mut bundle.model,
                    self.train_cfg.dtype.resolve(self.device)?,
                );
                let gen_opts = &GenOptions {
                    stop_ids: bundle.stop_ids(),
                    pad_id: bundle.tokenizer.pad_id(),
                    ..self.gen_opts.clone()
                };
                for (examples, path) in jobs {
                    let model = GenModel::local(&bundle);
                    let g = run_generate_with(&model, examples, path, gen_opts, false, |p| {
                        report(SpinEvent::Generate(p))
                    })?;
                    report(SpinEvent::Generated(&g));
                }
            }
            // A resume with only training left needs no server; the rows are put in input
            // order, as a finished generation leaves them (a crash may have come before).
            Some(_)
                if has_every_row(&gen_path, &self.train)?
                    && has_every_row(&eval_gen_path, &self.held)? =>
            {
                reorder_rows(&gen_path, &self.train)?;
                reorder_rows(&eval_gen_path, &self.held)?;
            }
            Some(s) => {
                let source = ModelSource::resolve(&theta)?;
                let (config, tokenizer) = read_source_text_side(&source)?;
                let gen_opts = &GenOptions {
                    stop_ids: stop_ids(&config, &tokenizer),
                    pad_id: tokenizer.pad_id(),
                    ..self.gen_opts.clone()
                };
                // Stopped (dropped) when the stage ends, before training needs the memory.
                let _process = match &s.command {
                    Some(cmd) => Some(ServerProcess::start(
                        cmd,
                        &theta,
                        &dir,
                        s.gguf_dtype,
                        &s.options,
                    )?),
                    None => None,
                };
                let client = ServerClient::connect(s.options.clone())?;
                let model = GenModel {
                    tokenizer: &tokenizer,
                    source,
                    opponent: Opponent::Server(&client),
                };
                for (examples, path) in jobs {
                    let g = run_generate_with(&model, examples, path, gen_opts, false, |p| {
                        report(SpinEvent::Generate(p))
                    })?;
                    report(SpinEvent::Generated(&g));
                }
            }
        }
        Ok(())
    }

    /// The main player learns, from θ_t, to tell the human answers from θ_t's (and θ_{t−1}'s,
    /// with `mix_previous`).
    fn train(&mut self, t: usize, mix_previous: bool) -> Result<()> {
        self.stage(t, "train");
        let dir = iter_dir(self.out, t);
        let mut pairs = read_pairs(&dir.join(GENERATED))?;
        if mix_previous && t > 0 {
            let prev = read_pairs(&iter_dir(self.out, t - 1).join(GENERATED))?;
            pairs.extend(prev.into_iter().map(|mut e| {
                e.id = format!("iter-{}/{}", t - 1, e.id);
                e
            }));
        }
        let report = &mut self.report;
        let s = run_train(
            &model_of(self.out, self.model, t),
            &pairs,
            &dir,
            self.train_cfg,
            Existing::Within,
            &RunNotes {
                iteration: Some(t),
                ..self.notes.clone()
            },
            self.device,
            |e| report(SpinEvent::Train(e)),
        )?;
        report(SpinEvent::Trained(&s));
        Ok(())
    }

    /// The held-out evaluation of iteration `t`: read back when done, else measured and written
    /// (per-pair margins, the model card's section, eval.json).
    fn evaluate(&mut self, t: usize, ll_before: Option<f64>) -> Result<EvalResult> {
        let dir = iter_dir(self.out, t);
        let eval_path = dir.join(EVAL_FILE);
        if let Some(e) = std::fs::read_to_string(&eval_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            return Ok(e);
        }
        self.stage(t, "evaluate");
        let eval_pairs = read_pairs(&dir.join(EVAL_GENERATED_FILE))?;
        let (e, margins) = evaluate(
            &model_of(self.out, self.model, t),
            &dir.join(CHECKPOINT),
            &eval_pairs,
            self.train_cfg,
            self.device,
            ll_before,
        )?;
        let rows: String = eval_pairs
            .iter()
            .zip(&margins)
            .map(|(p, m)| json!({"id": p.id, "margin": m}).to_string() + "\n")
            .collect();
        fsutil::write_atomic(&dir.join(EVAL_MARGINS_FILE), rows.as_bytes())?;
        add_eval_to_card(&dir.join(CHECKPOINT), t, &e)?;
        crate::job::write_json(&eval_path, &e)?;
        Ok(e)
    }
}

/// An iteration's generated training pairs (its held-out ones: [`EVAL_GENERATED_FILE`]).
const GENERATED: &str = "generated.jsonl";

fn write_summary(
    out: &Path,
    model: &Path,
    evals: &[EvalResult],
    converged: Option<usize>,
) -> Result<()> {
    let iters: Vec<Value> = evals
        .iter()
        .enumerate()
        .map(|(t, e)| {
            json!({
                "iteration": t,
                "model": iter_dir(out, t).join(CHECKPOINT).to_string_lossy(),
                "eval": e,
            })
        })
        .collect();
    let s = json!({
        "input_model": model.to_string_lossy(),
        "iterations": iters,
        "converged_at": converged,
    });
    LAYOUT.claim(out, SUMMARY_FILE)?;
    crate::job::write_json(&out.join(SUMMARY_FILE), &s)
}

#[cfg(test)]
mod tests {
    use super::SpinConfig;

    #[test]
    fn zero_stop_accuracy_never_stops_even_at_zero_accuracy() {
        let never = SpinConfig {
            stop_accuracy: 0.0,
            ..SpinConfig::default()
        };
        assert!(!never.converged(0.0) && !never.converged(0.5));
        let at = SpinConfig {
            stop_accuracy: 0.55,
            ..SpinConfig::default()
        };
        assert!(at.converged(0.55) && at.converged(0.0) && !at.converged(0.56));
    }
}

//! The built-in classroom demo, in the regime of the SPIN paper: SFT trained to convergence on
//! its data (early stopping on a validation split, best epoch kept), then SPIN iterations on the
//! same prompts next to continued SFT with the same compute (the same number of sequences through
//! forward and backward). A tiny Llama ([`model`]) learns a letter task ([`task`]) with nothing to
//! download. Every decision (early stopping, choosing between settings) looks only at the
//! validation split; the table reports a separate test split: exact match of greedy answers,
//! log-likelihood of the human answers, and for SPIN the reward accuracy and margin of θ_{t+1}
//! against θ_t.

use super::eval::{Scores, evaluate};
use super::outcome::{DemoOutcome, SftCurve, SftEpoch, StageResult};
use super::{model, task::Task};
use wgspin::train::card::RunNotes;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use wgspin::data::SftExample;
use wgspin::error::{Error, Result};
use wgspin::generate::GenOptions;
use wgspin::kernels::sample::SamplingParams;
use wgspin::spin::{SpinConfig, SpinEvent, run_spin};
use wgspin::train::job::{Existing, TrainEvent, run_train};
use wgspin::train::loss::PairLoss;
use wgspin::train::optim::{OptimizerKind, Schedule};
use wgspin::train::{ObjectiveKind, TrainConfig};

/// Demo settings. [`DemoConfig::full`] is what `wgspin demo` runs; [`DemoConfig::quick`] is the
/// reduced mode CI runs.
#[derive(Debug, Clone, Serialize)]
pub struct DemoConfig {
    pub seeds: Vec<u64>,
    pub task: Task,
    /// Width of the tiny Llama.
    pub hidden: usize,
    pub train_examples: usize,
    /// Early stopping and the choice between demo settings look only at this split.
    pub validation_examples: usize,
    /// What the table reports; never used for a decision. 200 examples: one is half a point.
    pub test_examples: usize,
    /// Epochs without a new best on validation that make a plateau: at each the SFT rate drops
    /// tenfold, down to `spin_lr`; a plateau there ends SFT. The best epoch is the starting model.
    pub sft_patience: usize,
    pub sft_max_epochs: usize,
    pub spin_iterations: usize,
    /// Epochs of each SPIN iteration.
    pub spin_epochs: usize,
    pub sft_lr: f64,
    /// Learning rate of SPIN and of the continued SFT it is compared with.
    pub spin_lr: f64,
    pub beta: f64,
    pub batch_size: usize,
}

impl DemoConfig {
    pub fn full() -> Self {
        Self {
            // Five seeds: fewer cannot tell a few points apart from seed noise on this task.
            seeds: vec![1, 2, 3, 4, 5],
            // Picked by docs/demo.md's pre-registered rule (round 3, variant V7′).
            task: Task::Reverse,
            hidden: model::HIDDEN,
            train_examples: 512,
            validation_examples: 128,
            test_examples: 200,
            sft_patience: 3,
            sft_max_epochs: 80,
            spin_iterations: 3,
            spin_epochs: 1,
            sft_lr: 3e-3,
            spin_lr: 1e-4,
            beta: 0.1,
            batch_size: 16,
        }
    }

    /// One seed and two iterations on the full demo's task and data, with smaller evaluation
    /// splits and a shorter patience: the same story in under a minute on a 2-core CPU.
    pub fn quick() -> Self {
        Self {
            seeds: vec![1],
            validation_examples: 64,
            test_examples: 64,
            sft_patience: 2,
            spin_iterations: 2,
            ..Self::full()
        }
    }
}

/// What the demo reports as it goes.
pub enum DemoEvent<'a> {
    Stage(&'a str),
    /// Every result is written; the folder is still locked.
    Finished,
    Result(&'a StageResult),
    Spin(SpinEvent<'a>),
    SftStep {
        step: usize,
        total: usize,
        loss: f64,
    },
    SftEpoch(&'a SftEpoch),
    SftConverged(&'a SftCurve),
}

fn train_cfg(c: &DemoConfig, lr: f64, epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        loss: PairLoss {
            beta: c.beta,
            ..Default::default()
        },
        lr,
        optimizer: OptimizerKind::Adamw,
        epochs,
        batch_size: c.batch_size,
        max_length: 64,
        max_prompt_length: 32,
        warmup_ratio: 0.1,
        schedule: Schedule::Linear,
        data_seed: seed,
        logging_steps: 1,
        ..Default::default()
    }
}

/// The three splits of a seed, disjoint.
struct Splits {
    train: Vec<SftExample>,
    validation: Vec<SftExample>,
    test: Vec<SftExample>,
}

impl Splits {
    fn new(c: &DemoConfig, seed: u64) -> Self {
        let train = c.task.examples(c.train_examples, seed * 1000 + 1, &[]);
        let test = c.task.examples(c.test_examples, seed * 1000 + 2, &train);
        let validation = c.task.examples(
            c.validation_examples,
            seed * 1000 + 3,
            &[train.clone(), test.clone()].concat(),
        );
        Self {
            train,
            validation,
            test,
        }
    }

    /// A table row for the model in `ckpt`, scored on test and validation.
    fn row(&self, ckpt: &Path, device: &Device, label: RowLabel) -> Result<StageResult> {
        let test = evaluate(ckpt, &self.test, device)?;
        let val = evaluate(ckpt, &self.validation, device)?;
        Ok(label.with(test, val))
    }
}

struct RowLabel {
    seed: u64,
    stage: String,
    round: usize,
    method: &'static str,
    seconds: f64,
}

impl RowLabel {
    fn with(self, test: Scores, val: Scores) -> StageResult {
        StageResult {
            seed: self.seed,
            stage: self.stage,
            round: self.round,
            method: self.method.into(),
            exact_match: test.exact_match,
            heldout_loglik_per_token: test.loglik_per_token,
            validation_exact_match: val.exact_match,
            reward_accuracy: None,
            reward_margin: None,
            seconds: self.seconds,
        }
    }
}

/// What the demo writes into its folder. Every demo starts over, removing only an earlier demo's
/// entries; a folder of other files is refused.
const LAYOUT: wgspin::manifest::RunLayout = wgspin::manifest::RunLayout {
    writer: "`wgspin demo`",
    marker: DEMO_FILE,
    entries: &[
        DEMO_FILE,
        REPORT_FILE,
        wgspin::report::html::PAGE_FILE,
        "seed-*",
    ],
};
const DEMO_FILE: &str = "demo.json";
const REPORT_FILE: &str = "report.svg";

/// Runs the demo into `out` (one folder per seed); returns every table row and SFT curve.
pub fn run_demo(
    out: &Path,
    c: &DemoConfig,
    device: &Device,
    mut report: impl FnMut(DemoEvent),
) -> Result<DemoOutcome> {
    if c.sft_max_epochs == 0 || c.sft_patience == 0 {
        return Err(Error::Invalid(
            "the demo's SFT needs at least one epoch and a patience of at least 1".into(),
        ));
    }
    let _lock = wgspin::manifest::lock_dir(out)?;
    LAYOUT.prepare(out, true)?;
    // The marker first (replaced by the results at the end), so an interrupted demo's folder is
    // still known as the demo's.
    for name in [DEMO_FILE, REPORT_FILE, wgspin::report::html::PAGE_FILE] {
        LAYOUT.claim(out, name)?;
    }
    wgspin::fsutil::write_atomic(&out.join(DEMO_FILE), b"{\"running\": true}\n")?;
    let mut outcome = DemoOutcome {
        results: vec![],
        sft_curves: vec![],
    };
    for &seed in &c.seeds {
        run_seed(out, c, seed, device, &mut report, &mut outcome)?;
    }
    let json = serde_json::json!({"config": c, "results": outcome.results, "sft_curves": outcome.sft_curves});
    wgspin::fsutil::write_atomic(
        &out.join(DEMO_FILE),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    super::report::write_report(out, &outcome)?;
    report(DemoEvent::Finished);
    Ok(outcome)
}

/// One seed into `out/seed-S`: its base model and splits, SFT to convergence, then SPIN and
/// continued SFT from the converged model; its rows and SFT curve go into `outcome`.
fn run_seed(
    out: &Path,
    c: &DemoConfig,
    seed: u64,
    device: &Device,
    report: &mut dyn FnMut(DemoEvent),
    outcome: &mut DemoOutcome,
) -> Result<()> {
    let name = format!("seed-{seed}");
    LAYOUT.claim(out, &name)?;
    let dir = out.join(name);
    let base = dir.join("base-model");
    model::write_base_model(&base, seed, c.hidden)?;
    let splits = Splits::new(c, seed);
    write_examples(&dir.join("train.jsonl"), &splits.train)?;
    write_examples(&dir.join("validation.jsonl"), &splits.validation)?;
    write_examples(&dir.join("test.jsonl"), &splits.test)?;

    report(DemoEvent::Stage(
        "SFT to convergence (early stopping on validation)",
    ));
    let start = Instant::now();
    let (converged, curve) =
        converge_sft(&base, &splits, &dir.join("sft"), c, seed, device, report)?;
    report(DemoEvent::SftConverged(&curve));
    outcome.sft_curves.push(curve);
    let from = FromConverged {
        c,
        seed,
        device,
        splits: &splits,
        converged: &converged,
    };
    let seconds = start.elapsed().as_secs_f64();
    let r = from.row(&converged, "SFT (converged)".into(), 0, "start", seconds)?;
    report(DemoEvent::Result(&r));
    outcome.results.push(r);

    let spin = from.spin_rows(&dir.join("spin"), report)?;
    outcome.results.extend(spin);
    let continued = from.continued_sft_rows(&dir, report)?;
    outcome.results.extend(continued);
    Ok(())
}

/// A seed's converged SFT model, and what SPIN and continued SFT from it need.
struct FromConverged<'a> {
    c: &'a DemoConfig,
    seed: u64,
    device: &'a Device,
    splits: &'a Splits,
    converged: &'a Path,
}

impl FromConverged<'_> {
    /// The table row of checkpoint `ckpt`, scored on both splits.
    fn row(
        &self,
        ckpt: &Path,
        stage: String,
        round: usize,
        method: &'static str,
        seconds: f64,
    ) -> Result<StageResult> {
        let label = RowLabel {
            seed: self.seed,
            stage,
            round,
            method,
            seconds,
        };
        self.splits.row(ckpt, self.device, label)
    }

    /// SPIN from the converged model into `spin_dir`: a row per iteration, reported as each
    /// iteration's evaluation lands. The test prompts ride along as the loop's held-out slice, for
    /// reward accuracy; SPIN trains on the training prompts only.
    fn spin_rows(
        &self,
        spin_dir: &Path,
        report: &mut dyn FnMut(DemoEvent),
    ) -> Result<Vec<StageResult>> {
        let (c, seed, splits) = (self.c, self.seed, self.splits);
        report(DemoEvent::Stage("SPIN"));
        let mut data = splits.train.clone();
        data.extend(splits.test.iter().cloned());
        let spin_cfg = SpinConfig {
            iterations: c.spin_iterations,
            limit: None,
            mix_previous: true,
            // Never stop early: every seed runs every iteration, so rounds pair up.
            stop_accuracy: 0.0,
            eval_size: Some(splits.test.len()),
        };
        // Stop ids and padding are taken from θ_t by the loop.
        let gen_opts = GenOptions {
            batch_size: 32,
            max_new_tokens: c.task.max_answer_len() + 2,
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            },
            stop_ids: vec![],
            pad_id: 0,
        };
        let mut stage_start = Instant::now();
        let mut rows: Vec<Result<StageResult>> = vec![];
        run_spin(
            self.converged,
            &data,
            spin_dir,
            &spin_cfg,
            &gen_opts,
            None,
            &train_cfg(c, c.spin_lr, c.spin_epochs, seed),
            &RunNotes::default(),
            self.device,
            |e| {
                if let SpinEvent::Evaluated { iteration, eval } = &e {
                    let ckpt = spin_dir
                        .join(format!("iter-{iteration}"))
                        .join("checkpoint");
                    let stage = format!("SPIN iteration {}", iteration + 1);
                    let seconds = stage_start.elapsed().as_secs_f64();
                    let r = self.row(&ckpt, stage, iteration + 1, "spin", seconds);
                    let r = r.map(|r| StageResult {
                        reward_accuracy: Some(eval.reward_accuracy),
                        reward_margin: Some(eval.reward_margin),
                        ..r
                    });
                    if let Ok(r) = &r {
                        report(DemoEvent::Result(r));
                    }
                    rows.push(r);
                    stage_start = Instant::now();
                } else {
                    report(DemoEvent::Spin(e));
                }
            },
        )?;
        let rows = rows.into_iter().collect::<Result<Vec<_>>>()?;
        wgspin::report::plot::report_for_run(spin_dir)?;
        Ok(rows)
    }

    /// Continued SFT from the converged model with the same compute as each SPIN iteration: a row
    /// per round. SPIN iteration t pushes 2 sequences per pair through forward and backward, over N
    /// pairs (t = 0) or 2N (t ≥ 1, with the previous iteration's pairs), for spin_epochs epochs.
    fn continued_sft_rows(
        &self,
        dir: &Path,
        report: &mut dyn FnMut(DemoEvent),
    ) -> Result<Vec<StageResult>> {
        let (c, seed) = (self.c, self.seed);
        let mut rows = vec![];
        let mut from: PathBuf = self.converged.to_path_buf();
        for t in 0..c.spin_iterations {
            let start = Instant::now();
            let epochs = c.spin_epochs * if t == 0 { 2 } else { 4 };
            report(DemoEvent::Stage(
                "continued SFT (same compute as the SPIN iteration)",
            ));
            let cfg = train_cfg(c, c.spin_lr, epochs, seed + 17 * (t as u64 + 1));
            let out_dir = dir.join(format!("sft-continued-{}", t + 1));
            let train = &self.splits.train;
            let ckpt = sft_run(&from, train, &out_dir, &cfg, self.device, report)?;
            let stage = format!("continued SFT {}", t + 1);
            let seconds = start.elapsed().as_secs_f64();
            let r = self.row(&ckpt, stage, t + 1, "sft", seconds)?;
            report(DemoEvent::Result(&r));
            rows.push(r);
            from = ckpt;
        }
        Ok(rows)
    }
}

/// SFT from `base` one epoch at a time until it has converged at the learning rate continued
/// SFT uses: when neither validation exact match nor validation log-likelihood has reached a new
/// best for `sft_patience` epochs, training goes back to the best epoch and the rate drops
/// tenfold (not below `spin_lr`); a plateau at `spin_lr` ends it. Returns the checkpoint of the
/// best epoch by exact match (ties: log-likelihood) and the curve.
///
/// Stopping at the first plateau of the starting rate leaves a model that more SFT at a lower
/// rate still improves by several points: continued SFT would then measure the missing rate
/// decay, not what more epochs on the same data give a converged model.
fn converge_sft(
    base: &Path,
    splits: &Splits,
    dir: &Path,
    c: &DemoConfig,
    seed: u64,
    device: &Device,
    report: &mut dyn FnMut(DemoEvent),
) -> Result<(PathBuf, SftCurve)> {
    let mut from = base.to_path_buf();
    let mut lr = c.sft_lr;
    let mut best: Option<(usize, (f64, f64), PathBuf)> = None;
    let mut best_loglik = f64::NEG_INFINITY;
    let mut last_gain = 0;
    let mut epochs = vec![];
    for epoch in 1..=c.sft_max_epochs {
        let mut cfg = train_cfg(c, lr, 1, seed + epoch as u64);
        cfg.schedule = Schedule::Constant;
        cfg.warmup_ratio = if epoch == 1 { 0.1 } else { 0.0 };
        let ckpt = sft_run(
            &from,
            &splits.train,
            &dir.join(format!("epoch-{epoch}")),
            &cfg,
            device,
            report,
        )?;
        let v = evaluate(&ckpt, &splits.validation, device)?;
        let point = SftEpoch {
            epoch,
            lr,
            validation_exact_match: v.exact_match,
            validation_loglik_per_token: v.loglik_per_token,
        };
        report(DemoEvent::SftEpoch(&point));
        epochs.push(point);
        // Early on exact match is 0% or noise around a few percent while the log-likelihood
        // climbs; at a plateau of exact match the log-likelihood tells learning from
        // overfitting. So either one reaching a new best counts as progress.
        let score = (v.exact_match, v.loglik_per_token);
        if best.as_ref().is_none_or(|b| score > b.1) {
            best = Some((epoch, score, ckpt.clone()));
            last_gain = epoch;
        }
        if v.loglik_per_token > best_loglik {
            best_loglik = v.loglik_per_token;
            last_gain = epoch;
        }
        from = ckpt;
        if epoch - last_gain >= c.sft_patience {
            // A relative tolerance: the rate is divided down to `spin_lr`, not hit exactly.
            if lr <= c.spin_lr * (1.0 + 1e-9) {
                break;
            }
            lr = (lr / 10.0).max(c.spin_lr);
            last_gain = epoch;
            if let Some(b) = &best {
                from = b.2.clone();
            }
        }
    }
    let (best_epoch, _, ckpt) =
        best.ok_or_else(|| Error::Invalid("the demo's SFT ran no epoch".into()))?;
    // Only the kept epoch's weights are used from here on; the others' metrics stay.
    for e in epochs.iter().filter(|e| e.epoch != best_epoch) {
        let old = dir
            .join(format!("epoch-{}", e.epoch))
            .join(wgspin::train::job::CHECKPOINT);
        std::fs::remove_dir_all(&old).map_err(|err| Error::io(&old, err))?;
    }
    Ok((
        ckpt,
        SftCurve {
            seed,
            best_epoch,
            epochs,
        },
    ))
}

/// SFT from `from` into `out`; returns the checkpoint.
fn sft_run(
    from: &Path,
    train: &[SftExample],
    out: &Path,
    cfg: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(DemoEvent),
) -> Result<PathBuf> {
    let cfg = TrainConfig {
        objective: ObjectiveKind::Sft,
        ..cfg.clone()
    };
    let summary = run_train(
        from,
        train,
        out,
        &cfg,
        Existing::Refuse,
        &RunNotes::default(),
        device,
        |e| {
            if let TrainEvent::Step {
                metrics,
                total_steps,
            } = e
            {
                report(DemoEvent::SftStep {
                    step: metrics.step,
                    total: total_steps,
                    loss: metrics.stats.loss(),
                })
            }
        },
    )?;
    Ok(summary.checkpoint)
}

fn write_examples(path: &Path, examples: &[SftExample]) -> Result<()> {
    let text: String = examples
        .iter()
        .map(|e| {
            serde_json::json!({"id": e.id, "prompt": e.prompt, "response": e.response}).to_string()
                + "\n"
        })
        .collect();
    wgspin::fsutil::write_atomic(path, text.as_bytes())
}

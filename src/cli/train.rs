//! `wgspin train`: SPIN training on (prompt, real, generated) pairs.

use anyhow::{Context, Result};
use clap::Args;

use wgspin::train::TrainConfig;
use wgspin::train::job::{Existing, run_train};
use wgspin::train::loss::PairLoss;

use super::args::{JobArgs, TrainOutArgs};
use super::report::TrainReporter;

/// The main player's turn: SPIN training on (prompt, real, generated) pairs.
///
/// --data holds SPIN pairs: the output of `wgspin generate`, or JSONL/Parquet rows with "real"
/// and "generated" conversations. The input model is both the starting point and the frozen
/// reference (the opponent θ_t); its log-probs of every pair are computed once and cached in
/// --out. Writes metrics.jsonl, train_config.json and checkpoint/ (Hugging Face layout) into
/// --out.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    out: TrainOutArgs,
    #[command(flatten)]
    loss: PairLoss,
    #[command(flatten)]
    train: TrainConfig,
    #[command(flatten)]
    report: super::args::ReportArgs,
}

impl TrainArgs {
    pub fn run(self) -> Result<()> {
        self.job.check_outputs(&[("--out", &self.out.out)])?;
        let dev = self.job.device.select()?;
        let examples = self.job.data.load(None)?;
        if let Some(e) = examples.iter().find(|e| e.generated.is_none()) {
            anyhow::bail!(
                "{}: example {:?} has no generated response. Train on SPIN pairs (the output of `wgspin generate`, or rows with \"real\" and \"generated\")",
                self.job.data.source.name(),
                e.id
            );
        }
        let cfg = TrainConfig {
            loss: self.loss,
            ..self.train
        };
        train_and_report(
            &self.job.model.model,
            &examples,
            &self.out.out,
            &cfg,
            self.out.existing(),
            &super::args::run_notes(self.job.data.source.name(), self.report.report_to),
            &dev.device,
        )
        .with_context(|| format!("training into {}", self.out.out.display()))
    }
}

/// Runs a `train` or `sft` job into `out` with progress on stderr, then its summary.
pub(super) fn train_and_report(
    model: &std::path::Path,
    examples: &[wgspin::data::SftExample],
    out: &std::path::Path,
    cfg: &TrainConfig,
    existing: Existing,
    notes: &wgspin::train::card::RunNotes,
    device: &burn::tensor::Device,
) -> Result<()> {
    let mut reporter = TrainReporter::new(cfg.logging_steps);
    let summary = run_train(model, examples, out, cfg, existing, notes, device, |e| {
        reporter.event(e)
    })?;
    match &summary.last {
        Some(m) => eprintln!(
            "trained {} steps in {:.1}s; last step: {}",
            summary.steps,
            summary.seconds,
            m.stats.summary()
        ),
        None => eprintln!("{} already holds a finished run", out.display()),
    }
    eprintln!("checkpoint: {}", summary.checkpoint.display());
    Ok(())
}

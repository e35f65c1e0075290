//! `wgspin sft`: supervised fine-tuning on prompt/response data.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use wgspin::train::job::run_train;
use wgspin::train::{ObjectiveKind, TrainConfig};

use super::args::JobArgs;
use super::report::TrainReporter;

/// Supervised fine-tuning (next-token loss on response tokens) on prompt/response data.
///
/// Makes the SFT model SPIN starts from. The same trainer, folder layout and resume as `wgspin
/// train`: writes metrics.jsonl, train_config.json and checkpoint/ (Hugging Face layout, or a
/// PEFT adapter with --lora-rank) into --out. The training flags of `wgspin train` except SPIN's
/// --loss/--beta, with the learning rate defaulting to SFT's.
#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint (see --save-every).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    train: TrainConfig,
}

impl SftArgs {
    pub fn run(self) -> Result<()> {
        let dev = self.job.device.select()?;
        let examples = self.job.data.load(None)?;
        let cfg = TrainConfig {
            objective: ObjectiveKind::Sft,
            ..self.train
        };
        let out = &self.out;
        wgspin::train::job::refuse_foreign(out)?;
        let mut reporter = TrainReporter::new(cfg.logging_steps);
        let summary = run_train(
            &self.job.model.model,
            &examples,
            out,
            &cfg,
            self.resume,
            &dev.device,
            |e| reporter.event(e),
        )
        .with_context(|| format!("SFT into {}", out.display()))?;
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
}

//! `wgspin sft`: supervised fine-tuning on prompt/response data.

use anyhow::{Context, Result};
use clap::Args;

use wgspin::train::{ObjectiveKind, TrainConfig};

use super::args::{JobArgs, TrainOutArgs};

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
    #[command(flatten)]
    out: TrainOutArgs,
    #[command(flatten)]
    train: TrainConfig,
    #[command(flatten)]
    report: super::args::ReportArgs,
}

impl SftArgs {
    pub fn run(self) -> Result<()> {
        self.job.check_outputs(&[("--out", &self.out.out)])?;
        let dev = self.job.device.select()?;
        let examples = self.job.data.load(None)?;
        let cfg = TrainConfig {
            objective: ObjectiveKind::Sft,
            ..self.train
        };
        super::train::train_and_report(
            &self.job.model.model,
            &examples,
            &self.out.out,
            &cfg,
            self.out.existing(),
            &super::args::run_notes(self.job.data.source.name(), self.report.report_to),
            &dev.device,
        )
        .with_context(|| format!("SFT into {}", self.out.out.display()))
    }
}

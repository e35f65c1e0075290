//! `wgspin sft`: supervised fine-tuning on prompt/response data.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use wgspin::report::progress::Progress;
use wgspin::train::TrainConfig;
use wgspin::train::sft::run_sft;

use super::args::JobArgs;

/// Supervised fine-tuning (next-token loss on response tokens) on prompt/response data.
///
/// Makes the SFT model SPIN starts from. Writes metrics.jsonl and checkpoint/ (Hugging Face
/// layout) into --out at the end. The training flags of `wgspin train` except SPIN's
/// --loss/--beta, with the learning rate defaulting to SFT's; no --resume, and --save-every
/// must stay 0 (SFT does not save mid-run yet).
#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    train: TrainConfig,
}

impl SftArgs {
    pub fn run(self) -> Result<()> {
        anyhow::ensure!(
            self.train.save_every == 0,
            "--save-every: `wgspin sft` saves only at the end (no resumable mid-run checkpoints yet); leave it at 0"
        );
        let dev = self.job.device.select()?;
        let examples = self.job.data.load(None)?;
        let mut bar: Option<Progress> = None;
        let out = &self.out;
        // An SFT run starts fresh (it does not resume): into a folder with files it would
        // overwrite a finished run's checkpoint and metrics.
        let held = wgspin::fsutil::visible_entries(out);
        anyhow::ensure!(
            held.is_empty(),
            "{} already holds files ({}); `wgspin sft` starts fresh and would overwrite them: \
             choose an empty or new --out",
            out.display(),
            held.join(", ")
        );
        let ckpt = run_sft(
            &self.job.model.model,
            &examples,
            out,
            &self.train,
            &dev.device,
            |m, total| {
                let b = bar.get_or_insert_with(|| Progress::new("sft", total));
                b.update(
                    m.step,
                    &format!("steps, loss {:.4}, {:.0} tok/s", m.loss, m.tokens_per_s),
                );
            },
        )
        .with_context(|| format!("SFT into {}", out.display()))?;
        if let Some(mut b) = bar {
            b.finish();
        }
        eprintln!("checkpoint: {}", ckpt.display());
        Ok(())
    }
}

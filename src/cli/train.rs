//! `wgspin train`: SPIN training on (prompt, real, generated) pairs.

use std::path::PathBuf;

use anyhow::{Context, Result};

use wgspin::data::DataFormat;
use wgspin::device::DeviceSpec;
use wgspin::train::job::run_train;

use super::TrainFlags;
use super::generate::load_examples;

#[allow(clippy::too_many_arguments)]
pub fn run(
    model: PathBuf,
    pairs: PathBuf,
    format: DataFormat,
    out: PathBuf,
    resume: bool,
    seed: u64,
    spec: DeviceSpec,
    flags: TrainFlags,
) -> Result<()> {
    let dev = super::select_device(spec)?;
    let examples = load_examples(&pairs, format, None)?;
    if let Some(e) = examples.iter().find(|e| e.generated.is_none()) {
        anyhow::bail!(
            "{}: example {:?} has no generated response. Train on SPIN pairs (the output of `wgspin generate`, or rows with \"real\" and \"generated\")",
            pairs.display(),
            e.id
        );
    }
    let cfg = flags.config(seed);
    let mut reporter = super::TrainReporter::new(cfg.logging_steps);
    let summary = run_train(&model, &examples, &out, &cfg, resume, &dev.device, |e| {
        reporter.event(e)
    })
    .with_context(|| format!("training into {}", out.display()))?;
    match &summary.last {
        Some(m) => eprintln!(
            "trained {} steps in {:.1}s; last step: loss {:.4}, rewards/accuracies {:.2}, rewards/margins {:.4}",
            summary.steps, summary.seconds, m.stats.loss, m.stats.accuracies, m.stats.margins
        ),
        None => eprintln!("{} already holds a finished run", out.display()),
    }
    eprintln!("checkpoint: {}", summary.checkpoint.display());
    Ok(())
}

//! `wgspin sft`: supervised fine-tuning on prompt/response data.

use std::path::PathBuf;

use anyhow::{Context, Result};

use wgspin::data::DataFormat;
use wgspin::device::DeviceSpec;
use wgspin::progress::Progress;
use wgspin::sft::run_sft;

use super::TrainFlags;
use super::generate::load_examples;

pub fn run(
    model: PathBuf,
    data: PathBuf,
    format: DataFormat,
    out: PathBuf,
    seed: u64,
    spec: DeviceSpec,
    flags: TrainFlags,
) -> Result<()> {
    let dev = super::select_device(spec)?;
    let examples = load_examples(&data, format, None)?;
    let cfg = flags.config(seed);
    let mut bar: Option<Progress> = None;
    let ckpt = run_sft(&model, &examples, &out, &cfg, &dev.device, |m, total| {
        let b = bar.get_or_insert_with(|| Progress::new("sft", total));
        b.update(
            m.step,
            &format!("steps, loss {:.4}, {:.0} tok/s", m.loss, m.tokens_per_s),
        );
    })
    .with_context(|| format!("SFT into {}", out.display()))?;
    if let Some(mut b) = bar {
        b.finish();
    }
    eprintln!("checkpoint: {}", ckpt.display());
    Ok(())
}

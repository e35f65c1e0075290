//! `wgspin generate`: the opponent writes a response for every SFT prompt (SPIN's pairs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use wgspin::ModelBundle;
use wgspin::data::{DataFormat, SftExample, read_dataset};
use wgspin::device::DeviceSpec;
use wgspin::generate::job::{GenSummary, run_generate};
use wgspin::progress::Progress;

use super::GenFlags;

/// Reads the data file, reports skipped rows on stderr, and keeps the first `limit` examples.
pub fn load_examples(
    path: &Path,
    format: DataFormat,
    limit: Option<usize>,
) -> Result<Vec<SftExample>> {
    let ds =
        read_dataset(path, format).with_context(|| format!("reading data {}", path.display()))?;
    if !ds.skipped.is_empty() {
        eprintln!(
            "{}: skipped {} row(s) without a usable prompt/response:",
            path.display(),
            ds.skipped.len()
        );
        for s in ds.skipped.iter().take(5) {
            eprintln!("  line {}: {}", s.line, s.reason);
        }
        if ds.skipped.len() > 5 {
            eprintln!("  ... and {} more", ds.skipped.len() - 5);
        }
    }
    eprintln!(
        "{}: {} examples ({} format)",
        path.display(),
        ds.examples.len(),
        ds.format
    );
    let mut examples = ds.examples;
    if let Some(n) = limit {
        examples.truncate(n);
    }
    Ok(examples)
}

/// Generates for `examples` into `out` with a progress bar; resumes a partial `out`.
pub fn generate_into(
    bundle: &ModelBundle,
    examples: &[SftExample],
    out: &Path,
    flags: &GenFlags,
    batch_size: usize,
) -> Result<GenSummary> {
    let opts = flags.options(batch_size, bundle.stop_ids(), bundle.tokenizer.pad_id());
    let mut bar = Progress::new("generate", examples.len());
    let summary = run_generate(bundle, examples, out, &opts, |p| {
        let rate = p.tokens as f64 / p.elapsed.as_secs_f64().max(1e-9);
        bar.update(p.done, &format!("prompts, {rate:.1} tok/s"));
    })
    .with_context(|| format!("generating into {}", out.display()))?;
    bar.finish();
    if summary.resumed > 0 {
        eprintln!(
            "{}: kept {} rows from an earlier run",
            out.display(),
            summary.resumed
        );
    }
    eprintln!(
        "generated {} responses, {} tokens in {:.1}s ({:.1} tok/s); finished: {} eos, {} length",
        summary.generated,
        summary.tokens,
        summary.seconds,
        summary.tokens_per_second(),
        summary.finished_eos,
        summary.finished_length
    );
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    model: PathBuf,
    data: PathBuf,
    format: DataFormat,
    out: PathBuf,
    limit: Option<usize>,
    spec: DeviceSpec,
    flags: GenFlags,
    batch_size: Option<usize>,
) -> Result<()> {
    let dev = super::select_device(spec)?;
    let examples = load_examples(&data, format, limit)?;
    let bundle = ModelBundle::load(&model, &dev.device)
        .with_context(|| format!("loading model {}", model.display()))?;
    let batch_size = super::decode_batch(batch_size, &dev, &bundle.config, flags.max_new_tokens)?;
    generate_into(&bundle, &examples, &out, &flags, batch_size)?;
    Ok(())
}

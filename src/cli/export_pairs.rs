//! `wgspin export-pairs`: an iteration's SPIN pairs for TRL, uclaml/SPIN or LLaMA-Factory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use wgspin::data::DataFormat;
use wgspin::data::export::{PairFormat, export_pairs};

use super::args::DataArgs;

/// Write SPIN pairs in the layout a Python stack reads: TRL's DPOTrainer, uclaml/SPIN or
/// LLaMA-Factory.
///
/// --data holds SPIN pairs: `wgspin generate` output, e.g. a spin run's OUT/iter-T/generated.jsonl
/// (iteration T's pairs). --out ending in .parquet writes Parquet (nested message lists as pyarrow
/// writes them), anything else JSON lines.
#[derive(Args, Debug)]
pub struct ExportPairsArgs {
    /// SPIN pairs (JSONL or Parquet rows with "real" and "generated" conversations).
    #[arg(long)]
    data: PathBuf,
    /// Row layout: trl (prompt / chosen / rejected message lists), spin (real / generated
    /// conversations) or sharegpt (conversations + chosen / rejected turns).
    #[arg(long, value_enum)]
    format: PairFormat,
    /// Output file: .parquet for Parquet, otherwise JSON lines.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

impl ExportPairsArgs {
    pub fn run(self) -> Result<()> {
        let data = DataArgs {
            data: self.data.clone(),
            format: DataFormat::Spin,
        };
        let examples = data.load(None)?;
        anyhow::ensure!(
            self.overwrite || !self.out.exists(),
            "{} exists; pass --overwrite to replace it, or choose another --out",
            self.out.display()
        );
        let n = export_pairs(&examples, self.format, &self.out)
            .with_context(|| format!("exporting pairs to {}", self.out.display()))?;
        eprintln!("wrote {n} {:?} rows to {}", self.format, self.out.display());
        Ok(())
    }
}

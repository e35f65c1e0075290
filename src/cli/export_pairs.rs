//! `wgspin export-pairs`: an iteration's SPIN pairs for TRL, uclaml/SPIN or LLaMA-Factory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use wgspin::data::DataFormat;
use wgspin::data::export::{PairFormat, export_pairs};

use wgspin::outputs::{Inputs, check_file};

use super::args::{DataArgs, DataSourceArgs};

/// Write SPIN pairs in the layout a Python stack reads: TRL's DPOTrainer, uclaml/SPIN or
/// LLaMA-Factory.
///
/// --data holds SPIN pairs: `wgspin generate` output, e.g. a spin run's OUT/iter-T/generated.jsonl
/// (iteration T's pairs). --out ending in .parquet writes Parquet (nested message lists as pyarrow
/// writes them), anything else JSON lines.
#[derive(Args, Debug)]
pub struct ExportPairsArgs {
    /// SPIN pairs: JSONL or Parquet rows with "real" and "generated" conversations (a file, or a
    /// Hub dataset ORG/NAME[@REVISION][:SPLIT]).
    #[command(flatten)]
    data: DataSourceArgs,
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
        let mut inputs = Inputs::new();
        self.data.add_inputs(&mut inputs);
        inputs.check("--out", &self.out)?;
        check_file("--out", &self.out, self.overwrite)?;
        let data = DataArgs {
            source: self.data.clone(),
            format: DataFormat::Spin,
            turns: Default::default(),
        };
        let examples = data.load(None)?;
        let n = export_pairs(&examples, self.format, &self.out)
            .with_context(|| format!("exporting pairs to {}", self.out.display()))?;
        // The name as --format spells it ("trl"), not the Rust variant's.
        let format = clap::ValueEnum::to_possible_value(&self.format)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        eprintln!("wrote {n} {format} rows to {}", self.out.display());
        Ok(())
    }
}

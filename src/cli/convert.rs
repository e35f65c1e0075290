//! The format commands: `convert` (GGUF → Hugging Face folder), `export-gguf` (Hugging Face
//! folder → GGUF for llama.cpp) and `plot` (a run folder → report.svg).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wgspin::load::source::adapter_base;

use wgspin::gguf::GgufModel;
use wgspin::gguf::writer::{ExportDtype, export_hf_folder};
use wgspin::hf::weights::StoredDtype;
use wgspin::outputs::{Inputs, check_file, check_model_folder};

/// Convert a GGUF model (llama / qwen2) to a Hugging Face folder (weights dequantized).
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Output folder (new or empty; written beside and renamed into place).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out when it holds a Hugging Face model folder and nothing else (never the
    /// --model file, nor a folder with other files in it).
    #[arg(long)]
    overwrite: bool,
    /// Storage type of model.safetensors.
    #[arg(long, value_enum, ignore_case = true, default_value_t = StoredDtype::F32)]
    dtype: StoredDtype,
}

impl ConvertArgs {
    pub fn run(self) -> Result<()> {
        Inputs::new()
            .add("--model", &self.model)
            .check("--out", &self.out)?;
        check_model_folder("--out", &self.out, self.overwrite)?;
        let g = GgufModel::load(&self.model)
            .with_context(|| format!("reading {}", self.model.display()))?;
        g.write_hf_folder(&self.out, self.dtype)?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

/// Export a Hugging Face folder to a GGUF file that llama.cpp loads.
#[derive(Args, Debug)]
pub struct ExportGgufArgs {
    /// Hugging Face model folder, or a Hub id ORG/NAME[@REVISION] (see `--model` of `train`).
    #[arg(long, value_parser = super::args::model_path)]
    model: PathBuf,
    /// Output .gguf file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists (never a file of --model).
    #[arg(long)]
    overwrite: bool,
    /// Matrix type (norms stay f32).
    #[arg(long, value_enum, ignore_case = true, default_value_t = ExportDtype::F16)]
    dtype: ExportDtype,
}

impl ExportGgufArgs {
    pub fn run(self) -> Result<()> {
        Inputs::new()
            .add_model("--model", &self.model, adapter_base(&self.model).as_deref())
            .check("--out", &self.out)?;
        check_file("--out", &self.out, self.overwrite)?;
        export_hf_folder(&self.model, &self.out, self.dtype)
            .with_context(|| format!("exporting {}", self.model.display()))?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

/// Draw OUT/report.svg and OUT/report.html for the output folder of a `spin` or `train` run.
///
/// Loss, reward margins and accuracy per step, held-out reward accuracy per iteration; the page
/// adds the settings and, for spin, the held-out prompts with the human and generated answers.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The --out folder of a run.
    run_dir: PathBuf,
}

impl PlotArgs {
    pub fn run(self) -> Result<()> {
        let path = wgspin::report::plot::report_for_run(&self.run_dir)?;
        println!("{}", path.display());
        let page = wgspin::report::game::write_run_page(&self.run_dir, None, None)?;
        println!("{}", page.display());
        Ok(())
    }
}

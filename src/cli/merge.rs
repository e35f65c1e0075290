//! `wgspin merge`: a LoRA adapter folded into its base, as a plain Hugging Face checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wgspin::load::source::adapter_base;

use wgspin::hf::weights::StoredDtype;
use wgspin::load::bundle::ModelBundle;
use wgspin::load::checkpoint;
use wgspin::model::lora;
use wgspin::outputs::{Inputs, check_model_folder};

use super::args::DeviceArgs;

/// Merge a PEFT LoRA adapter into its base model: writes a Hugging Face checkpoint that
/// transformers, `wgspin export-gguf` and llama.cpp's converter load without PEFT.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors), e.g. a
    /// `train --lora-rank` checkpoint.
    #[arg(long)]
    adapter: PathBuf,
    /// The base model folder, .gguf file or Hub id ORG/NAME[@REVISION] [default: the adapter's
    /// base_model_name_or_path].
    #[arg(long, value_parser = super::args::model_path)]
    base: Option<PathBuf>,
    /// Output folder (new or empty; written beside and renamed into place).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out when it holds a Hugging Face model folder and nothing else (never the
    /// adapter or its base, nor a folder with other files in it).
    #[arg(long)]
    overwrite: bool,
    /// Storage type of model.safetensors [default: the base's].
    #[arg(long, value_enum, ignore_case = true)]
    dtype: Option<StoredDtype>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl MergeArgs {
    pub fn run(self) -> Result<()> {
        let mut inputs = Inputs::new();
        inputs.add_model(
            "--adapter",
            &self.adapter,
            adapter_base(&self.adapter).as_deref(),
        );
        if let Some(base) = &self.base {
            inputs.add_model("--base", base, adapter_base(base).as_deref());
        }
        inputs.check("--out", &self.out)?;
        check_model_folder("--out", &self.out, self.overwrite)?;
        let dev = self.device.select()?;
        let mut bundle =
            ModelBundle::load_adapter(&self.adapter, self.base.as_deref(), &dev.device)
                .with_context(|| format!("loading adapter {}", self.adapter.display()))?;
        // PEFT ignores LoRA matrices of modules the config does not target; so does the merge.
        let ignored = bundle.adapter.as_ref().map_or(&[][..], |a| &a.ignored_keys);
        if let Some(first) = ignored.first() {
            let n = ignored.len();
            eprintln!(
                "warning: ignored {n} tensors of modules the config does not target: {first}, …"
            );
        }
        lora::merge(&mut bundle.model);
        let dtype = self.dtype.unwrap_or(bundle.stored_dtype);
        checkpoint::save(&bundle.model, &bundle.dir, &self.out, dtype, None, &[])
            .with_context(|| format!("writing {}", self.out.display()))?;
        eprintln!(
            "merged {} into {} ({}): {}",
            self.adapter.display(),
            bundle.dir.display(),
            dtype.torch_name(),
            self.out.display()
        );
        Ok(())
    }
}

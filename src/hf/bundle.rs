//! A model as the user points at it: a Hugging Face folder or a GGUF file → resolved config,
//! tokenizer with chat template, and the transformer on a device.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::hf::config::ModelConfig;
use crate::hf::tokenizer::ChatTokenizer;
use crate::hf::weights::{StoredDtype, WeightFiles};
use crate::model::{Transformer, loader};

pub struct ModelBundle {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: ChatTokenizer,
    pub model: Transformer,
    /// Storage type of the checkpoint on disk.
    pub stored_dtype: StoredDtype,
}

impl ModelBundle {
    /// Ids that end a generated response: config / generation_config eos ids and the
    /// tokenizer's eos.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut stop = self.config.eos_token_ids.clone();
        if !stop.contains(&self.tokenizer.eos_token_id) {
            stop.push(self.tokenizer.eos_token_id);
        }
        stop
    }

    /// Loads a Hugging Face model folder or a `.gguf` file onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_file() && crate::gguf::reader::is_gguf(path) {
            let g = crate::gguf::GgufModel::load(path)?;
            let mut tokenizer = g.chat_tokenizer()?;
            tokenizer.limit_to(&g.config)?;
            let (model, stored_dtype) = loader::load(&g.config, &g.weights, device)?;
            return Ok(Self {
                dir: path.to_path_buf(),
                config: g.config,
                tokenizer,
                model,
                stored_dtype,
            });
        }
        if path.is_file() {
            if crate::hf::weights::is_pickle(path) {
                return Err(Error::PickleWeights {
                    path: path.to_path_buf(),
                });
            }
            return Err(Error::Invalid(format!(
                "{}: expected a Hugging Face model folder (config.json, tokenizer.json, *.safetensors) or a .gguf file",
                path.display()
            )));
        }
        if !path.is_dir() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "Pass --model a Hugging Face model folder (config.json, tokenizer.json, *.safetensors)."
                    .into(),
            });
        }
        let config = ModelConfig::from_dir(path)?;
        let mut tokenizer = ChatTokenizer::from_dir(path, &config.eos_token_ids)?;
        tokenizer.limit_to(&config)?;
        let files = WeightFiles::open_dir(path)?;
        let (model, stored_dtype) = loader::load(&config, &files, device)?;
        Ok(Self {
            dir: path.to_path_buf(),
            config,
            tokenizer,
            model,
            stored_dtype,
        })
    }
}

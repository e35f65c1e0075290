//! A model as the user points at it: a Hugging Face folder, a GGUF file, or a PEFT LoRA adapter
//! folder on top of either → resolved config, tokenizer with chat template, and the transformer
//! on a device.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::hf::config::ModelConfig;
use crate::hf::tokenizer::ChatTokenizer;
use crate::hf::weights::{StoredDtype, WeightFiles};
use crate::load::ModelSource;
use crate::load::adapter::{self, Adapter};
use crate::model::lora::{self, LoraConfig};
use crate::model::{Transformer, loader};

/// Where a model's adapter came from, when `--model` named an adapter folder.
#[derive(Debug, Clone)]
pub struct AdapterSource {
    pub dir: PathBuf,
    /// `base_model_name_or_path` as the adapter recorded it (what a continued adapter keeps).
    pub base_name: String,
    pub lora: LoraConfig,
    /// The scale its update is multiplied by (α / r, or α / √r with rsLoRA).
    pub scale: f64,
    /// Keys of its weights file that PEFT ignores (LoRA matrices of modules the config does not
    /// target): left out, for the CLI to warn about.
    pub ignored_keys: Vec<String>,
    /// Why the flags cannot describe it (some layers only, per-module ranks), so that training
    /// does not continue it; `None` for an adapter `--lora-*` flags describe.
    pub irregular: Option<String>,
}

pub struct ModelBundle {
    /// The model folder or GGUF file (the base, for an adapter): where config and tokenizer
    /// files come from.
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: ChatTokenizer,
    pub model: Transformer,
    /// Storage type of the checkpoint on disk.
    pub stored_dtype: StoredDtype,
    /// The adapter `--model` named, if any (merged into `model` unless loaded unmerged).
    pub adapter: Option<AdapterSource>,
}

/// The resolved config of what `--model` names (a folder, a GGUF file, an adapter's base, or a
/// config.json itself), without loading weights.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    read_source_config(&ModelSource::resolve(path)?)
}

/// [`read_config`] of a model already resolved (an adapter's comes from its base).
pub fn read_source_config(source: &ModelSource) -> Result<ModelConfig> {
    match source {
        ModelSource::Adapter { base, .. } => read_source_config(base),
        ModelSource::Folder(p) | ModelSource::Gguf(p) => config_of_model(p),
    }
}

/// The config of a model folder, a GGUF file, or a config.json itself (not an adapter).
fn config_of_model(path: &Path) -> Result<ModelConfig> {
    if path.is_file() && path.extension().is_some_and(|e| e == "json") {
        return crate::hf::config::HfConfig::from_file(path)?.resolve(path, &[]);
    }
    if path.is_dir() {
        ModelConfig::from_dir(path)
    } else {
        crate::gguf::GgufModel::load_metadata(path).map(|g| g.config)
    }
}

/// What `--model` names without its weights: the resolved config and the chat tokenizer (an
/// adapter's come from its base). For generation on a server, which holds the weights itself.
pub fn read_text_side(path: &Path) -> Result<(ModelConfig, ChatTokenizer)> {
    read_source_text_side(&ModelSource::resolve(path)?)
}

/// [`read_text_side`] of a model already resolved.
pub fn read_source_text_side(source: &ModelSource) -> Result<(ModelConfig, ChatTokenizer)> {
    let (config, mut tokenizer) = match source {
        ModelSource::Adapter { base, .. } => return read_source_text_side(base),
        ModelSource::Gguf(path) => {
            let g = crate::gguf::GgufModel::load_metadata(path)?;
            let tokenizer = g.chat_tokenizer()?;
            (g.config, tokenizer)
        }
        ModelSource::Folder(path) => {
            let config = config_of_model(path)?;
            let tokenizer = ChatTokenizer::from_dir(path, &config.eos_token_ids)?;
            (config, tokenizer)
        }
    };
    tokenizer.limit_to(&config)?;
    Ok((config, tokenizer))
}

/// The files of folder `dir` that loading it reads, and only those: an adapter folder's config
/// and weights (its base is loaded from its own folder), or a model folder's metadata and the
/// weight files the loader opens. What a model's identity hashes.
pub fn files_read(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = if adapter::is_adapter_dir(dir) {
        [adapter::CONFIG_FILE, adapter::WEIGHTS_FILE]
            .iter()
            .map(|n| dir.join(n))
            .collect()
    } else {
        let mut f = WeightFiles::paths_in(dir)?;
        f.extend(
            crate::hf::files::LOADED_METADATA
                .iter()
                .map(|n| dir.join(n)),
        );
        f
    };
    files.retain(|p| p.is_file());
    Ok(files)
}

/// Ids that end a generated response: config / generation_config eos ids and the tokenizer's eos.
pub fn stop_ids(config: &ModelConfig, tokenizer: &ChatTokenizer) -> Vec<u32> {
    let mut stop = config.eos_token_ids.clone();
    if !stop.contains(&tokenizer.eos_token_id) {
        stop.push(tokenizer.eos_token_id);
    }
    stop
}

impl ModelBundle {
    /// Ids that end a generated response (see [`stop_ids`]).
    pub fn stop_ids(&self) -> Vec<u32> {
        stop_ids(&self.config, &self.tokenizer)
    }

    /// The `base_model_name_or_path` an adapter trained from this bundle records: a continued
    /// adapter keeps its base; a new one names `model_path`, the model it was put on.
    pub fn adapter_base_name(&self, model_path: &Path) -> String {
        match &self.adapter {
            Some(a) => a.base_name.clone(),
            None => model_path.to_string_lossy().into_owned(),
        }
    }

    /// What `--model` named, as loading found it (nothing is probed again).
    pub fn source(&self) -> ModelSource {
        let model = if self.dir.is_file() {
            ModelSource::Gguf(self.dir.clone())
        } else {
            ModelSource::Folder(self.dir.clone())
        };
        match &self.adapter {
            Some(a) => ModelSource::Adapter {
                dir: a.dir.clone(),
                base: Box::new(model),
            },
            None => model,
        }
    }

    /// Loads a Hugging Face model folder, a `.gguf` file or an adapter folder onto `device`; an
    /// adapter is merged into its base, so the model runs as one set of weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut b = Self::load_unmerged(path, device)?;
        lora::merge(&mut b.model);
        Ok(b)
    }

    /// [`Self::load`] of a model already resolved.
    pub fn load_source(source: &ModelSource, device: &Device) -> Result<Self> {
        let mut b = Self::load_unmerged_source(source, device)?;
        lora::merge(&mut b.model);
        Ok(b)
    }

    /// [`Self::load_unmerged`] of a model already resolved: an adapter on the base it resolved
    /// to.
    fn load_unmerged_source(source: &ModelSource, device: &Device) -> Result<Self> {
        match source {
            ModelSource::Adapter { dir, base } => {
                Self::load_adapter(dir, Some(base.path()), device)
            }
            ModelSource::Folder(p) | ModelSource::Gguf(p) => Self::load_base(p, device),
        }
    }

    /// [`Self::load`], keeping an adapter apart from its frozen base (to train it further).
    pub fn load_unmerged(path: &Path, device: &Device) -> Result<Self> {
        if !adapter::is_adapter_dir(path) {
            return Self::load_base(path, device);
        }
        Self::load_adapter(path, None, device)
    }

    /// The adapter folder `path` on `base` (default: its `base_model_name_or_path`), unmerged.
    pub fn load_adapter(path: &Path, base: Option<&Path>, device: &Device) -> Result<Self> {
        if !adapter::is_adapter_dir(path) {
            return Err(Error::MissingFile {
                path: path.join(adapter::CONFIG_FILE),
                hint: "Pass a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors)."
                    .into(),
            });
        }
        let a = Adapter::open(path)?;
        let base = match base {
            Some(b) => b.to_path_buf(),
            None => a.base_path()?,
        };
        if adapter::is_adapter_dir(&base) {
            return Err(Error::Invalid(format!(
                "{}: its base {} is an adapter too; merge that one first (`wgspin merge`)",
                path.display(),
                base.display()
            )));
        }
        let mut b = Self::load_base(&base, device)?;
        let applied = a.apply(&mut b.model)?;
        b.adapter = Some(AdapterSource {
            dir: path.to_path_buf(),
            base_name: a.base_name.clone(),
            lora: applied.lora,
            scale: applied.scale,
            ignored_keys: applied.ignored_keys,
            irregular: applied.irregular,
        });
        Ok(b)
    }

    /// The model to train: with LoRA on, the adapter `--model` named (continued) or new adapters
    /// drawn from `seed`, on a frozen base; without, every weight (an adapter merged first).
    pub fn load_for_training(
        path: &Path,
        device: &Device,
        cfg: &LoraConfig,
        seed: u64,
    ) -> Result<Self> {
        Self::load_unmerged(path, device)?.into_training(cfg, seed)
    }

    /// [`Self::load_for_training`] of a model already resolved.
    pub fn load_source_for_training(
        source: &ModelSource,
        device: &Device,
        cfg: &LoraConfig,
        seed: u64,
    ) -> Result<Self> {
        Self::load_unmerged_source(source, device)?.into_training(cfg, seed)
    }

    /// This unmerged model to train: without LoRA, merged (every weight trains); with LoRA `cfg`,
    /// its adapter continued (when the flags describe it) or new ones drawn from `seed`, on a
    /// frozen base.
    fn into_training(mut self, cfg: &LoraConfig, seed: u64) -> Result<Self> {
        let b = &mut self;
        if !cfg.enabled() {
            lora::merge(&mut b.model);
            return Ok(self);
        }
        let sorted = |t: &[lora::Target]| {
            let mut t = t.to_vec();
            t.sort();
            t
        };
        match &b.adapter {
            // Saving writes the flags' config (every layer, one rank): it must mean this adapter.
            Some(a) if a.irregular.is_some() => {
                return Err(Error::Invalid(format!(
                    "{}: {}, which the saved adapter_config.json of --lora-rank/--lora-targets \
                     cannot express; merge it first (`wgspin merge`) to train a new adapter on top",
                    a.dir.display(),
                    a.irregular.as_deref().unwrap_or_default()
                )));
            }
            // Saving writes the flags' rank, alpha and targets: they must be the adapter's.
            Some(a)
                if a.lora.rank != cfg.rank
                    || sorted(&a.lora.targets) != sorted(&cfg.targets)
                    || (a.scale - cfg.alpha() / cfg.rank as f64).abs() > 1e-12 * a.scale.abs() =>
            {
                return Err(Error::Invalid(format!(
                    "{}: the adapter there has rank {}, scale {} on {}, but --lora-rank {} \
                     --lora-alpha {} --lora-targets {} were asked for (scale {}); pass its \
                     settings to continue it, or merge it first (`wgspin merge`) to train a new \
                     adapter on top",
                    a.dir.display(),
                    a.lora.rank,
                    a.scale,
                    lora::target_list(&a.lora.targets),
                    cfg.rank,
                    cfg.alpha(),
                    lora::target_list(&cfg.targets),
                    cfg.alpha() / cfg.rank as f64
                )));
            }
            Some(_) => {}
            None => lora::attach(&mut b.model, cfg, seed),
        }
        lora::freeze_base(&mut b.model);
        lora::set_dropout(&mut b.model, cfg.dropout);
        Ok(self)
    }

    /// Loads a Hugging Face model folder or a `.gguf` file onto `device`.
    fn load_base(path: &Path, device: &Device) -> Result<Self> {
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
                adapter: None,
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
            adapter: None,
        })
    }
}

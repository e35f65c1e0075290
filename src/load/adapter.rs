//! PEFT LoRA adapter folders: `adapter_config.json` + `adapter_model.safetensors`, with PEFT's key
//! names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`), so that
//! `peft.PeftModel.from_pretrained(base, dir)` loads what wgspin writes and wgspin loads what PEFT
//! writes. Which modules carry the adapter is what the config says, by PEFT's rules
//! ([`crate::model::peft_targets`]), not what the file's keys say. The math of an adapter is in [`crate::model::lora`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::Tensor;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::hf::weights::{HostTensor, StoredDtype, WeightFiles, write_safetensors};
use crate::model::Transformer;
use crate::model::lora::{self, Lora, LoraConfig, Target};
use crate::model::named::adapter_params_mut;

pub use crate::model::peft_targets::Chosen;
use crate::model::peft_targets::Selection;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts in front of the base model's module paths in its saved keys.
const KEY_PREFIX: &str = "base_model.model.";

/// Whether `path` is an adapter folder (and not a model folder).
pub fn is_adapter_dir(path: &Path) -> bool {
    path.is_dir() && path.join(CONFIG_FILE).is_file()
}

/// A LoRA adapter read from its folder, checked against the settings wgspin supports.
pub struct Adapter {
    pub dir: PathBuf,
    /// `base_model_name_or_path` as written.
    pub base_name: String,
    /// `r`, `lora_alpha`, `lora_dropout` (the modules are known once the base is: [`Self::apply`]).
    rank: usize,
    alpha: f64,
    dropout: f64,
    rslora: bool,
    selection: Selection,
    weights: WeightFiles,
}

/// What [`Adapter::apply`] put on a model.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The adapter as LoRA settings: the config's rank, alpha and dropout, and the projection kinds
    /// that carry it on some layer.
    pub lora: LoraConfig,
    /// α / r, or α / √r with rsLoRA, of the config's r and alpha.
    pub scale: f64,
    /// Every module that carries the adapter, with its own rank and alpha.
    pub modules: Vec<Chosen>,
    /// Keys of `adapter_model.safetensors` that PEFT ignores as unexpected: LoRA matrices of
    /// modules the config does not target. Not applied; the CLI warns about them.
    pub ignored_keys: Vec<String>,
    /// Why the adapter is not what `--lora-rank/--lora-alpha/--lora-targets` describe (one rank
    /// and alpha on the same projections of every layer), when it is not: such an adapter runs and
    /// merges, but is not continued by training (which saves the flags' config).
    pub irregular: Option<String>,
}

fn config_err(dir: &Path, message: String) -> Error {
    Error::Config {
        path: dir.join(CONFIG_FILE),
        message,
    }
}

/// `base_model.model.<module>.lora_A.weight` (or `lora_B`) → `<module>`: PEFT's key of a LoRA
/// matrix.
fn lora_module(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    rest.strip_suffix(".lora_A.weight")
        .or_else(|| rest.strip_suffix(".lora_B.weight"))
}

/// `model.layers.L.self_attn.q_proj` → (L, q): a decoder projection's module name, any layer.
fn parse_module(name: &str) -> Option<(usize, Target)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let target: Target = module.rsplit('.').next()?.parse().ok()?;
    (target.module_path(0).split_once("0.")?.1 == module).then_some(())?;
    Some((layer.parse().ok()?, target))
}

impl Adapter {
    /// Reads `dir/adapter_config.json` and the headers of its weights. Refuses what it would
    /// compute wrongly: other PEFT types, DoRA, trained biases, modules saved whole, and targeting
    /// fields PEFT refuses or wgspin cannot evaluate.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = crate::fsutil::read_text(&path).map_err(|e| Error::io(&path, e))?;
        let cfg: Value =
            serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
        let field = |k: &str| cfg.get(k).unwrap_or(&Value::Null);
        let peft_type = field("peft_type").as_str().unwrap_or("");
        if peft_type != "LORA" {
            return Err(config_err(
                dir,
                format!("peft_type is {peft_type:?}; wgspin reads LoRA adapters only (\"LORA\")"),
            ));
        }
        let truthy = |v: &Value| match v {
            Value::Null | Value::Bool(false) => false,
            Value::Object(o) => !o.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty() && s != "none",
            _ => true,
        };
        for (key, why) in [
            ("use_dora", "DoRA adapters are not supported"),
            (
                "fan_in_fan_out",
                "fan_in_fan_out (Conv1D layers) is not a Llama/Qwen2 layout",
            ),
            (
                "modules_to_save",
                "modules saved whole (their trained weights replace the base's) are not \
                 supported; merge with PEFT (merge_and_unload, save_pretrained) and pass that \
                 model folder instead",
            ),
            (
                "bias",
                "trained biases are not supported (bias must be \"none\")",
            ),
            ("layer_replication", "layer replication is not supported"),
            ("use_qalora", "QA-LoRA is not supported"),
            ("alora_invocation_tokens", "activated LoRA is not supported"),
            ("use_bdlora", "block-diagonal LoRA is not supported"),
            ("lora_bias", "LoRA biases are not supported"),
            (
                "target_parameters",
                "adapters on raw parameters are not supported",
            ),
            (
                "trainable_token_indices",
                "trained token embeddings are not supported",
            ),
        ] {
            if truthy(field(key)) {
                return Err(config_err(dir, format!("{key} = {}: {why}", field(key))));
            }
        }
        let rank = field("r").as_u64().filter(|&r| r > 0).ok_or_else(|| {
            config_err(
                dir,
                format!("\"r\" must be a positive integer, got {}", field("r")),
            )
        })? as usize;
        let alpha = field("lora_alpha")
            .as_f64()
            .filter(|a| *a > 0.0 && a.is_finite())
            .ok_or_else(|| {
                config_err(
                    dir,
                    format!("\"lora_alpha\" must be > 0, got {}", field("lora_alpha")),
                )
            })?;
        let dropout = field("lora_dropout").as_f64().unwrap_or(0.0);
        let selection =
            Selection::from_config(&cfg, rank, alpha).map_err(|m| config_err(dir, m))?;
        let base_name = field("base_model_name_or_path")
            .as_str()
            .unwrap_or("")
            .to_string();
        let weights = WeightFiles::open_files(&[dir.join(WEIGHTS_FILE)])?;
        Ok(Self {
            dir: dir.to_path_buf(),
            base_name,
            rank,
            alpha,
            dropout,
            rslora: field("use_rslora").as_bool() == Some(true),
            selection,
            weights,
        })
    }

    /// α / r, or α / √r with rsLoRA (PEFT's `scaling`).
    fn scale_of(&self, rank: usize, alpha: f64) -> f64 {
        if self.rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// The base model folder or GGUF file: `base_model_name_or_path` as a path from the working
    /// directory, else from the adapter folder or the folder around it. A hub id is not fetched.
    pub fn base_path(&self) -> Result<PathBuf> {
        if self.base_name.is_empty() {
            return Err(config_err(
                &self.dir,
                "has no base_model_name_or_path; set it to the base model's folder".into(),
            ));
        }
        let given = PathBuf::from(&self.base_name);
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        let local = [given.clone(), self.dir.join(&given), parent.join(&given)]
            .into_iter()
            .find(|p| p.exists());
        // A Hub id (what PEFT records for a Hub base): its copy in the Hugging Face cache. Loading
        // an adapter never downloads; a model flag does.
        let hub = crate::hf::hub::parse_id(&self.base_name);
        let cached = || {
            let settings = crate::hf::hub::HubSettings::from_env();
            hub.as_ref()
                .and_then(|id| crate::hf::hub::cached_model(id, &settings))
        };
        local.or_else(cached).ok_or_else(|| {
            let how = if hub.is_some() {
                "is a Hub id not in the Hugging Face cache: fetch it once (e.g. `wgspin merge --base ID`, \
                 or any command with `--model ID`, or `huggingface-cli download ID`), or pass the base \
                 with `merge --base`"
            } else {
                "is not a local model folder or .gguf file: download the base model and set \
                 base_model_name_or_path to its path (or pass it with `merge --base`)"
            };
            config_err(
                &self.dir,
                format!("base_model_name_or_path {:?} {how}", self.base_name),
            )
        })
    }

    /// Puts this adapter on `model` (unmerged, without dropout): on the modules the config
    /// targets, each matrix's shape checked against the projection it wraps. Keys of untargeted
    /// modules are left out and listed, as PEFT ignores them; a targeted module without its
    /// matrices is refused (PEFT would start it at its initialisation, changing what it computes).
    pub fn apply(&self, model: &mut Transformer) -> Result<Applied> {
        let layers = model.layers.len();
        let chosen = self
            .selection
            .select(layers)
            .map_err(|m| config_err(&self.dir, m))?;
        let by_name: BTreeMap<String, &Chosen> = chosen.iter().map(|c| (c.name(), c)).collect();
        let ignored_keys = self.ignored_keys(&by_name, layers)?;
        let mut targets: BTreeMap<(usize, Target), &mut crate::model::layers::Linear> =
            lora::targets_mut(model)
                .into_iter()
                .map(|(l, t, lin)| ((l, t), lin))
                .collect();
        for c in &chosen {
            let Some(lin) = targets.get_mut(&(c.layer, c.target)) else {
                continue;
            };
            let like = lin.weight.val();
            let [out, inp] = like.dims();
            let r = c.rank;
            let a = self.matrix(c, "A", [r, inp], &like)?;
            let b = self.matrix(c, "B", [out, r], &like)?;
            lin.lora = Some(Lora {
                a,
                b,
                scale: self.scale_of(r, c.alpha),
                dropout: 0.0,
            });
        }
        let kinds: BTreeSet<Target> = chosen.iter().map(|c| c.target).collect();
        let irregular = self.irregular(&chosen, kinds.len() * layers);
        Ok(Applied {
            lora: LoraConfig {
                rank: self.rank,
                alpha: Some(self.alpha),
                dropout: self.dropout,
                targets: kinds.into_iter().collect(),
            },
            scale: self.scale_of(self.rank, self.alpha),
            modules: chosen,
            ignored_keys,
            irregular: irregular.map(str::to_string),
        })
    }

    fn tensor_err(&self, key: &str, message: String) -> Error {
        Error::Tensor {
            path: self.weights.path_of(key),
            name: key.to_string(),
            message,
        }
    }

    /// The file's keys that no chosen module reads (listed, as PEFT ignores them), after refusing
    /// the keys that would change what the adapter computes if they were ignored.
    fn ignored_keys(
        &self,
        by_name: &BTreeMap<String, &Chosen>,
        layers: usize,
    ) -> Result<Vec<String>> {
        let mut ignored_keys = vec![];
        for key in self.weights.names() {
            if let Some(module) = lora_module(key) {
                if by_name.contains_key(module) {
                    continue;
                }
                if let Some((l, _)) = parse_module(module).filter(|(l, _)| *l >= layers) {
                    return Err(self.tensor_err(
                        key,
                        format!(
                            "is for layer {l}, but the base has {layers} layers: the adapter was \
                             made for another model; pass its base (--base)"
                        ),
                    ));
                }
                ignored_keys.push(key.to_string());
            } else if let Some(c) = by_name
                .keys()
                .find(|m| key.starts_with(&format!("{KEY_PREFIX}{m}.")))
            {
                return Err(self.tensor_err(
                    key,
                    format!(
                        "is a parameter of the targeted module {c} that plain LoRA does not have \
                          (a DoRA magnitude, a LoRA bias, a key with the adapter's name?); \
                         wgspin reads lora_A/lora_B.weight only"
                    ),
                ));
            } else if !key.contains("lora_") {
                return Err(self.tensor_err(
                    key,
                    "is a whole weight, not a LoRA matrix (modules_to_save and trainable tokens \
                     write these); wgspin does not load them: merge with PEFT instead"
                        .into(),
                ));
            } else {
                ignored_keys.push(key.to_string());
            }
        }
        Ok(ignored_keys)
    }

    /// Module `c`'s `lora_{ab}` matrix, checked to be there, `shape` and finite, beside `like`
    /// (the projection's weight: its device and autodiff context).
    fn matrix(
        &self,
        c: &Chosen,
        ab: &str,
        shape: [usize; 2],
        like: &Tensor<2>,
    ) -> Result<Param<Tensor<2>>> {
        let path = c.name();
        let key = format!("{KEY_PREFIX}{path}.lora_{ab}.weight");
        if !self.weights.names().any(|k| k == key) {
            return Err(Error::Tensor {
                path: self.dir.join(WEIGHTS_FILE),
                name: key,
                message: format!(
                    "is missing: {CONFIG_FILE} targets {path} (target_modules, \
                     exclude_modules, layers_to_transform), but the file holds no \
                     lora_{ab} for it; fix target_modules or use the adapter's full file"
                ),
            });
        }
        let t = self.weights.read(&key)?;
        if t.shape != shape {
            let ([out, inp], r) = (like.dims(), c.rank);
            return Err(self.tensor_err(
                &key,
                format!(
                    "has shape {:?} but rank {r} on a [{out}, {inp}] projection needs {shape:?}",
                    t.shape
                ),
            ));
        }
        if let Some(bad) = t.data.iter().find(|x| !x.is_finite()) {
            return Err(self.tensor_err(&key, format!("holds {bad}: the adapter is corrupt")));
        }
        Ok(lora::upload(t.data, shape, like))
    }

    /// Why the adapter cannot be described by plain LoRA settings (rank, alpha, targets on every
    /// layer), if it cannot: `regular` is how many modules such settings would choose.
    fn irregular(&self, chosen: &[Chosen], regular: usize) -> Option<&'static str> {
        if chosen.len() != regular {
            Some(
                "it is on some layers' modules only (layers_to_transform, exclude_modules or a \
                  target_modules regex)",
            )
        } else if chosen
            .iter()
            .any(|c| c.rank != self.rank || c.alpha != self.alpha)
        {
            Some("its modules have ranks or alphas of their own (rank_pattern, alpha_pattern)")
        } else {
            None
        }
    }
}

/// The PEFT release whose `adapter_config.json` fields [`config_json`] writes (PEFT fills what a
/// file lacks with its defaults, and warns when an adapter comes from a newer release).
pub const PEFT_LAYOUT_VERSION: &str = "0.21.2";

/// `adapter_config.json` as PEFT writes it for a causal-LM LoRA adapter: every field of
/// [`PEFT_LAYOUT_VERSION`], at its default where wgspin has no setting for it.
pub fn config_json(cfg: &LoraConfig, base_name: &str) -> Value {
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.module_name()).collect();
    let alpha = cfg.alpha();
    // PEFT writes an integer alpha as an integer (its lora_alpha is an int field).
    let alpha = if alpha.fract() == 0.0 && alpha < 1e15 {
        json!(alpha as u64)
    } else {
        json!(alpha)
    };
    json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_bias": false,
        "lora_dropout": cfg.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": PEFT_LAYOUT_VERSION,
        "qalora_group_size": 16,
        "r": cfg.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    })
}

/// The adapters of `model` under PEFT's keys, f32.
pub fn adapter_tensors(model: &Transformer) -> Result<Vec<(String, HostTensor)>> {
    let mut m = model.clone();
    adapter_params_mut(&mut m)
        .into_iter()
        .map(|(name, p)| {
            let shape = p.shape();
            let data = p.host_f32(&name)?;
            Ok((
                format!("{KEY_PREFIX}{name}"),
                HostTensor {
                    shape,
                    data,
                    dtype: StoredDtype::F32,
                },
            ))
        })
        .collect()
}

/// Writes `model`'s adapters as a PEFT adapter folder at `dest` (replacing it atomically), with
/// `extra` files beside them.
pub fn save(
    model: &Transformer,
    cfg: &LoraConfig,
    base_name: &str,
    dest: &Path,
    card: Option<&str>,
    extra: &[(&str, Vec<u8>)],
) -> Result<()> {
    let tensors = adapter_tensors(model)?;
    if tensors.is_empty() {
        return Err(Error::Invalid(
            "the model carries no LoRA adapter to save".into(),
        ));
    }
    crate::load::checkpoint::save_folder(dest, |tmp| {
        let config = serde_json::to_string_pretty(&config_json(cfg, base_name)).unwrap_or_default();
        crate::fsutil::write_atomic(&tmp.join(CONFIG_FILE), config.as_bytes())?;
        write_safetensors(
            &tmp.join(WEIGHTS_FILE),
            tensors.iter().map(|(name, t)| (name, t)),
            StoredDtype::F32,
            crate::hf::weights::pt_metadata(),
        )?;
        let text = format!(
            "---\nbase_model: {base_name}\nlibrary_name: peft\ntags:\n- wgspin\n- lora\n---\n\n\
             A LoRA adapter (rank {}, alpha {}) trained with wgspin on `{base_name}`. Load it with \
             `peft.PeftModel.from_pretrained(base, this_folder)`, or merge it with `wgspin merge`.\n",
            cfg.rank,
            cfg.alpha()
        );
        crate::fsutil::write_atomic(&tmp.join(crate::hf::card::CARD_FILE), text.as_bytes())?;
        if let Some(section) = card {
            crate::load::checkpoint::append_to_card(tmp, section)?;
        }
        crate::load::checkpoint::write_extra(tmp, extra)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_to_modules() {
        let key = "base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight";
        assert_eq!(lora_module(key), Some("model.layers.12.self_attn.q_proj"));
        assert_eq!(
            parse_module("model.layers.12.self_attn.q_proj"),
            Some((12, Target::Q))
        );
        assert_eq!(
            lora_module("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"),
            Some("model.layers.0.mlp.down_proj")
        );
        // A module under the wrong parent, an embedding, PEFT's in-memory adapter name.
        assert_eq!(parse_module("model.layers.0.mlp.q_proj"), None);
        assert_eq!(
            lora_module("base_model.model.model.embed_tokens.lora_embedding_A"),
            None
        );
        assert_eq!(
            lora_module("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            None
        );
    }
}

//! Model configuration: `config.json` is read by serde into [`HfConfig`] (every field as Hugging Face
//! writes it, optional where files differ) and resolved into [`ModelConfig`], which has no `Option`s,
//! so the model code never guesses a default.
//!
//! Both config styles are understood: top-level `rope_theta` / `rope_scaling` (transformers < 5) and
//! `rope_parameters` (transformers 5).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

use super::arch::LayerType;
pub use super::arch::{Activation, Family, NormKind};
pub use super::config_json::HfConfig;

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (frequencies divided by it).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base of the geometric frequency series (`rope_theta`).
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// Which keys a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionWindow {
    /// Every earlier position.
    Full,
    /// Only the last `n` positions including itself (Mistral's / Qwen2's sliding window).
    Sliding(usize),
}

/// One kind of attention layer: which keys a query sees and how positions rotate.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionKind {
    pub window: AttentionWindow,
    pub rope: RopeConfig,
}

/// Resolved model configuration: every value the model needs, no defaults left to guess.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family file this config resolved through (`hf/arch/`).
    pub family: &'static Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Per-head width; may differ from `hidden_size / num_heads` when given explicitly.
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    /// RoPE of the full-attention layers (what GGUF records as the model's).
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub norm: NormKind,
    pub activation: Activation,
    /// An RMSNorm over each head's q and k before RoPE.
    pub qk_norm: bool,
    /// Norms after attention and after the MLP too (`post_attention_layernorm` then normalises
    /// the attention output, and `pre_`/`post_feedforward_layernorm` wrap the MLP).
    pub sandwich_norms: bool,
    /// Factor on the embeddings (Gemma: √hidden_size).
    pub embed_scale: Option<f32>,
    /// Factor on attention scores (`head_dim^-0.5` unless the family says otherwise).
    pub attn_scale: f32,
    /// The distinct kinds of attention layer (one for most models; full and sliding for Gemma 3).
    pub attention: Vec<AttentionKind>,
    /// Per layer: its index into `attention`.
    pub layer_kinds: Vec<usize>,
    /// Token ids that end a response (config.json and generation_config.json together).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written in config.json (`"float32"` when absent).
    pub torch_dtype: String,
}

/// Reads token ids written as an int, a list of ints or null.
pub fn token_ids(value: &Value) -> Option<Vec<u32>> {
    match value {
        Value::Null => Some(vec![]),
        Value::Number(n) => n.as_u64().map(|v| vec![v as u32]),
        Value::Array(items) => items.iter().map(|v| v.as_u64().map(|v| v as u32)).collect(),
        _ => None,
    }
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_text(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: path.to_path_buf(),
                hint: "A Hugging Face model folder needs config.json next to its weights.".into(),
            },
            _ => Error::io(path, e),
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Resolves into a [`ModelConfig`]; `extra_eos` are ids from generation_config.json.
    pub fn resolve(&self, path: &Path, extra_eos: &[u32]) -> Result<ModelConfig> {
        let err = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let need = |v: Option<usize>, name: &str| {
            v.filter(|&v| v > 0)
                .ok_or_else(|| err(format!("missing or zero `{name}`")))
        };
        let family = self.family(path, &err)?;
        let activation = self.activation(family, &err)?;
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let (num_kv_heads, head_dim) = self.head_shape(hidden_size, num_heads, &err)?;
        let num_layers = need(self.num_hidden_layers, "num_hidden_layers")?;
        let (attention, layer_kinds) = self.attention(family, num_layers, &err)?;
        let mut eos_token_ids = match &self.eos_token_id {
            Some(v) => token_ids(v).ok_or_else(|| {
                err(format!(
                    "eos_token_id must be an int or a list of ints, got {v}"
                ))
            })?,
            None => vec![],
        };
        for id in extra_eos {
            if !eos_token_ids.contains(id) {
                eos_token_ids.push(*id);
            }
        }
        let vocab_size = need(self.vocab_size, "vocab_size")?;
        if let Some(id) = eos_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(err(format!(
                "eos_token_id {id} is outside the vocabulary (vocab_size {vocab_size})"
            )));
        }
        // A zero, negative or NaN epsilon divides by zero in RMSNorm for some rows: every
        // log-prob NaN, every generation empty.
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(family.default_eps);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(err(format!(
                "rms_norm_eps must be a positive number, got {rms_norm_eps}"
            )));
        }
        let attn_scale = match family.attn_scale_key {
            Some(key) => match self.extra.get(key) {
                None | Some(Value::Null) => 1.0 / (head_dim as f64).sqrt(),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x > 0.0 => 1.0 / x.sqrt(),
                    _ => return Err(err(format!("`{key}` must be a positive number, got {v}"))),
                },
            },
            None => 1.0 / (head_dim as f64).sqrt(),
        } as f32;
        let biases = (family.biases)(self);
        let rope = self.rope(LayerType::Full, family, &err)?;
        Ok(ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps,
            rope,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(family.default_tied),
            qkv_bias: biases.qkv,
            o_bias: biases.o,
            mlp_bias: biases.mlp,
            norm: family.norm,
            activation,
            qk_norm: family.qk_norm,
            sandwich_norms: family.sandwich_norms,
            embed_scale: family.embed_scale.then(|| (hidden_size as f32).sqrt()),
            attn_scale,
            attention,
            layer_kinds,
            eos_token_ids,
            torch_dtype: self
                .dtype
                .clone()
                .or_else(|| self.torch_dtype.clone())
                .unwrap_or_else(|| "float32".into()),
        })
    }

    /// The model's family by `model_type`, after checking the flags it reads and refusing the
    /// options it does not support.
    fn family(&self, path: &Path, err: &dyn Fn(String) -> Error) -> Result<&'static Family> {
        let model_type = self
            .model_type
            .clone()
            .ok_or_else(|| err("missing `model_type`".into()))?;
        let Some(family) = super::arch::by_model_type(&model_type) else {
            return Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                model_type,
                supported: super::arch::supported_model_types(),
            });
        };
        self.check_types(err)?;
        for (key, what) in family.refused {
            match self.extra.get(*key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(v) => {
                    return Err(err(format!(
                        "`{key}` = {v}: {what} is not supported by wgspin; a {model_type} model needs it null"
                    )));
                }
            }
        }
        Ok(family)
    }

    /// `(num_key_value_heads, head_dim)`: kv heads dividing the query heads, and an even head
    /// size (given, or the hidden size split over the heads).
    fn head_shape(
        &self,
        hidden_size: usize,
        num_heads: usize,
        err: &dyn Fn(String) -> Error,
    ) -> Result<(usize, usize)> {
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(err(format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match self.head_dim {
            Some(d) if d > 0 => d,
            _ => {
                if !hidden_size.is_multiple_of(num_heads) {
                    return Err(err(format!(
                        "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads}) and no head_dim is given"
                    )));
                }
                hidden_size / num_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(err(format!("head_dim ({head_dim}) must be even for RoPE")));
        }
        Ok((num_kv_heads, head_dim))
    }

    /// The flags the family files read as `bool` are `bool` (or null) when written.
    fn check_types(&self, err: &dyn Fn(String) -> Error) -> Result<()> {
        for key in ["attention_bias", "mlp_bias", "use_sliding_window"] {
            match self.extra.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(_)) => {}
                Some(v) => return Err(err(format!("`{key}` must be true or false, got {v}"))),
            }
        }
        Ok(())
    }

    fn activation(&self, family: &Family, err: &dyn Fn(String) -> Error) -> Result<Activation> {
        let Some((key, value)) = family
            .activation_keys
            .iter()
            .find_map(|k| self.extra.get(*k).filter(|v| !v.is_null()).map(|v| (k, v)))
        else {
            return Ok(family.default_activation);
        };
        value.as_str().and_then(Activation::from_hf).ok_or_else(|| {
            err(format!(
                "{key} {value} is not supported (wgspin's gated MLP runs silu or gelu_pytorch_tanh)"
            ))
        })
    }

    /// The distinct attention kinds and each layer's index into them.
    fn attention(
        &self,
        family: &Family,
        layers: usize,
        err: &dyn Fn(String) -> Error,
    ) -> Result<(Vec<AttentionKind>, Vec<usize>)> {
        let types = match &self.layer_types {
            Some(names) => {
                if names.len() != layers {
                    return Err(err(format!(
                        "layer_types has {} entries but num_hidden_layers is {layers}",
                        names.len()
                    )));
                }
                names
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(LayerType::Full),
                        "sliding_attention" => Ok(LayerType::Sliding),
                        other => Err(err(format!(
                            "layer_types entry {other:?} is not supported (full_attention, sliding_attention)"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => (family.layer_types)(self, layers).unwrap_or(vec![LayerType::Full; layers]),
        };
        let window = match (family.sliding_window)(self) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(w) if w > 0 => Some(w as usize),
                _ => return Err(err(format!("invalid sliding_window {n}"))),
            },
            Some(v) => return Err(err(format!("invalid sliding_window {v}"))),
        };
        let full = AttentionKind {
            window: AttentionWindow::Full,
            rope: self.rope(LayerType::Full, family, err)?,
        };
        // A sliding layer without a window sees everything (as in transformers), with its own RoPE.
        let sliding = AttentionKind {
            window: window.map_or(AttentionWindow::Full, AttentionWindow::Sliding),
            rope: self.rope(LayerType::Sliding, family, err)?,
        };
        let mut kinds: Vec<AttentionKind> = vec![];
        let mut index = vec![];
        for t in types {
            let kind = if t == LayerType::Full {
                &full
            } else {
                &sliding
            };
            let i = match kinds.iter().position(|k| k == kind) {
                Some(i) => i,
                None => {
                    kinds.push(kind.clone());
                    kinds.len() - 1
                }
            };
            index.push(i);
        }
        Ok((kinds, index))
    }

    /// The RoPE of one layer kind. transformers 5 writes `rope_parameters` flat or, for families
    /// whose layer kinds differ, keyed by layer type; older files keep `rope_theta` top-level and
    /// the scaling in `rope_scaling` (which then applies to full layers only where the family has
    /// a local base, as Gemma 3's `rope_local_base_freq`).
    fn rope(
        &self,
        kind: LayerType,
        family: &Family,
        err: &dyn Fn(String) -> Error,
    ) -> Result<RopeConfig> {
        let kind_key = match kind {
            LayerType::Full => "full_attention",
            LayerType::Sliding => "sliding_attention",
        };
        let object = |v: &Value| -> Result<Option<serde_json::Map<String, Value>>> {
            match v {
                Value::Object(p) => Ok(Some(p.clone())),
                Value::Null => Ok(None),
                v => Err(err(format!(
                    "rope_parameters / rope_scaling must be an object, got {v}"
                ))),
            }
        };
        let mut params = match &self.rope_parameters {
            Some(v) => object(v)?,
            None => None,
        };
        if let Some(p) = &params
            && p.values().all(Value::is_object)
            && !p.is_empty()
        {
            params = match p.get(kind_key) {
                Some(v) => object(v)?,
                None => {
                    return Err(err(format!(
                        "rope_parameters has no entry for {kind_key} (it has {:?})",
                        p.keys().collect::<Vec<_>>()
                    )));
                }
            };
        } else if params.is_none() {
            let local = kind == LayerType::Sliding && family.local_rope_base_key.is_some();
            if let Some(key) = family.local_rope_base_key.filter(|_| local) {
                let theta = match self.extra.get(key) {
                    None | Some(Value::Null) => 10000.0,
                    Some(v) => v
                        .as_f64()
                        .ok_or_else(|| err(format!("`{key}` must be a number, got {v}")))?,
                };
                return checked_rope(theta, serde_json::Map::new(), err);
            }
            params = match &self.rope_scaling {
                Some(v) => object(v)?,
                None => None,
            };
        }
        let params = params.unwrap_or_default();
        let theta = params
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        checked_rope(theta, params, err)
    }
}

/// The RoPE of `params` (the scaling keys) with base `theta`, checked.
fn checked_rope(
    theta: f64,
    params: serde_json::Map<String, Value>,
    err: &dyn Fn(String) -> Error,
) -> Result<RopeConfig> {
    let get = |key: &str| params.get(key).and_then(Value::as_f64);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(err(format!(
            "rope_theta must be a positive number, got {theta}"
        )));
    }
    if let Some(f) = get("partial_rotary_factor")
        && f != 1.0
    {
        return Err(err(format!("partial_rotary_factor {f} is not supported")));
    }
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor =
        |name: &str| get(name).ok_or_else(|| err(format!("RoPE type {kind:?} needs `{name}`")));
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: factor("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor("factor")?,
            low_freq_factor: factor("low_freq_factor")?,
            high_freq_factor: factor("high_freq_factor")?,
            original_max_position_embeddings: factor("original_max_position_embeddings")?,
        },
        other => {
            return Err(err(format!(
                "RoPE type {other:?} is not supported (supported: default, linear, llama3)"
            )));
        }
    };
    Ok(RopeConfig { theta, scaling })
}

impl ModelConfig {
    /// Loads `config.json` (and eos ids from `generation_config.json` when present) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let raw = HfConfig::from_file(&path)?;
        let gen_path = dir.join("generation_config.json");
        let mut extra = vec![];
        if gen_path.exists() {
            let text = crate::fsutil::read_text(&gen_path).map_err(|e| Error::io(&gen_path, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: gen_path.clone(),
                source,
            })?;
            if let Some(eos) = v.get("eos_token_id") {
                extra = token_ids(eos).ok_or_else(|| Error::Config {
                    path: gen_path.clone(),
                    message: format!("eos_token_id must be an int or a list of ints, got {eos}"),
                })?;
            }
        }
        raw.resolve(&path, &extra)
    }

    /// Number of query heads sharing one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// The sliding window of the sliding layers, if any layer slides.
    pub fn sliding_window(&self) -> Option<usize> {
        self.attention.iter().find_map(|k| match k.window {
            AttentionWindow::Sliding(w) => Some(w),
            AttentionWindow::Full => None,
        })
    }

    /// Layer `l`'s attention kind.
    pub fn layer_attention(&self, l: usize) -> &AttentionKind {
        &self.attention[self.layer_kinds[l]]
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

//! Model configuration: `config.json` is read by serde into [`HfConfig`] (every field as Hugging Face
//! writes it, optional where files differ) and resolved into [`ModelConfig`], which has no `Option`s,
//! so the model code never guesses a default.
//!
//! Both config styles are understood: top-level `rope_theta` / `rope_scaling` (transformers < 5) and
//! `rope_parameters` (transformers 5).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Values of `model_type` that wgspin runs.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

/// Architecture family; they share one decoder and differ in biases and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

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

/// Resolved model configuration: every value the model needs, no defaults left to guess.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
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
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (always on for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias` for Llama; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub window: AttentionWindow,
    /// Token ids that end a response (config.json and generation_config.json together).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written in config.json (`"float32"` when absent).
    pub torch_dtype: String,
}

/// `config.json` as Hugging Face writes it.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    pub rope_parameters: Option<Value>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub sliding_window: Option<Value>,
    pub use_sliding_window: Option<bool>,
    pub eos_token_id: Option<Value>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
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
        let model_type = self
            .model_type
            .clone()
            .ok_or_else(|| err("missing `model_type`".into()))?;
        let arch = match model_type.as_str() {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            _ => {
                return Err(Error::UnsupportedModel {
                    path: path.to_path_buf(),
                    model_type,
                });
            }
        };
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(err(format!(
                "hidden_act {act:?} is not supported (wgspin's SwiGLU MLP uses silu)"
            )));
        }
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match self.head_dim {
            Some(d) if d > 0 => d,
            _ => {
                if hidden_size % num_heads != 0 {
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
        let rope = self.rope(&err)?;
        let window = match (arch, &self.sliding_window, self.use_sliding_window) {
            // Qwen2 ships a sliding_window value but only uses it when use_sliding_window is true.
            (Arch::Qwen2, _, Some(false) | None) => AttentionWindow::Full,
            (_, Some(Value::Number(n)), _) => match n.as_u64() {
                Some(w) if w > 0 => AttentionWindow::Sliding(w as usize),
                _ => return Err(err(format!("invalid sliding_window {n}"))),
            },
            (_, None | Some(Value::Null), _) => AttentionWindow::Full,
            (_, Some(v), _) => return Err(err(format!("invalid sliding_window {v}"))),
        };
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
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(err(format!(
                "rms_norm_eps must be a positive number, got {rms_norm_eps}"
            )));
        }
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps,
            rope,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch != Arch::Qwen2 && attention_bias,
            mlp_bias: arch != Arch::Qwen2 && self.mlp_bias.unwrap_or(false),
            window,
            eos_token_ids,
            torch_dtype: self
                .dtype
                .clone()
                .or_else(|| self.torch_dtype.clone())
                .unwrap_or_else(|| "float32".into()),
        })
    }

    fn rope(&self, err: &dyn Fn(String) -> Error) -> Result<RopeConfig> {
        // transformers 5 folds rope_theta into rope_parameters; older files keep it top-level.
        let params = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(Value::Object(p)), _) => Some(p.clone()),
            (_, Some(Value::Object(p))) => Some(p.clone()),
            (None | Some(Value::Null), None | Some(Value::Null)) => None,
            (Some(v), _) | (_, Some(v)) => {
                return Err(err(format!(
                    "rope_parameters / rope_scaling must be an object, got {v}"
                )));
            }
        };
        let params = params.unwrap_or_default();
        let get = |key: &str| params.get(key).and_then(Value::as_f64);
        let theta = get("rope_theta").or(self.rope_theta).unwrap_or(10000.0);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: &str) -> Result<ModelConfig> {
        let raw: HfConfig = serde_json::from_str(json).unwrap();
        raw.resolve(Path::new("config.json"), &[])
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn old_style_rope_and_defaults() {
        let c = resolve(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500.0,
                "rope_scaling": {{"type": "linear", "factor": 4.0}}, "eos_token_id": [3, 4]}}"#
        ))
        .unwrap();
        assert_eq!(c.rope.theta, 500.0);
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(c.num_kv_heads, 2);
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert!(!c.qkv_bias && !c.tie_word_embeddings);
    }

    #[test]
    fn transformers5_rope_parameters() {
        let c = resolve(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "num_key_value_heads": 1, "head_dim": 6,
                "rope_parameters": {{"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
                "eos_token_id": 7, "sliding_window": 4096}}"#
        ))
        .unwrap();
        assert_eq!(c.rope.theta, 1e6);
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!((c.num_kv_heads, c.head_dim, c.group_size()), (1, 6, 2));
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.window, AttentionWindow::Full);
        assert_eq!(c.eos_token_ids, vec![7]);
    }

    #[test]
    fn mistral_sliding_window() {
        let c = resolve(&format!(
            r#"{{"model_type": "mistral", {BASE}, "sliding_window": 4096}}"#
        ))
        .unwrap();
        assert_eq!(c.window, AttentionWindow::Sliding(4096));
    }

    #[test]
    fn unsupported_rope_type_is_named() {
        let e = resolve(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2.0}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"yarn\"") && e.contains("llama3"), "{e}");
    }

    #[test]
    fn unsupported_model_type_lists_supported() {
        let e = resolve(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gpt2") && e.contains("llama, mistral, qwen2"),
            "{e}"
        );
    }

    #[test]
    fn bad_head_grouping_is_an_error() {
        let e = resolve(&format!(
            r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }
}

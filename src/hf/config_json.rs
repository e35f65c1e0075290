//! `config.json` as Hugging Face writes it, every field optional where files differ: what the
//! family descriptions (`arch/`) read their switches from and `config.rs` resolves.

use serde::Deserialize;
use serde_json::Value;

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
    pub layer_types: Option<Vec<String>>,
    pub eos_token_id: Option<Value>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    /// Every other key: what the family files read (`attention_bias`, `sliding_window`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

//! The one place that knows Hugging Face tensor names of the decoder families (`hf/arch/`), and
//! the shape each tensor must have for a given config. Every family names its tensors the same
//! way; a config says which of them it has.

use crate::hf::config::ModelConfig;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// The tensors of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    InputNorm,
    /// The norm before the MLP, or, with sandwich norms, the one on the attention output.
    PostAttentionNorm,
    /// Sandwich norms only: before the MLP, and on its output.
    PreFeedforwardNorm,
    PostFeedforwardNorm,
    /// Per-head norms of q and k (before RoPE).
    QNorm,
    KNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    OBias,
    Gate,
    Up,
    Down,
    GateBias,
    UpBias,
    DownBias,
}

impl LayerTensor {
    fn suffix(self) -> &'static str {
        match self {
            LayerTensor::InputNorm => "input_layernorm.weight",
            LayerTensor::PostAttentionNorm => "post_attention_layernorm.weight",
            LayerTensor::PreFeedforwardNorm => "pre_feedforward_layernorm.weight",
            LayerTensor::PostFeedforwardNorm => "post_feedforward_layernorm.weight",
            LayerTensor::QNorm => "self_attn.q_norm.weight",
            LayerTensor::KNorm => "self_attn.k_norm.weight",
            LayerTensor::Q => "self_attn.q_proj.weight",
            LayerTensor::K => "self_attn.k_proj.weight",
            LayerTensor::V => "self_attn.v_proj.weight",
            LayerTensor::O => "self_attn.o_proj.weight",
            LayerTensor::QBias => "self_attn.q_proj.bias",
            LayerTensor::KBias => "self_attn.k_proj.bias",
            LayerTensor::VBias => "self_attn.v_proj.bias",
            LayerTensor::OBias => "self_attn.o_proj.bias",
            LayerTensor::Gate => "mlp.gate_proj.weight",
            LayerTensor::Up => "mlp.up_proj.weight",
            LayerTensor::Down => "mlp.down_proj.weight",
            LayerTensor::GateBias => "mlp.gate_proj.bias",
            LayerTensor::UpBias => "mlp.up_proj.bias",
            LayerTensor::DownBias => "mlp.down_proj.bias",
        }
    }
}

/// Full name of a layer tensor, e.g. `model.layers.3.self_attn.q_proj.weight`.
pub fn layer(index: usize, tensor: LayerTensor) -> String {
    format!("model.layers.{index}.{}", tensor.suffix())
}

/// Expected shape of a layer tensor (Hugging Face stores linear weights as `[out, in]`).
pub fn layer_shape(cfg: &ModelConfig, tensor: LayerTensor) -> Vec<usize> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_heads * cfg.head_dim;
    let kv = cfg.num_kv_heads * cfg.head_dim;
    match tensor {
        LayerTensor::InputNorm
        | LayerTensor::PostAttentionNorm
        | LayerTensor::PreFeedforwardNorm
        | LayerTensor::PostFeedforwardNorm => vec![h],
        LayerTensor::QNorm | LayerTensor::KNorm => vec![cfg.head_dim],
        LayerTensor::Q => vec![q, h],
        LayerTensor::K | LayerTensor::V => vec![kv, h],
        LayerTensor::O => vec![h, q],
        LayerTensor::QBias => vec![q],
        LayerTensor::KBias | LayerTensor::VBias => vec![kv],
        LayerTensor::OBias | LayerTensor::DownBias => vec![h],
        LayerTensor::Gate | LayerTensor::Up => vec![i, h],
        LayerTensor::Down => vec![h, i],
        LayerTensor::GateBias | LayerTensor::UpBias => vec![i],
    }
}

/// The layer tensors a config has, in a stable order: the norms, then each projection's weight
/// followed by its bias where the config has one, the q/k norms after the attention projections
/// (the order of [`crate::model::named::params_mut`]).
pub fn layer_tensors(cfg: &ModelConfig) -> Vec<LayerTensor> {
    use LayerTensor::*;
    let mut t = vec![InputNorm, PostAttentionNorm];
    if cfg.sandwich_norms {
        t.extend([PreFeedforwardNorm, PostFeedforwardNorm]);
    }
    let mut linear = |w, b, bias: bool| {
        t.push(w);
        if bias {
            t.push(b);
        }
    };
    linear(Q, QBias, cfg.qkv_bias);
    linear(K, KBias, cfg.qkv_bias);
    linear(V, VBias, cfg.qkv_bias);
    linear(O, OBias, cfg.o_bias);
    if cfg.qk_norm {
        linear(QNorm, KNorm, true);
    }
    linear(Gate, GateBias, cfg.mlp_bias);
    linear(Up, UpBias, cfg.mlp_bias);
    linear(Down, DownBias, cfg.mlp_bias);
    t
}

/// Every tensor name and shape a checkpoint of this config holds, in a stable order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut all = vec![(EMBED.to_string(), vec![cfg.vocab_size, cfg.hidden_size])];
    for l in 0..cfg.num_layers {
        for t in layer_tensors(cfg) {
            all.push((layer(l, t), layer_shape(cfg, t)));
        }
    }
    all.push((FINAL_NORM.to_string(), vec![cfg.hidden_size]));
    if !cfg.tie_word_embeddings {
        all.push((LM_HEAD.to_string(), vec![cfg.vocab_size, cfg.hidden_size]));
    }
    all
}

/// Names that checkpoints may carry but that are not weights (recomputed buffers), or that a tied
/// model may store redundantly.
pub fn is_ignorable(cfg: &ModelConfig, name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == LM_HEAD)
}

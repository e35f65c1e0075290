//! Mistral: Llama with a sliding window on every layer. llama.cpp calls it `llama` and does not
//! record the window.

use super::{Activation, Family, GgufArch, NormKind};

pub const FAMILY: Family = Family {
    model_type: "mistral",
    class: "MistralForCausalLM",
    norm: NormKind::Scale,
    activation_keys: &["hidden_act"],
    default_activation: Activation::Silu,
    qk_norm: false,
    sandwich_norms: false,
    embed_scale: false,
    default_eps: 1e-6,
    biases: super::llama_biases,
    layer_types: |cfg, layers| {
        (super::plain_window)(cfg)
            .filter(|w| !w.is_null())
            .map(|_| vec![super::LayerType::Sliding; layers])
    },
    sliding_window: super::plain_window,
    local_rope_base_key: None,
    attn_scale_key: None,
    refused: &[],
    gguf: Some(GgufArch {
        name: "llama",
        permute_qk: true,
        norm_shift: 0.0,
        fixed: None,
    }),
};

//! Qwen2 / Qwen2.5: biases on q, k and v (never on o or the MLP).

use super::{Activation, Biases, Family, GgufArch, NormKind};

pub const FAMILY: Family = Family {
    model_type: "qwen2",
    class: "Qwen2ForCausalLM",
    norm: NormKind::Scale,
    activation_keys: &["hidden_act"],
    default_activation: Activation::Silu,
    qk_norm: false,
    sandwich_norms: false,
    embed_scale: false,
    default_eps: 1e-6,
    biases: |_| Biases {
        qkv: true,
        o: false,
        mlp: false,
    },
    layer_types: super::qwen_layer_types,
    sliding_window: super::qwen_window,
    local_rope_base_key: None,
    attn_scale_key: None,
    refused: &[],
    gguf: Some(GgufArch {
        name: "qwen2",
        permute_qk: false,
        norm_shift: 0.0,
        fixed: None,
    }),
};

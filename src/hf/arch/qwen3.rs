//! Qwen3 (dense): Qwen2 without the q/k/v biases (`attention_bias` instead), an RMSNorm over each
//! head's q and k before RoPE, and a `head_dim` of its own (not hidden / heads).

use super::{Activation, Biases, Family, GgufArch, NormKind};

pub const FAMILY: Family = Family {
    model_type: "qwen3",
    class: "Qwen3ForCausalLM",
    norm: NormKind::Scale,
    activation_keys: &["hidden_act"],
    default_activation: Activation::Silu,
    qk_norm: true,
    sandwich_norms: false,
    embed_scale: false,
    default_eps: 1e-6,
    biases: |cfg| {
        let attention = super::flag(cfg, "attention_bias");
        Biases {
            qkv: attention,
            o: attention,
            mlp: false,
        }
    },
    layer_types: super::qwen_layer_types,
    sliding_window: super::qwen_window,
    local_rope_base_key: None,
    attn_scale_key: None,
    refused: &[],
    gguf: Some(GgufArch {
        name: "qwen3",
        permute_qk: false,
        norm_shift: 0.0,
        fixed: None,
    }),
};

//! Llama (1, 2, 3, 3.1, 3.2; SmolLM2 is one): the reference decoder.

use super::{Activation, Family, GgufArch, NormKind};

pub const FAMILY: Family = Family {
    model_type: "llama",
    class: "LlamaForCausalLM",
    norm: NormKind::Scale,
    activation_keys: &["hidden_act"],
    default_activation: Activation::Silu,
    qk_norm: false,
    sandwich_norms: false,
    embed_scale: false,
    default_eps: 1e-6,
    default_tied: false,
    biases: super::llama_biases,
    layer_types: super::all_full,
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

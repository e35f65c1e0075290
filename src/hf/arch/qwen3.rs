//! Qwen3 (dense): Qwen2 without the q/k/v biases (`attention_bias` instead), an RMSNorm over each
//! head's q and k before RoPE, and a `head_dim` of its own (not hidden / heads).

use super::{Family, GgufArch};

pub const FAMILY: Family = Family {
    model_type: "qwen3",
    class: "Qwen3ForCausalLM",
    qk_norm: true,
    biases: super::attention_biases,
    gguf: Some(GgufArch {
        name: "qwen3",
        permute_qk: false,
        norm_shift: 0.0,
        fixed: None,
    }),
    ..super::qwen2::FAMILY
};

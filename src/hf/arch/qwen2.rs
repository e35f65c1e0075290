//! Qwen2 / Qwen2.5: Llama with biases on q, k and v (never on o or the MLP), and sliding layers
//! only with `use_sliding_window`.

use super::{Biases, Family, GgufArch};

pub const FAMILY: Family = Family {
    model_type: "qwen2",
    class: "Qwen2ForCausalLM",
    biases: |_| Biases {
        qkv: true,
        o: false,
        mlp: false,
    },
    layer_types: super::qwen_layer_types,
    sliding_window: super::qwen_window,
    gguf: Some(GgufArch {
        name: "qwen2",
        permute_qk: false,
        norm_shift: 0.0,
        fixed: None,
    }),
    ..super::llama::FAMILY
};

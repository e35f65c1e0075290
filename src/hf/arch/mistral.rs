//! Mistral: Llama with a sliding window on every layer. llama.cpp calls it `llama` and does not
//! record the window.

use super::{Family, LayerType};

pub const FAMILY: Family = Family {
    model_type: "mistral",
    class: "MistralForCausalLM",
    layer_types: |cfg, layers| {
        (super::plain_window)(cfg)
            .filter(|w| !w.is_null())
            .map(|_| vec![LayerType::Sliding; layers])
    },
    ..super::llama::FAMILY
};

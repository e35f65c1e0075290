//! The seven projections of a decoder layer by their Hugging Face module names (what LoRA's
//! `target_modules` name), and a model's projections listed by target: what the named-parameter
//! view and LoRA both walk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Transformer;
use super::layers::Linear;
use crate::hf::names::{self as hf_names, LayerTensor};

/// A projection an adapter can wrap, by its Hugging Face module name (PEFT's `target_modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The Hugging Face module name (`q_proj`, …, `down_proj`).
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The weight tensor this target's adapter sits on.
    pub fn weight(self) -> LayerTensor {
        match self {
            Target::Q => LayerTensor::Q,
            Target::K => LayerTensor::K,
            Target::V => LayerTensor::V,
            Target::O => LayerTensor::O,
            Target::Gate => LayerTensor::Gate,
            Target::Up => LayerTensor::Up,
            Target::Down => LayerTensor::Down,
        }
    }

    /// `model.layers.L.self_attn.q_proj` and the like: the module path PEFT keys extend.
    pub fn module_path(self, layer: usize) -> String {
        let w = hf_names::layer(layer, self.weight());
        w.strip_suffix(".weight").unwrap_or(&w).to_string()
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let key = s.trim().strip_suffix("_proj").unwrap_or(s.trim());
        Target::ALL
            .into_iter()
            .find(|t| t.module_name().strip_suffix("_proj") == Some(key))
            .ok_or_else(|| {
                format!(
                    "unknown LoRA target {s:?}; choose from q,k,v,o,gate,up,down (or q_proj, …)"
                )
            })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name())
    }
}

/// The wrapped projections of a model, with their target kind and layer.
pub fn targets_mut(m: &mut Transformer) -> Vec<(usize, Target, &mut Linear)> {
    let mut out = vec![];
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let (a, f) = (&mut layer.attn, &mut layer.mlp);
        out.push((l, Target::Q, &mut a.q));
        out.push((l, Target::K, &mut a.k));
        out.push((l, Target::V, &mut a.v));
        out.push((l, Target::O, &mut a.o));
        out.push((l, Target::Gate, &mut f.gate));
        out.push((l, Target::Up, &mut f.up));
        out.push((l, Target::Down, &mut f.down));
    }
    out
}

/// Whether any projection of `m` carries an adapter.
pub fn has_adapters(m: &Transformer) -> bool {
    m.layers.iter().any(|l| {
        let (a, f) = (&l.attn, &l.mlp);
        [&a.q, &a.k, &a.v, &a.o, &f.gate, &f.up, &f.down]
            .iter()
            .any(|lin| lin.lora.is_some())
    })
}

//! The one place that knows llama.cpp's GGUF tensor names (`token_embd.weight`,
//! `blk.N.attn_q.weight`, ...) and maps them to and from the Hugging Face names of
//! [`crate::hf::names`], plus the q/k row permutation llama.cpp applies for arch `llama`. A model
//! with sandwich norms (Gemma) names its norms differently: `ffn_norm` is then the norm before
//! the MLP (HF `pre_feedforward_layernorm`), and the attention and MLP outputs' norms are
//! `post_attention_norm` and `post_ffw_norm`.

use crate::hf::names::{self as hf_names, LayerTensor};

pub const TOKEN_EMBD: &str = "token_embd.weight";
pub const OUTPUT_NORM: &str = "output_norm.weight";
pub const OUTPUT: &str = "output.weight";
/// Llama 3.1-style RoPE frequency factors (one per rotated pair).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

const LAYER_TENSORS: &[(LayerTensor, &str)] = &[
    (LayerTensor::InputNorm, "attn_norm.weight"),
    (LayerTensor::PostAttentionNorm, "ffn_norm.weight"),
    (LayerTensor::QNorm, "attn_q_norm.weight"),
    (LayerTensor::KNorm, "attn_k_norm.weight"),
    (LayerTensor::Q, "attn_q.weight"),
    (LayerTensor::K, "attn_k.weight"),
    (LayerTensor::V, "attn_v.weight"),
    (LayerTensor::O, "attn_output.weight"),
    (LayerTensor::QBias, "attn_q.bias"),
    (LayerTensor::KBias, "attn_k.bias"),
    (LayerTensor::VBias, "attn_v.bias"),
    (LayerTensor::OBias, "attn_output.bias"),
    (LayerTensor::Gate, "ffn_gate.weight"),
    (LayerTensor::Up, "ffn_up.weight"),
    (LayerTensor::Down, "ffn_down.weight"),
    (LayerTensor::GateBias, "ffn_gate.bias"),
    (LayerTensor::UpBias, "ffn_up.bias"),
    (LayerTensor::DownBias, "ffn_down.bias"),
];

/// The norms of a layer with sandwich norms (they replace `ffn_norm`'s meaning above).
const SANDWICH_NORMS: &[(LayerTensor, &str)] = &[
    (LayerTensor::PostAttentionNorm, "post_attention_norm.weight"),
    (LayerTensor::PreFeedforwardNorm, "ffn_norm.weight"),
    (LayerTensor::PostFeedforwardNorm, "post_ffw_norm.weight"),
];

/// The layer table of a model with (`sandwich`) or without sandwich norms.
fn table(sandwich: bool) -> Vec<(LayerTensor, &'static str)> {
    if !sandwich {
        return LAYER_TENSORS.to_vec();
    }
    let mut t: Vec<_> = LAYER_TENSORS
        .iter()
        .copied()
        .filter(|(tensor, _)| *tensor != LayerTensor::PostAttentionNorm)
        .collect();
    t.extend_from_slice(SANDWICH_NORMS);
    t
}

/// A GGUF tensor name resolved to what it is in the Hugging Face layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Embed,
    FinalNorm,
    LmHead,
    Layer(usize, LayerTensor),
}

impl Resolved {
    pub fn hf_name(self) -> String {
        match self {
            Resolved::Embed => hf_names::EMBED.into(),
            Resolved::FinalNorm => hf_names::FINAL_NORM.into(),
            Resolved::LmHead => hf_names::LM_HEAD.into(),
            Resolved::Layer(i, t) => hf_names::layer(i, t),
        }
    }

    /// The GGUF name in a model with or without sandwich norms.
    pub fn gguf_name(self, sandwich: bool) -> String {
        match self {
            Resolved::Embed => TOKEN_EMBD.into(),
            Resolved::FinalNorm => OUTPUT_NORM.into(),
            Resolved::LmHead => OUTPUT.into(),
            Resolved::Layer(i, t) => layer(i, t, sandwich),
        }
    }

    /// Whether the tensor is a norm's weight (what llama.cpp's gemma3 stores as `1 + w`).
    pub fn is_norm(self) -> bool {
        use LayerTensor::*;
        match self {
            Resolved::FinalNorm => true,
            Resolved::Layer(_, t) => matches!(
                t,
                InputNorm
                    | PostAttentionNorm
                    | PreFeedforwardNorm
                    | PostFeedforwardNorm
                    | QNorm
                    | KNorm
            ),
            _ => false,
        }
    }
}

/// `blk.{index}.{suffix}` for a layer tensor.
pub fn layer(index: usize, tensor: LayerTensor, sandwich: bool) -> String {
    let suffix = table(sandwich)
        .into_iter()
        .find(|(t, _)| *t == tensor)
        .map_or("?", |(_, s)| s);
    format!("blk.{index}.{suffix}")
}

/// The model-wide tensor called `name`, given the names of the embedding, the final norm and the
/// LM head in one naming scheme.
fn model_tensor(name: &str, [embed, final_norm, lm_head]: [&str; 3]) -> Option<Resolved> {
    [
        (embed, Resolved::Embed),
        (final_norm, Resolved::FinalNorm),
        (lm_head, Resolved::LmHead),
    ]
    .into_iter()
    .find_map(|(n, r)| (n == name).then_some(r))
}

/// The index and the rest of a layer tensor's name `{prefix}{index}.{rest}`.
fn layer_index<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (index, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// Resolves a GGUF tensor name of a model with or without sandwich norms; `None` for names
/// wgspin does not know.
pub fn from_gguf(name: &str, sandwich: bool) -> Option<Resolved> {
    if let Some(r) = model_tensor(name, [TOKEN_EMBD, OUTPUT_NORM, OUTPUT]) {
        return Some(r);
    }
    let (index, suffix) = layer_index(name, "blk.")?;
    table(sandwich)
        .into_iter()
        .find(|(_, s)| *s == suffix)
        .map(|(t, _)| Resolved::Layer(index, t))
}

/// Resolves a Hugging Face tensor name (inverse of [`Resolved::hf_name`]).
pub fn from_hf(name: &str) -> Option<Resolved> {
    let model_wide = [hf_names::EMBED, hf_names::FINAL_NORM, hf_names::LM_HEAD];
    if let Some(r) = model_tensor(name, model_wide) {
        return Some(r);
    }
    let (index, _) = layer_index(name, "model.layers.")?;
    table(true)
        .into_iter()
        .chain(LAYER_TENSORS.iter().copied())
        .map(|(t, _)| t)
        .find(|t| hf_names::layer(index, *t) == name)
        .map(|t| Resolved::Layer(index, t))
}

/// Number of heads whose rows llama.cpp permutes in this tensor (arch `llama` only): q rows per
/// query head, k rows per key/value head, and the matching biases.
pub fn permuted_heads(r: Resolved, num_heads: usize, num_kv_heads: usize) -> Option<usize> {
    match r {
        Resolved::Layer(_, LayerTensor::Q | LayerTensor::QBias) => Some(num_heads),
        Resolved::Layer(_, LayerTensor::K | LayerTensor::KBias) => Some(num_kv_heads),
        _ => None,
    }
}

/// Reorders the rows of a `[rows, cols]` (or `[rows]`) tensor between the Hugging Face RoPE layout
/// (per head: first halves, then second halves of the rotated pairs) and llama.cpp's interleaved
/// one (pairs adjacent). `to_gguf` applies convert_hf_to_gguf.py's `permute`; otherwise its inverse.
/// `None` when the rows do not split into `heads` heads of even size.
pub fn permute_rows(data: &[f32], rows: usize, heads: usize, to_gguf: bool) -> Option<Vec<f32>> {
    if heads == 0
        || rows == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || !data.len().is_multiple_of(rows.max(1))
    {
        return None;
    }
    let cols = data.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // HF row: h, j-th half, i-th pair; GGUF row: h, i-th pair, j-th element.
                let hf = h * head_dim + j * half + i;
                let gg = h * head_dim + 2 * i + j;
                let (src, dst) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let round_trip = |name: &str, sandwich: bool| {
            let r = from_gguf(name, sandwich).unwrap();
            assert_eq!(r.gguf_name(sandwich), name);
            assert_eq!(from_hf(&r.hf_name()), Some(r));
        };
        for name in [
            "token_embd.weight",
            "output.weight",
            "blk.12.attn_q.weight",
            "blk.0.ffn_down.weight",
            "blk.3.attn_k.bias",
        ] {
            round_trip(name, false);
        }
        assert_eq!(
            from_gguf("blk.2.attn_v.weight", false).unwrap().hf_name(),
            "model.layers.2.self_attn.v_proj.weight"
        );
        assert_eq!(from_gguf("blk.x.attn_v.weight", false), None);
        assert_eq!(from_gguf("rope_freqs.weight", false), None);
        // Sandwich norms (Gemma): ffn_norm is the norm before the MLP.
        let pre = |s| from_gguf("blk.1.ffn_norm.weight", s).unwrap().hf_name();
        assert_eq!(pre(false), "model.layers.1.post_attention_layernorm.weight");
        assert_eq!(pre(true), "model.layers.1.pre_feedforward_layernorm.weight");
        for name in [
            "blk.1.post_attention_norm.weight",
            "blk.1.post_ffw_norm.weight",
            "blk.1.attn_q_norm.weight",
        ] {
            round_trip(name, true);
        }
    }

    #[test]
    fn permutation_matches_convert_hf_to_gguf() {
        // 2 heads of dim 4, 1 column: HF rows [a0 a1 b0 b1 | ...] → GGUF [a0 b0 a1 b1 | ...].
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let gg = permute_rows(&hf, 8, 2, true).unwrap();
        assert_eq!(gg, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(permute_rows(&gg, 8, 2, false).unwrap(), hf);
        assert!(permute_rows(&hf, 8, 3, true).is_none());
    }
}

//! Grouped-query causal self-attention with a padding mask and a key/value cache.
//!
//! Masking is positional and per row: a query at position `q` sees key slot `j` when the slot is
//! not padding, its position `k ≤ q`, and (with a sliding window `w`) `q − k < w`. That one rule
//! covers right padding (scoring, training), left padding and cached incremental decoding.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::layers::{Linear, RmsNorm};
use super::rope;
use crate::hf::config::AttentionWindow;
use crate::kernels::softmax::masked_softmax;

pub(crate) use crate::kernels::MASKED;

#[derive(Module, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// Per-head norms of q and k before RoPE (Qwen3, Gemma 3), over `head_dim`.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Factor on the scores (`head_dim^-0.5` unless the family says otherwise).
    pub scale: f32,
}

/// Keys and values of one forward pass (the prefill of a batch of prompts), per layer, plus the
/// position of every slot per row. Decoding copies them into a [`super::static_cache::StaticKvCache`].
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per layer: keys and values `[batch, kv_heads, slots, head_dim]`.
    pub(crate) layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// `[batch][slots]`: position of the token in each slot, `None` for padding.
    pub(crate) key_pos: Vec<Vec<Option<usize>>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            key_pos: vec![],
        }
    }

    /// Number of cached slots.
    pub fn len(&self) -> usize {
        self.key_pos.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of rows (sequences) cached.
    pub fn rows(&self) -> usize {
        self.key_pos.len()
    }
}

/// Additive mask `[batch, 1, 1, queries, keys]` (0 or [`MASKED`]) for queries at `query_pos` over
/// keys at `key_pos` (cached slots followed by the new ones).
pub fn build_mask(
    query_pos: &[Vec<Option<usize>>],
    key_pos: &[Vec<Option<usize>>],
    window: AttentionWindow,
    device: &Device,
) -> Tensor<5> {
    let b = query_pos.len();
    let s = query_pos.first().map_or(0, Vec::len);
    let kv = key_pos.first().map_or(0, Vec::len);
    let mut mask = vec![MASKED; b * s * kv];
    for (row, (qs, ks)) in query_pos.iter().zip(key_pos).enumerate() {
        for (i, q) in qs.iter().enumerate() {
            let Some(q) = *q else { continue };
            for (j, k) in ks.iter().enumerate() {
                let visible = match *k {
                    Some(k) if k <= q => match window {
                        AttentionWindow::Full => true,
                        AttentionWindow::Sliding(w) => q - k < w,
                    },
                    _ => false,
                };
                if visible {
                    mask[(row * s + i) * kv + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(mask, [b, 1, 1, s, kv]), device)
}

/// What every layer of one prefill or training forward shares: the RoPE angles of the step's
/// positions and the additive attention mask.
pub struct StepContext<'a> {
    /// `[batch, 1, seq, head_dim/2]`
    pub cos: &'a Tensor<4>,
    /// `[batch, 1, seq, head_dim/2]`
    pub sin: &'a Tensor<4>,
    /// `[batch, 1, 1, seq, cached + seq]`
    pub mask: &'a Tensor<5>,
}

/// A layer's key/value cache slot of the prefill path, `([b, hkv, kv, d], [b, hkv, kv, d])`.
pub type LayerCache<'a> = Option<&'a mut Option<(Tensor<4>, Tensor<4>)>>;

impl Attention {
    /// `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`. Appends this step's keys/values to
    /// `cache`.
    pub fn forward(&self, x: Tensor<3>, ctx: &StepContext, cache: LayerCache) -> Tensor<3> {
        let StepContext { cos, sin, mask } = *ctx;
        let [b, s, _] = x.dims();
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let g = h / hkv;
        let heads = |t: Tensor<3>, n: usize, norm: &Option<RmsNorm>| {
            let t = t.reshape([b, s, n, d]);
            let t = match norm {
                Some(norm) => norm.forward(t),
                None => t,
            };
            t.swap_dims(1, 2)
        };
        let q = heads(self.q.forward(x.clone()), h, &self.q_norm); // [b, h, s, d]
        let k = heads(self.k.forward(x.clone()), hkv, &self.k_norm); // [b, hkv, s, d]
        let v = heads(self.v.forward(x), hkv, &None); // [b, hkv, s, d]
        let q = rope::apply(q, cos, sin);
        let k = rope::apply(k, cos, sin);
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((ck, cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let kv_len = k.dims()[2];
        // Query heads h = kv_head * g + i share kv_head (transformers' repeat_kv), so group them
        // instead of copying keys and values g times.
        let q = q.reshape([b, hkv, g * s, d]);
        let scores = q.matmul(k.swap_dims(2, 3)); // [b, hkv, g*s, kv]
        // Scale, mask and softmax in f32 whatever the compute dtype, as transformers' eager
        // attention upcasts its softmax.
        let scale = self.scale;
        let scores = scores.reshape([b, hkv, g, s, kv_len]);
        let probs = masked_softmax(scores, mask.clone(), scale).reshape([b, hkv, g * s, kv_len]);
        let out = probs.matmul(v); // [b, hkv, g*s, d]
        let out = out
            .reshape([b, h, s, d])
            .swap_dims(1, 2)
            .reshape([b, s, h * d]);
        self.o.forward(out)
    }
}

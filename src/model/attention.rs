//! Grouped-query causal self-attention with a padding mask and a key/value cache.
//!
//! Masking is positional and per row: a query at position `q` sees key slot `j` when the slot is
//! not padding, its position `k ≤ q`, and (with a sliding window `w`) `q − k < w`. That one rule
//! covers right padding (scoring, training), left padding and cached incremental decoding.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::layers::Linear;
use super::rope;
use crate::config::AttentionWindow;

/// Added to the scores of masked keys. Finite, so a fully masked (padding) query row gives a
/// uniform distribution instead of NaN.
const MASKED: f32 = -1.0e9;

#[derive(Module, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Cached keys and values of every layer, plus the position of every cached slot per row.
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

    /// Keeps the rows `keep`, in that order (continuous batching retires finished rows).
    pub fn select_rows(&mut self, keep: &[usize]) {
        if keep.len() == self.rows() && keep.iter().enumerate().all(|(i, &r)| i == r) {
            return;
        }
        self.key_pos = keep.iter().map(|&r| self.key_pos[r].clone()).collect();
        for slot in self.layers.iter_mut() {
            if let Some((k, v)) = slot.take() {
                if keep.is_empty() {
                    continue;
                }
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(keep.iter().map(|&r| r as i32).collect(), [keep.len()]),
                    &k.device(),
                );
                *slot = Some((k.select(0, idx.clone()), v.select(0, idx)));
            }
        }
        if keep.is_empty() {
            self.key_pos.clear();
        }
        self.trim();
    }

    /// Drops leading slots that are padding in every row, so retired long prompts stop costing
    /// attention work.
    pub fn trim(&mut self) {
        let len = self.len();
        let lead = (0..len)
            .take_while(|&j| self.key_pos.iter().all(|r| r[j].is_none()))
            .count();
        if lead == 0 {
            return;
        }
        for r in self.key_pos.iter_mut() {
            r.drain(..lead);
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let [b, h, _, d] = k.dims();
            *k = k.clone().slice([0..b, 0..h, lead..len, 0..d]);
            *v = v.clone().slice([0..b, 0..h, lead..len, 0..d]);
        }
    }

    /// Left-pads every row with `n` empty slots (position `None`, zero keys and values).
    fn pad_left(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for r in self.key_pos.iter_mut() {
            r.splice(0..0, std::iter::repeat_n(None, n));
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let [b, h, _, d] = k.dims();
            let z = Tensor::<4>::zeros([b, h, n, d], &k.device());
            *k = Tensor::cat(vec![z.clone(), k.clone()], 2);
            *v = Tensor::cat(vec![z, v.clone()], 2);
        }
    }

    /// Appends the rows of `other` after this cache's rows, left-padding whichever has fewer slots.
    pub fn append_rows(&mut self, mut other: KvCache) {
        if self.rows() == 0 {
            *self = other;
            return;
        }
        if other.rows() == 0 {
            return;
        }
        let (a, b) = (self.len(), other.len());
        self.pad_left(b.saturating_sub(a));
        other.pad_left(a.saturating_sub(b));
        self.key_pos.append(&mut other.key_pos);
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some((k1, v1)), Some((k2, v2))) => {
                    Some((Tensor::cat(vec![k1, k2], 0), Tensor::cat(vec![v1, v2], 0)))
                }
                (m, t) => m.or(t),
            };
        }
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

impl Attention {
    /// `x`: `[batch, seq, hidden]`; `cos`/`sin`: `[batch, 1, seq, head_dim/2]`;
    /// `mask`: `[batch, 1, 1, seq, cached + seq]`. Appends this step's keys/values to `cache`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<5>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let g = h / hkv;
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        let q = heads(self.q.forward(x.clone()), h); // [b, h, s, d]
        let k = heads(self.k.forward(x.clone()), hkv); // [b, hkv, s, d]
        let v = heads(self.v.forward(x), hkv); // [b, hkv, s, d]
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
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (d as f64).sqrt()); // [b, hkv, g*s, kv]
        let scores = scores.reshape([b, hkv, g, s, kv_len]) + mask.clone();
        let probs = softmax(scores, 4).reshape([b, hkv, g * s, kv_len]);
        let out = probs.matmul(v); // [b, hkv, g*s, d]
        let out = out
            .reshape([b, h, s, d])
            .swap_dims(1, 2)
            .reshape([b, s, h * d]);
        self.o.forward(out)
    }
}

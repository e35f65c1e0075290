//! Grouped-query causal self-attention with a padding mask and a key/value cache.
//!
//! Masking is positional and per row: a query at position `q` sees key slot `j` when the slot is
//! not padding, its position `k ≤ q`, and (with a sliding window `w`) `q − k < w`. That one rule
//! covers right padding (scoring, training), left padding and cached incremental decoding. The
//! attention itself is [`flash_attention`]: it masks by the positions, keeps only each query's
//! log-sum-exp for backward (memory linear in the sequence), and gives a padding query (one that
//! sees no key) a zero output, which nothing reads.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::layers::{Linear, RmsNorm};
use super::rope;
use crate::hf::config::AttentionWindow;
use crate::kernels::flash_attention::flash_attention;

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

/// What every layer of one prefill or training forward shares: the RoPE angles of the step's
/// positions, and the positions of its queries and keys, which the attention op masks by.
pub struct StepContext<'a> {
    /// `[batch, 1, seq, head_dim/2]`
    pub cos: &'a Tensor<4>,
    /// `[batch, 1, seq, head_dim/2]`
    pub sin: &'a Tensor<4>,
    /// `[batch, seq]`: each query's position, −1 for padding.
    pub qpos: &'a Tensor<2, Int>,
    /// `[batch, cached + seq]`: each key slot's position, −1 for padding.
    pub kpos: &'a Tensor<2, Int>,
    /// The layer kind's sliding window, 0 for none (the attention op's convention).
    pub window: u32,
}

/// `[batch, len]` positions on `device`, −1 for padding (the attention op's convention).
pub fn positions_tensor(pos: &[Vec<Option<usize>>], device: &Device) -> Tensor<2, Int> {
    let b = pos.len();
    let len = pos.first().map_or(0, Vec::len);
    let flat: Vec<i32> = pos
        .iter()
        .flatten()
        .map(|p| p.map_or(-1, |p| i32::try_from(p).unwrap_or(i32::MAX)))
        .collect();
    Tensor::from_data(TensorData::new(flat, [b, len]), device)
}

/// `window` as the attention op takes it: its width, 0 for none.
pub fn window_width(window: AttentionWindow) -> u32 {
    match window {
        AttentionWindow::Full => 0,
        AttentionWindow::Sliding(w) => u32::try_from(w).unwrap_or(u32::MAX),
    }
}

/// A layer's key/value cache slot of the prefill path, `([b, hkv, kv, d], [b, hkv, kv, d])`.
pub type LayerCache<'a> = Option<&'a mut Option<(Tensor<4>, Tensor<4>)>>;

impl Attention {
    /// `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`. Appends this step's keys/values to
    /// `cache`.
    pub fn forward(&self, x: Tensor<3>, ctx: &StepContext, cache: LayerCache) -> Tensor<3> {
        let StepContext {
            cos,
            sin,
            qpos,
            kpos,
            window,
        } = *ctx;
        let [b, s, _] = x.dims();
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // A projection split into heads, [b, s, n, d], normed per head where the family says.
        let heads = |t: Tensor<3>, n: usize, norm: &Option<RmsNorm>| {
            let t = t.reshape([b, s, n, d]);
            match norm {
                Some(norm) => norm.forward(t),
                None => t,
            }
        };
        let q = heads(self.q.forward(x.clone()), h, &self.q_norm); // [b, s, h, d]
        let k = heads(self.k.forward(x.clone()), hkv, &self.k_norm); // [b, s, hkv, d]
        // RoPE moves q's and k's heads to [b, h, s, d] itself: read in place, and the gradient
        // handed back in the projection's layout (no copy either way).
        let q = rope::apply_heads(q, cos, sin); // [b, h, s, d]
        let k = rope::apply_heads(k, cos, sin); // [b, hkv, s, d]
        let v = heads(self.v.forward(x), hkv, &None).swap_dims(1, 2); // [b, hkv, s, d]
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
        // Query heads h = kv_head * g + i share kv_head (transformers' repeat_kv): the op reads
        // each kv head once for its g query heads. Scores, softmax and sums in f32 whatever the
        // compute dtype, as transformers' eager attention upcasts its softmax; nothing [s, kv]
        // is kept for backward.
        let (out, _lse) = flash_attention(q, k, v, qpos.clone(), kpos.clone(), window, self.scale);
        let out = out.swap_dims(1, 2).reshape([b, s, h * d]); // [b, s, h*d]
        self.o.forward(out)
    }
}

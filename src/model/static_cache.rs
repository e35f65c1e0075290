//! The decode path: a preallocated KV cache and one cached step for every slot of the batch.
//!
//! Every layer's keys and values live in one `[slots, kv_heads, capacity, head_dim]` tensor each,
//! allocated once per generation run and written in place (`scatter_nd`) at each row's position.
//! A finished row's slot is refilled by the next prompt without touching the other slots. The
//! shapes burn sees are fixed for the run (the attended length moves in buckets of
//! [`LEN_BUCKET`]), so nothing is re-autotuned or recompiled after warm-up.
//!
//! Nothing of a step is built on the host: token ids and positions are device tensors (the
//! sampler's output feeds the next step), RoPE angles are gathered by position from a table
//! uploaded once, and attention masks by position on the device: inside the WGSL decode-attention
//! kernel on wgpu (one launch per layer), as a mask tensor for its burn-ops twin elsewhere.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::attention::{Attention, KvCache};
use super::{DecoderLayer, Transformer};
use crate::config::AttentionWindow;
use crate::kernels::attention;

/// The attended key length is the longest running row rounded up to this, so a step's shapes
/// change once every `LEN_BUCKET` tokens instead of every token.
pub const LEN_BUCKET: usize = 64;

/// Capacities are multiples of this, so runs with similar lengths share compiled shapes.
pub const CAPACITY_BUCKET: usize = 256;

/// The capacity a run needs: the longest prompt plus the token limit, rounded up to
/// [`CAPACITY_BUCKET`].
pub fn capacity_for(max_prompt: usize, max_new_tokens: usize) -> usize {
    (max_prompt + max_new_tokens)
        .max(1)
        .next_multiple_of(CAPACITY_BUCKET)
}

/// Keys and values of every layer for `slots` rows of up to `capacity` tokens.
#[derive(Debug, Clone)]
pub struct StaticKvCache {
    /// Per layer: keys and values `[slots, kv_heads, capacity, head_dim]` (keys after RoPE).
    layers: Vec<(Tensor<4>, Tensor<4>)>,
    slots: usize,
    capacity: usize,
    kv_heads: usize,
    /// RoPE of every position `[capacity, head_dim]`, uploaded once: cos over both halves, and
    /// sin with the first half negated, so that a rotation is `x·cos + swap_halves(x)·sin`.
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// `[slots, kv_heads, 1]`: the slot and kv-head coordinates of each row's write.
    slot_head: Tensor<3, Int>,
    /// `[slots, attend]` key column indices of the current length bucket (made once per bucket:
    /// burn builds an arange on the host); the twin's mask only.
    columns: Option<Tensor<2, Int>>,
    /// Attention through the WGSL kernel (wgpu) rather than its burn-ops twin.
    kernel: bool,
}

impl StaticKvCache {
    pub fn new(model: &Transformer, slots: usize, capacity: usize) -> Self {
        let device = model.device();
        let attn = &model.layers[0].attn;
        let (hkv, d) = (attn.num_kv_heads, attn.head_dim);
        let kernel = attention::kernel_available(&device, attn.num_heads, hkv, d);
        let zeros = || Tensor::<4>::zeros([slots, hkv, capacity, d], &device);
        let layers = model.layers.iter().map(|_| (zeros(), zeros())).collect();
        let (cos, sin) = model.rope.angles(&[(0..capacity).collect()], &device);
        let coord = |f: &dyn Fn(usize, usize) -> i64| {
            let v: Vec<i64> = (0..slots * hkv).map(|i| f(i / hkv, i % hkv)).collect();
            Tensor::<3, Int>::from_data(TensorData::new(v, [slots, hkv, 1]), &device)
        };
        let slot_head = Tensor::cat(vec![coord(&|s, _| s as i64), coord(&|_, h| h as i64)], 2);
        Self {
            layers,
            slots,
            capacity,
            kv_heads: hkv,
            cos: Tensor::cat(vec![cos.clone(), cos], 3).reshape([capacity, d]),
            sin: Tensor::cat(vec![sin.clone().neg(), sin], 3).reshape([capacity, d]),
            slot_head,
            columns: None,
            kernel,
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes a right-padded prefill's keys and values (row `i` → slot `slots[i]`, column =
    /// position). Columns past a prompt keep stale values; they are overwritten by the decode
    /// step at that position before any query can see them.
    pub fn load_rows(&mut self, fresh: KvCache, slots: &[usize]) {
        for (mine, theirs) in self.layers.iter_mut().zip(fresh.layers) {
            let Some((k, v)) = theirs else { continue };
            let [_, h, len, d] = k.dims();
            let len = len.min(self.capacity);
            for (i, &s) in slots.iter().enumerate() {
                let row = |t: &Tensor<4>| t.clone().slice([i..i + 1, 0..h, 0..len, 0..d]);
                let at = [s..s + 1, 0..h, 0..len, 0..d];
                mine.0 = mine.0.clone().slice_assign(at.clone(), row(&k));
                mine.1 = mine.1.clone().slice_assign(at, row(&v));
            }
        }
    }

    /// The device tensors one step shares across layers, for tokens at `pos [slots]` with
    /// `attend` key columns (≥ the longest row's position + 1).
    ///
    /// `host_pos` is the same positions as the host mirrors them (`None` for an idle slot). Off
    /// wgpu the cache is written row by row in place with them: the CPU backend's `scatter_nd`
    /// copies the whole cache on every call, its `slice_assign` writes in place.
    pub fn step(
        &mut self,
        pos: &Tensor<1, Int>,
        host_pos: &[Option<usize>],
        attend: usize,
        window: AttentionWindow,
    ) -> DecodeStep {
        let (b, hkv) = (self.slots, self.kv_heads);
        let attend = attend.clamp(1, self.capacity);
        let d = self.cos.dims()[1];
        let gather = |t: &Tensor<2>| t.clone().select(0, pos.clone()).reshape([b, 1, d]);
        let window = match window {
            AttentionWindow::Full => 0,
            AttentionWindow::Sliding(w) => w as u32,
        };
        // The kernel masks from the positions itself; the twin needs the mask as a tensor.
        let mask = (!self.kernel).then(|| {
            let columns = match &self.columns {
                Some(c) if c.dims()[1] == attend => c.clone(),
                _ => {
                    let c = Tensor::<1, Int>::arange(0..attend as i64, &pos.device())
                        .reshape([1, attend])
                        .expand([b, attend]); // [b, L]
                    self.columns = Some(c.clone());
                    c
                }
            };
            attention::decode_mask(pos, columns, window)
        });
        let write_at = if self.kernel {
            WriteAt::Device(Box::new(Tensor::cat(
                vec![
                    self.slot_head.clone(),
                    pos.clone().reshape([b, 1, 1]).expand([b, hkv, 1]),
                ],
                2,
            ))) // [b, hkv, 3]
        } else {
            WriteAt::Rows(host_pos.to_vec())
        };
        DecodeStep {
            cos: gather(&self.cos),
            sin: gather(&self.sin),
            pos: pos.clone(),
            window,
            mask,
            write_at,
        }
    }
}

/// What one decode step shares across layers.
#[derive(Debug, Clone)]
pub struct DecodeStep {
    /// `[slots, 1, head_dim]` at each row's position (see [`StaticKvCache`]'s tables).
    cos: Tensor<3>,
    sin: Tensor<3>,
    /// `[slots]` position of each row's token.
    pos: Tensor<1, Int>,
    /// Sliding window (0 = none).
    window: u32,
    /// For the burn-ops twin: additive `[slots, 1, 1, attend]`, 0 where a key is visible,
    /// `MASKED` elsewhere. `None` where the kernel masks by position itself.
    mask: Option<Tensor<4>>,
    write_at: WriteAt,
}

/// Where a step writes its keys and values.
#[derive(Debug, Clone)]
enum WriteAt {
    /// `[slots, kv_heads, 3]`: (slot, kv head, position) of each new vector, for one in-place
    /// `scatter_nd` per tensor (wgpu).
    Device(Box<Tensor<3, Int>>),
    /// Each slot's position (`None`: idle, not written), one in-place `slice_assign` per row.
    Rows(Vec<Option<usize>>),
}

impl Attention {
    /// One cached step: `x [slots, hidden]`; writes this step's keys/values into the cache
    /// tensors and attends over the visible columns.
    fn forward_cached(
        &self,
        x: Tensor<2>,
        step: &DecodeStep,
        k_cache: Tensor<4>,
        v_cache: Tensor<4>,
    ) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
        let [b, _] = x.dims();
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // RoPE without slicing: the halves swap in one flip, the rest is one fused expression.
        let rope = |t: Tensor<2>, n: usize| {
            let t = t.reshape([b, n, d]);
            let swapped = t
                .clone()
                .reshape([b, n, 2, d / 2])
                .flip([2])
                .reshape([b, n, d]);
            t * step.cos.clone() + swapped * step.sin.clone()
        };
        let q = rope(self.q.rows(x.clone()), h); // [b, h, d]
        let k = rope(self.k.rows(x.clone()), hkv); // [b, hkv, d]
        let v = self.v.rows(x).reshape([b, hkv, d]);
        let write = |cache: Tensor<4>, new: Tensor<3>| match &step.write_at {
            WriteAt::Device(at) => cache.scatter_nd(*at.clone(), new, IndexingUpdateOp::Assign),
            WriteAt::Rows(rows) => {
                let mut cache = cache;
                for (r, p) in rows.iter().enumerate() {
                    let Some(p) = *p else { continue };
                    let row = new
                        .clone()
                        .slice([r..r + 1, 0..hkv, 0..d])
                        .reshape([1, hkv, 1, d]);
                    cache = cache.slice_assign([r..r + 1, 0..hkv, p..p + 1, 0..d], row);
                }
                cache
            }
        };
        let k_cache = write(k_cache, k);
        let v_cache = write(v_cache, v);
        let out = match &step.mask {
            None => attention::decode_attention(
                q,
                k_cache.clone(),
                v_cache.clone(),
                step.pos.clone(),
                step.window,
            ),
            Some(mask) => {
                attention::decode_attention_twin(q, k_cache.clone(), v_cache.clone(), mask.clone())
            }
        };
        let out = out.reshape([b, h * d]);
        (self.o.rows(out), k_cache, v_cache)
    }
}

impl DecoderLayer {
    fn forward_cached(
        &self,
        x: Tensor<2>,
        step: &DecodeStep,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
        let (a, k, v) = self
            .attn
            .forward_cached(self.input_norm.forward(x.clone()), step, k, v);
        let h = x + a;
        (
            h.clone() + self.mlp.rows(self.post_attn_norm.forward(h)),
            k,
            v,
        )
    }
}

impl Transformer {
    /// Logits `[slots, vocab]` of one token per slot (`tokens [slots]`, all on the device),
    /// reading and extending `cache`.
    pub fn decode_step(
        &self,
        tokens: Tensor<1, Int>,
        step: &DecodeStep,
        cache: &mut StaticKvCache,
    ) -> Tensor<2> {
        let mut x = self.embed.val().select(0, tokens); // [slots, hidden]
        let layers = std::mem::take(&mut cache.layers);
        for (layer, (k, v)) in self.layers.iter().zip(layers) {
            let (y, k, v) = layer.forward_cached(x, step, k, v);
            x = y;
            cache.layers.push((k, v));
        }
        // One matmul against the transposed head view (see `Linear::rows`).
        self.norm.forward(x).matmul(self.head_weight().transpose())
    }
}

/// Token ids `[n]` on `device`.
pub fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [ids.len()]), device)
}

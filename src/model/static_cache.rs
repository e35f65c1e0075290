//! The decode path: a preallocated KV cache and one cached step for every slot of the batch.
//!
//! Every layer's keys and values live in one `[slots, kv_heads, capacity, head_dim]` tensor each,
//! allocated once per generation run and written in place at each row's position by the RoPE +
//! cache-write kernel. A finished row's slot is refilled by the next prompt without touching the
//! other slots. The shapes burn sees are fixed for the run, so nothing is re-autotuned or
//! recompiled after warm-up.
//!
//! Nothing of a step is built on the host: token ids and positions are device tensors (the
//! sampler's output feeds the next step), RoPE angles are read by position from tables uploaded
//! once, and attention masks from the positions inside the decode-attention kernel. Per layer a
//! step is: the fused q/k/v projection, RoPE + cache write (one kernel), attention (one
//! kernel), the output projection, residual + norm (one kernel), the fused gate/up projection
//! with SwiGLU inside it, the down projection, and the residual add fused with the next layer's
//! norm: 8 launches, the projections through the few-rows kernel (`kernels/rows_matmul.rs`). A
//! family's extras add none: per-head q/k norms run inside the RoPE kernel, sandwich norms (the
//! attention and MLP outputs normed before they join the stream) inside the residual-norm one,
//! each layer reads the RoPE tables and window of its attention kind. The burn-ops twin of
//! attention (with a mask tensor, its length moving in buckets of [`LEN_BUCKET`]) runs only where
//! the kernel cannot (a query group wider than the WGSL kernel's shared memory).
//!
//! A step runs in the model's compute dtype (`Transformer::compute`): the cache, the residual
//! stream and every weight it reads ([`DecodeWeights`]) are in it, so f16 halves the cache and
//! the bytes a step reads without adding a cast. The kernels keep in f32 what the model's own
//! forward keeps in f32 (norm statistics, attention scores and softmax, RoPE tables, every
//! accumulation), and the lm_head writes f32 logits for the sampler.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::attention::{Attention, KvCache};
use super::fused::{DecodeWeights, FusedLayer};
use super::{DecoderLayer, Transformer};
use crate::hf::config::AttentionWindow;
use crate::kernels::attention;
use crate::kernels::norm;
use crate::kernels::rope_cache::{self, RopeInputs};
use crate::kernels::rows_matmul::{gelu_tanh, rows_gated, rows_matmul};

/// The attended key length is the longest running row rounded up to this, so a step's shapes
/// change once every `LEN_BUCKET` tokens instead of every token.
pub const LEN_BUCKET: usize = 64;

/// Capacities are multiples of this, so runs with similar lengths share compiled shapes.
pub const CAPACITY_BUCKET: usize = 256;

/// The shortest bucketed sequence length.
pub const MIN_BUCKET_LEN: usize = 16;

/// The length a sequence of `longest` tokens is right-padded to where kernels are compiled (and
/// matmuls autotuned) per shape: a power of two from [`MIN_BUCKET_LEN`] up to [`CAPACITY_BUCKET`],
/// then a multiple of it. A run's prefills, training and scoring steps then reuse a few shapes
/// instead of compiling one per length, for at most twice the work above 16 tokens.
pub fn bucketed_len(longest: usize) -> usize {
    if longest <= CAPACITY_BUCKET {
        longest.max(MIN_BUCKET_LEN).next_power_of_two()
    } else {
        longest.next_multiple_of(CAPACITY_BUCKET)
    }
}

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
    /// Per layer: keys and values `[slots, kv_heads, capacity, head_dim]` (keys after RoPE), in
    /// the model's compute dtype.
    layers: Vec<(Tensor<4>, Tensor<4>)>,
    slots: usize,
    capacity: usize,
    /// Per attention kind: RoPE of every position `[capacity, head_dim]`, uploaded once (cos
    /// over both halves, and sin with the first half negated, so that a rotation is
    /// `x·cos + swap_halves(x)·sin`), and the kind's window.
    kinds: Vec<(Tensor<2>, Tensor<2>, AttentionWindow)>,
    /// `[slots, attend]` key column indices of the current length bucket (made once per bucket:
    /// burn builds an arange on the host); the twin's mask only.
    columns: Option<Tensor<2, Int>>,
    /// Attention through the decode-attention kernel (WGSL on wgpu, Rust on the CPU backend)
    /// rather than its burn-ops twin.
    kernel: bool,
}

impl StaticKvCache {
    /// The cache of `slots` rows of `capacity` tokens, in the model's compute dtype (the prefill
    /// writes its keys and values in it; a cache in another dtype would be cast, whole, at every
    /// step's write).
    pub fn new(model: &Transformer, slots: usize, capacity: usize) -> Self {
        let device = model.device();
        let attn = &model.layers[0].attn;
        let (hkv, d) = (attn.num_kv_heads, attn.head_dim);
        let kernel = attention::kernel_available(&device, attn.num_heads, hkv, d);
        let options = (&device, model.compute);
        // The kernels read only columns a row has written (≤ its position); the twin's additive
        // mask needs finite values everywhere.
        let fresh = || {
            let shape = [slots, hkv, capacity, d];
            if kernel {
                Tensor::<4>::empty(shape, options)
            } else {
                Tensor::<4>::zeros(shape, options)
            }
        };
        let layers = model.layers.iter().map(|_| (fresh(), fresh())).collect();
        let kinds = model
            .kinds
            .iter()
            .map(|k| {
                let (cos, sin) = k.rope.angles(&[(0..capacity).collect()], &device);
                (
                    Tensor::cat(vec![cos.clone(), cos], 3).reshape([capacity, d]),
                    Tensor::cat(vec![sin.clone().neg(), sin], 3).reshape([capacity, d]),
                    k.window,
                )
            })
            .collect();
        Self {
            layers,
            slots,
            capacity,
            kinds,
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

    /// The cache's element type.
    pub fn dtype(&self) -> DType {
        self.layers.first().map_or(DType::F32, |(k, _)| k.dtype())
    }

    /// Bytes the keys and values of every layer take on the device.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.shape().num_elements() + v.shape().num_elements()) * k.dtype().size())
            .sum()
    }

    /// Writes a right-padded prefill's keys and values (row `i` → slot `slots[i]`, column =
    /// position). Columns past a prompt keep stale values; they are overwritten by the decode
    /// step at that position before any query can see them.
    pub fn load_rows(&mut self, fresh: KvCache, slots: &[usize]) {
        // Rows bound for consecutive slots go in one write (a first fill is a single run).
        let mut runs: Vec<(usize, usize, usize)> = vec![]; // (first row, first slot, rows)
        for (i, &s) in slots.iter().enumerate() {
            match runs.last_mut() {
                Some((r, s0, n)) if *r + *n == i && *s0 + *n == s => *n += 1,
                _ => runs.push((i, s, 1)),
            }
        }
        // The cache tensors are moved through the writes so that each is written in place
        // (a clone kept alive during `slice_assign` would make the CPU backend copy it).
        let layers = std::mem::take(&mut self.layers);
        assert_eq!(
            layers.len(),
            fresh.layers.len(),
            "prefill and cache layer counts"
        );
        for ((mut kc, mut vc), theirs) in layers.into_iter().zip(fresh.layers) {
            if let Some((k, v)) = theirs {
                let [_, h, len, d] = k.dims();
                let len = len.min(self.capacity);
                for &(i, s, n) in &runs {
                    let rows = |t: &Tensor<4>| t.clone().slice([i..i + n, 0..h, 0..len, 0..d]);
                    let at = [s..s + n, 0..h, 0..len, 0..d];
                    kc = kc.slice_assign(at.clone(), rows(&k));
                    vc = vc.slice_assign(at, rows(&v));
                }
            }
            self.layers.push((kc, vc));
        }
    }

    /// The device tensors one step shares across layers, for tokens at `pos [slots]` with
    /// `attend` key columns (≥ the longest row's position + 1; the twin's mask only).
    pub fn step(&mut self, pos: &Tensor<1, Int>, attend: usize) -> DecodeStep {
        let b = self.slots;
        let attend = attend.clamp(1, self.capacity);
        // The kernels mask from the positions themselves; the twin needs the mask as a tensor.
        let columns = (!self.kernel).then(|| match &self.columns {
            Some(c) if c.dims()[1] == attend => c.clone(),
            _ => {
                let c = Tensor::<1, Int>::arange(0..attend as i64, &pos.device())
                    .reshape([1, attend])
                    .expand([b, attend]); // [b, L]
                self.columns = Some(c.clone());
                c
            }
        });
        let kinds = self
            .kinds
            .iter()
            .map(|(cos, sin, window)| {
                let window = match window {
                    AttentionWindow::Full => 0,
                    AttentionWindow::Sliding(w) => *w as u32,
                };
                KindStep {
                    cos: cos.clone(),
                    sin: sin.clone(),
                    window,
                    mask: columns
                        .clone()
                        .map(|c| attention::decode_mask(pos, c, window)),
                }
            })
            .collect();
        DecodeStep {
            pos: pos.clone(),
            kinds,
        }
    }
}

/// What one decode step shares across the layers of one attention kind.
#[derive(Debug, Clone)]
struct KindStep {
    /// `[capacity, head_dim]` RoPE tables (see [`StaticKvCache`]), indexed by position in the
    /// RoPE + cache-write kernel.
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// Sliding window (0 = none).
    window: u32,
    /// For the burn-ops twin: additive `[slots, 1, 1, attend]`, 0 where a key is visible,
    /// `MASKED` elsewhere. `None` where the kernel masks by position itself.
    mask: Option<Tensor<4>>,
}

/// What one decode step shares across layers.
#[derive(Debug, Clone)]
pub struct DecodeStep {
    /// `[slots]` position of each row's token.
    pos: Tensor<1, Int>,
    /// Per attention kind of the model.
    kinds: Vec<KindStep>,
}

impl Attention {
    /// One cached step of attention for the normed rows `x [slots, hidden]`: writes this step's
    /// keys/values into the cache tensors and attends over the visible columns.
    fn forward_cached(
        &self,
        fused: &FusedLayer,
        x: Tensor<2>,
        (step, kind): (&DecodeStep, usize),
        k_cache: Tensor<4>,
        v_cache: Tensor<4>,
    ) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
        let [b, _] = x.dims();
        let (h, d) = (self.num_heads, self.head_dim);
        let kind = &step.kinds[kind];
        let inputs = RopeInputs {
            qkv: rows_matmul(x, fused.qkv.clone()), // [b, (h + 2 hkv) d]
            bias: fused.qkv_bias.clone(),
            pos: step.pos.clone(),
            cos: kind.cos.clone(),
            sin: kind.sin.clone(),
            heads: h,
            // The per-head q/k norms inside the same kernel.
            qk_norm: match (&fused.qk_norm, &self.q_norm) {
                (Some((qn, kn)), Some(n)) => Some((qn.clone(), kn.clone(), n.eps)),
                _ => None,
            },
        };
        let (q, k_cache, v_cache) = rope_cache::rope_cache_write(inputs, k_cache, v_cache);
        let (k, v) = (k_cache.clone(), v_cache.clone());
        let out = match &kind.mask {
            None => attention::decode_attention(q, k, v, step.pos.clone(), kind.window, self.scale),
            Some(mask) => attention::decode_attention_twin(q, k, v, mask.clone(), self.scale),
        };
        let out = out.reshape([b, h * d]);
        (projection(out, &fused.o), k_cache, v_cache)
    }
}

impl DecoderLayer {
    /// One layer for the residual stream `h [slots, hidden]` and its normed copy `normed` (this
    /// layer's input norm already applied); `next` is the norm after this layer (the next
    /// layer's input norm, or the final one: its weight and eps). Returns the new residual
    /// stream and its `next` norm: each residual add is fused with the norm that follows it.
    fn forward_cached(
        &self,
        fused: &FusedLayer,
        (h, normed): (Tensor<2>, Tensor<2>),
        next: (&Tensor<1>, f64),
        step: &DecodeStep,
        (k, v): (Tensor<4>, Tensor<4>),
    ) -> ((Tensor<2>, Tensor<2>), (Tensor<4>, Tensor<4>)) {
        let (a, k, v) = self
            .attn
            .forward_cached(fused, normed, (step, self.kind), k, v);
        let eps = self.post_attn_norm.eps;
        let post = fused.post_attn_norm.clone();
        // Sandwich norms: the attention output's own norm inside the same kernel.
        let (h, normed) = match &fused.attn_out_norm {
            Some(w) => norm::norm_add_rms_norm(h, a, w.clone(), post, eps),
            None => norm::add_rms_norm(h, a, post, eps),
        };
        // The gated MLP through the fused gate/up matmul.
        let [b, _] = normed.dims();
        let i = fused.intermediate;
        let act = match &fused.gate_up_bias {
            // The activation inside the projection's kernel.
            None => rows_gated(normed, fused.gate_up.clone(), fused.gelu), // [b, i]
            Some(bias) => {
                let gu = rows_matmul(normed, fused.gate_up.clone()) + bias.clone().unsqueeze::<2>();
                let g = gu.clone().slice([0..b, 0..i]);
                let g = if fused.gelu {
                    gelu_tanh(g)
                } else {
                    burn::tensor::activation::silu(g)
                };
                g * gu.slice([0..b, i..2 * i])
            }
        };
        let m = projection(act, &fused.down);
        let out = match &fused.mlp_out_norm {
            Some(w) => norm::norm_add_rms_norm(h, m, w.clone(), next.0.clone(), next.1),
            None => norm::add_rms_norm(h, m, next.0.clone(), next.1),
        };
        (out, (k, v))
    }
}

/// `x [rows, in]` through a projection's `(weight [out, in], bias)` → `[rows, out]`.
fn projection(x: Tensor<2>, (w, bias): &(Tensor<2>, Option<Tensor<1>>)) -> Tensor<2> {
    let y = rows_matmul(x, w.clone());
    match bias {
        Some(b) => y + b.clone().unsqueeze::<2>(),
        None => y,
    }
}

impl Transformer {
    /// Logits in f32 `[slots, vocab]` of one token per slot (`tokens [slots]`, all on the
    /// device), reading and extending `cache`; `weights` are this model's decode weights.
    pub fn decode_step(
        &self,
        weights: &DecodeWeights,
        tokens: Tensor<1, Int>,
        step: &DecodeStep,
        cache: &mut StaticKvCache,
    ) -> Tensor<2> {
        let h = weights.embed.clone().select(0, tokens); // [slots, hidden]
        let h = match self.embed_scale {
            Some(f) => h.mul_scalar(f),
            None => h,
        };
        let first = self.layers.first().map_or(&self.norm, |l| &l.input_norm);
        let first_w = weights
            .layers
            .first()
            .map_or(&weights.norm, |l| &l.input_norm);
        let normed = norm::rms_norm(h.clone(), first_w.clone(), first.eps);
        let mut stream = (h, normed);
        let layers = std::mem::take(&mut cache.layers);
        for (l, ((layer, fused), kv)) in self
            .layers
            .iter()
            .zip(&weights.layers)
            .zip(layers)
            .enumerate()
        {
            let eps = self
                .layers
                .get(l + 1)
                .map_or(&self.norm, |n| &n.input_norm)
                .eps;
            let next = (weights.norm_after(l), eps);
            let (s, kv) = layer.forward_cached(fused, stream, next, step, kv);
            stream = s;
            cache.layers.push(kv);
        }
        weights.logits(stream.1)
    }
}

/// Token ids `[n]` on `device`.
pub fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [ids.len()]), device)
}

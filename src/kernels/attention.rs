//! Decode attention as a custom burn op: the WGSL kernel `shaders/decode_attention.wgsl` on wgpu
//! (one launch per layer per step, reading only each row's visible keys), a Rust loop on the CPU
//! backend, and a burn-ops twin as the reference of both (and the fallback for query groups too
//! wide for the WGSL kernel).
//!
//! `decode_attention(q [B, H, D], k [B, HKV, C, D], v [B, HKV, C, D], pos [B], window, scale)` →
//! `[B, H, D]`: query row b at position pos[b] attends to cache columns j ≤ pos[b] (and
//! j > pos[b] − window with a sliding window; window 0 = none), query head h to kv head
//! h / (H / HKV), scores scaled by `scale` (the model's, usually `D^-0.5`).

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{Backend, DType, Dispatch, Flex, Shape, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};

use super::common::{
    Shader, Variant, as_i32, cast_to, contiguous_as, elem_dtype, is_cpu, is_wgpu, launch_wgsl,
    new_tensor, reads_f16, shader,
};
use super::cpu::{self, PARALLEL_WORK, dot_f32};
use super::{MASKED, like};
use rayon::prelude::*;

/// The kernel keeps a group's queries and accumulators in 1024 slots: G · D must fit.
pub const MAX_GROUP_DIM: usize = 1024;

#[backend_extension(Cube, Flex, Fusion)]
pub trait DecodeAttentionBackend: Backend {
    /// `q [B, H, D]`, `k`/`v [B, HKV, C, D]`, `pos [B]` → `[B, H, D]` in q's dtype.
    #[fusion(meta = |q, _k, _v, _pos, _window, _scale| TensorSpec::new(q.shape.clone(), q.dtype))]
    fn decode_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        pos: IntTensor<Self>,
        window: u32,
        scale: f32,
    ) -> FloatTensor<Self>;
}

/// The burn-ops twin: scores against the first `attend` columns, the additive `mask
/// [B, 1, 1, attend]` (0 where visible, [`MASKED`] elsewhere), softmax, and the weighted sum.
pub fn decode_attention_twin(
    q: Tensor<3>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4>,
    scale: f32,
) -> Tensor<3> {
    let [b, h, d] = q.dims();
    let [_, hkv, _, _] = k.dims();
    let attend = mask.dims()[3];
    let keys = k.slice([0..b, 0..hkv, 0..attend, 0..d]);
    let values = v.slice([0..b, 0..hkv, 0..attend, 0..d]);
    // Query heads kv_head * g + i share kv_head.
    let q = q.reshape([b, hkv, h / hkv, d]);
    let scores = q.matmul(keys.swap_dims(2, 3)).mul_scalar(scale); // [b, hkv, g, L]
    // The mask and softmax in f32 whatever the cache's dtype, as the model's attention does.
    let dtype = scores.dtype();
    let probs = softmax(like(scores, DType::F32) + mask, 3);
    like(probs, dtype).matmul(values).reshape([b, h, d])
}

/// The additive mask of the twin for queries at `pos [B]` over `attend` columns whose indices
/// are `columns [B, attend]`.
pub fn decode_mask(pos: &Tensor<1, Int>, columns: Tensor<2, Int>, window: u32) -> Tensor<4> {
    let [b, attend] = columns.dims();
    let p = pos.clone().reshape([b, 1]).expand([b, attend]);
    let mut visible = columns.clone().lower_equal(p.clone());
    if window > 0 {
        visible = visible.bool_and(columns.greater(p.sub_scalar(window as i64)));
    }
    visible
        .bool_not()
        .float()
        .mul_scalar(MASKED)
        .reshape([b, 1, 1, attend])
}

/// Whether `decode_attention` has a kernel for these shapes on `device`: the CPU backend always,
/// wgpu where a query group fits the WGSL kernel's shared memory.
pub fn kernel_available(
    device: &burn::tensor::Device,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> bool {
    let grouped = kv_heads > 0 && heads.is_multiple_of(kv_heads);
    let cpu = is_cpu(device);
    grouped && (cpu || (is_wgpu(device) && heads / kv_heads * d <= MAX_GROUP_DIM))
}

/// One decode step of attention through the kernel (callers check [`kernel_available`]).
pub fn decode_attention(
    q: Tensor<3>,
    k: Tensor<4>,
    v: Tensor<4>,
    pos: Tensor<1, Int>,
    window: u32,
    scale: f32,
) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as DecodeAttentionBackend>::decode_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        pos.into_dispatch(),
        window,
        scale,
    ))
}

pub(crate) const SHADER: Shader = shader!("decode_attention.wgsl");

struct AttentionSource {
    shape: [usize; 5],
    window: u32,
    /// The score scale's bits (an f32 has no `Hash`, the kernel id needs one).
    scale: u32,
    f16: bool,
}

impl KernelSource for AttentionSource {
    fn source(&self) -> SourceTemplate {
        let scale = f32::from_bits(self.scale);
        SHADER
            .decode_template(self.shape, self.f16)
            .register("window", (self.window as i32).to_string())
            // Debug formatting prints the shortest string that reads back to the same f32.
            .register("scale", format!("{scale:?}"))
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shape, self.window, self.scale, self.f16))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shader completed, f32 and f16, with and without a sliding window (for the registry's
/// validation test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for (window, f16) in [(0, false), (16, false), (0, true), (16, true)] {
        let kernel = AttentionSource {
            shape: [2, 9, 3, 64, 64],
            window,
            scale: 0.125f32.to_bits(),
            f16,
        };
        out.push(Variant::of(&kernel, &SHADER, f16));
    }
    out
}

impl DecodeAttentionBackend for CubeBackend {
    fn decode_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        pos: CubeTensor,
        window: u32,
        scale: f32,
    ) -> CubeTensor {
        let f16 = reads_f16(&q);
        let elem = elem_dtype(f16);
        let cast = |t: CubeTensor| contiguous_as(t, elem);
        let dtype = q.dtype;
        let (q, k, v) = (cast(q), cast(k), cast(v));
        let pos = into_contiguous(as_i32(pos));
        let [b, h, d] = q.shape().dims::<3>();
        let [_, hkv, c, _] = k.shape().dims::<4>();
        let out = new_tensor(&q, Shape::new([b, h, d]), elem);
        if b * hkv > 0 {
            let kernel = AttentionSource {
                shape: [b, h, hkv, c, d],
                window,
                scale: scale.to_bits(),
                f16,
            };
            launch_wgsl(kernel, 128, b * hkv, &[&q, &k, &v, &pos, &out]);
        }
        cast_to(out, dtype)
    }
}

impl DecodeAttentionBackend for Flex {
    fn decode_attention(
        q: FloatTensor<Flex>,
        k: FloatTensor<Flex>,
        v: FloatTensor<Flex>,
        pos: IntTensor<Flex>,
        window: u32,
        scale: f32,
    ) -> FloatTensor<Flex> {
        let dtype = q.dtype();
        let [b, h, d] = q.shape().dims::<3>();
        let [_, hkv, c, _] = k.shape().dims::<4>();
        let g = h / hkv.max(1);
        let (q, k, v) = (cpu::f32_dense(q), cpu::f32_dense(k), cpu::f32_dense(v));
        let pos = cpu::positions(pos);
        let (qs, ks, vs) = (cpu::read(&q), cpu::read(&k), cpu::read(&v));
        let mut out = vec![0f32; b * h * d];
        // One task per (row, kv head): its G query heads are consecutive in q and in out.
        let task = |(group, o): (usize, &mut [f32])| {
            let r = group / hkv.max(1);
            // The same visible range as the WGSL kernel: [lo, p] with p clamped into the cache.
            let hi = pos[r].clamp(0, c as i64 - 1) as usize;
            let lo = match window {
                0 => 0,
                w => (hi + 1).saturating_sub(w as usize),
            };
            let at = (group * c + lo) * d;
            let span = hi + 1 - lo;
            let keys = &ks[at..at + span * d];
            let values = &vs[at..at + span * d];
            let q = &qs[group * g * d..(group + 1) * g * d];
            attend_group(q, keys, values, (d, scale), o);
        };
        let work = b
            * h
            * d
            * pos
                .iter()
                .map(|&p| p.max(0) as usize + 1)
                .max()
                .unwrap_or(1);
        if work < PARALLEL_WORK {
            out.chunks_mut(g * d).enumerate().for_each(task);
        } else {
            out.par_chunks_mut(g * d).enumerate().for_each(task);
        }
        cpu::cast_back(cpu::from_f32(out, [b, h, d]), dtype)
    }
}

/// Softmax attention of the query heads `q [G, D]` over `keys`/`values [L, D]` into `out
/// [G, D]`: each key and value is read once for the whole group.
fn attend_group(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    (d, scale): (usize, f32),
    out: &mut [f32],
) {
    let g = q.len() / d;
    let span = keys.len() / d;
    let mut p = vec![0f32; g * span]; // [G, L] scores, then weights
    for (j, key) in keys.chunks_exact(d).enumerate() {
        for (gi, qv) in q.chunks_exact(d).enumerate() {
            p[gi * span + j] = dot_f32(qv, key) * scale;
        }
    }
    let mut sums = vec![0f32; g];
    for (row, sum) in p.chunks_exact_mut(span).zip(&mut sums) {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            *sum += *x;
        }
    }
    for (j, value) in values.chunks_exact(d).enumerate() {
        for (gi, o) in out.chunks_exact_mut(d).enumerate() {
            let w = p[gi * span + j];
            for (acc, x) in o.iter_mut().zip(value) {
                *acc += w * x;
            }
        }
    }
    for (o, sum) in out.chunks_exact_mut(d).zip(&sums) {
        o.iter_mut().for_each(|x| *x /= sum);
    }
}

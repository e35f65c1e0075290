//! RoPE and the KV-cache write of one decode step as a custom burn op: the WGSL kernel
//! `shaders/rope_cache_write.wgsl` on wgpu, a Rust loop on the CPU backend, and a burn-ops twin as
//! the reference of both.
//!
//! `rope_cache_write(qkv [B, (H + 2·HKV)·D], bias [(H + 2·HKV)·D], pos [B], cos [C, D],
//! sin [C, D], k [B, HKV, C, D], v [B, HKV, C, D], heads = H)` → `(q [B, H, D], k, v)`: the
//! fused projection of one token per row is split into heads, q and k are rotated at the row's
//! position, and k and v are written into the caches at column `pos[b]` (in place when the cache
//! tensors are not shared; rows with `pos[b] ≥ C` write nothing). The tables are those of
//! [`crate::model::static_cache::StaticKvCache`]: cos over both halves, sin with its first half
//! negated, so a rotation is `x·cos + swap_halves(x)·sin`.
//!
//! `rope_cache_write_normed` adds per-head q/k norms before the rotation (Qwen3, Gemma 3):
//! `x̂ = x / sqrt(mean(x²) + eps) · w` over each head's D values, `w` = `q_norm [D]` for q heads,
//! `k_norm [D]` for k heads (the factors the model's norms multiply by, `1 + w` for Gemma's).

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{Backend, DType, Dispatch, Flex, Shape, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use super::common::{
    Shader, Variant, as_i32, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_tensor,
    reads_f16, shader,
};
use super::cpu;

/// Invocations per workgroup of the WGSL kernel: one per element, or (with q/k norms) `NORM_WG`
/// per head (a power of two, for the shared-memory sum).
const WG: u32 = 256;
const NORM_WG: u32 = 64;

/// The op's outputs: `q [B, H, D]` in qkv's dtype, and the caches as they came in.
fn specs(
    qkv: &TensorSpec,
    cos: &TensorSpec,
    (k, v): (&TensorSpec, &TensorSpec),
    heads: u32,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (
        TensorSpec::new(
            Shape::new([qkv.shape[0], heads as usize, cos.shape[1]]),
            qkv.dtype,
        ),
        TensorSpec::new(k.shape.clone(), k.dtype),
        TensorSpec::new(v.shape.clone(), v.dtype),
    )
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait RopeCacheBackend: Backend {
    /// See the module docs; returns `(q, k, v)`, q in qkv's dtype.
    #[fusion(meta = |qkv, _bias, _pos, cos, _sin, k, v, heads| specs(qkv, cos, (k, v), *heads))]
    #[allow(clippy::too_many_arguments)]
    fn rope_cache_write(
        qkv: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pos: IntTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        heads: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The op with per-head q/k norms (see the module docs).
    #[fusion(meta = |qkv, _bias, _pos, cos, _sin, k, v, _qn, _kn, heads, _eps|
        specs(qkv, cos, (k, v), *heads))]
    #[allow(clippy::too_many_arguments)]
    fn rope_cache_write_normed(
        qkv: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pos: IntTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        q_norm: FloatTensor<Self>,
        k_norm: FloatTensor<Self>,
        heads: u32,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The tensors of one step's RoPE + cache write (see the module docs for shapes).
pub struct RopeInputs {
    pub qkv: Tensor<2>,
    pub bias: Tensor<1>,
    pub pos: Tensor<1, Int>,
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
    pub heads: usize,
    /// Per-head norms of q and k before the rotation: their factors `[D]` each and eps.
    pub qk_norm: Option<(Tensor<1>, Tensor<1>, f64)>,
}

/// Runs the op: `(q [B, H, D], k cache, v cache)`.
pub fn rope_cache_write(
    x: RopeInputs,
    k: Tensor<4>,
    v: Tensor<4>,
) -> (Tensor<3>, Tensor<4>, Tensor<4>) {
    let [qkv, cos, sin] = [x.qkv, x.cos, x.sin].map(Tensor::into_dispatch);
    let [k, v] = [k, v].map(Tensor::into_dispatch);
    let (bias, pos, heads) = (
        x.bias.into_dispatch(),
        x.pos.into_dispatch(),
        x.heads as u32,
    );
    let (q, k, v) = match x.qk_norm {
        Some((qn, kn, eps)) => {
            let (qn, kn) = (qn.into_dispatch(), kn.into_dispatch());
            <Dispatch as RopeCacheBackend>::rope_cache_write_normed(
                qkv, bias, pos, cos, sin, k, v, qn, kn, heads, eps as f32,
            )
        }
        None => {
            <Dispatch as RopeCacheBackend>::rope_cache_write(qkv, bias, pos, cos, sin, k, v, heads)
        }
    };
    (
        Tensor::from_dispatch(q),
        Tensor::from_dispatch(k),
        Tensor::from_dispatch(v),
    )
}

/// The burn-ops twin: slices, the RoPE expression with a flip of the halves, and `scatter_nd`
/// writes (rows at `pos ≥ C` are clamped into the last column, which the kernels leave alone:
/// tests keep positions inside the cache).
pub fn rope_cache_write_twin(
    x: RopeInputs,
    k: Tensor<4>,
    v: Tensor<4>,
) -> (Tensor<3>, Tensor<4>, Tensor<4>) {
    let [b, _] = x.qkv.dims();
    let [_, hkv, c, d] = k.dims();
    let h = x.heads;
    let y = x.qkv + x.bias.unsqueeze::<2>();
    let heads = |from: usize, n: usize| {
        y.clone()
            .slice([0..b, from * d..(from + n) * d])
            .reshape([b, n, d])
    };
    // Per-head norms: the mean square over each head's D values.
    let norm = |t: Tensor<3>, w: Option<&Tensor<1>>, eps: f64| match w {
        Some(w) => {
            let inv = t
                .clone()
                .square()
                .mean_dim(2)
                .add_scalar(eps)
                .sqrt()
                .recip();
            t * inv * w.clone().reshape([1, 1, d])
        }
        None => t,
    };
    let (qn, kn, eps) = match &x.qk_norm {
        Some((qn, kn, eps)) => (Some(qn), Some(kn), *eps),
        None => (None, None, 0.0),
    };
    let pos = x.pos.clamp_max(c as i64 - 1);
    let cos = x.cos.select(0, pos.clone()).reshape([b, 1, d]);
    let sin = x.sin.select(0, pos.clone()).reshape([b, 1, d]);
    let rope = |t: Tensor<3>, n: usize| {
        let swapped = t
            .clone()
            .reshape([b, n, 2, d / 2])
            .flip([2])
            .reshape([b, n, d]);
        t * cos.clone() + swapped * sin.clone()
    };
    let q = rope(norm(heads(0, h), qn, eps), h);
    let new_k = rope(norm(heads(h, hkv), kn, eps), hkv);
    let new_v = heads(h + hkv, hkv);
    let device = pos.device();
    let slot = Tensor::<1, Int>::arange(0..b as i64, &device)
        .reshape([b, 1, 1])
        .expand([b, hkv, 1]);
    let head = Tensor::<1, Int>::arange(0..hkv as i64, &device)
        .reshape([1, hkv, 1])
        .expand([b, hkv, 1]);
    let at = Tensor::cat(
        vec![slot, head, pos.reshape([b, 1, 1]).expand([b, hkv, 1])],
        2,
    ); // [b, hkv, 3]
    let k = k.scatter_nd(at.clone(), new_k, IndexingUpdateOp::Assign);
    let v = v.scatter_nd(at, new_v, IndexingUpdateOp::Assign);
    (q, k, v)
}

pub(crate) const SHADER: Shader = shader!("rope_cache_write.wgsl", prelude);

struct RopeSource {
    shape: [usize; 5],
    f16: bool,
    /// The q/k norms' eps bits, when the kernel norms q and k.
    qk_norm: Option<u32>,
}

impl KernelSource for RopeSource {
    fn source(&self) -> SourceTemplate {
        let elem = if self.f16 { "f16" } else { "f32" };
        let (wg, bindings, weight) = match self.qk_norm {
            Some(_) => (
                NORM_WG,
                format!(
                    "@group(0) @binding(8) var<storage, read_write> qn: array<{elem}>;\n\
                     @group(0) @binding(9) var<storage, read_write> kn: array<{elem}>;"
                ),
                "    if (is_q) { return f32(qn[i]); }\n    return f32(kn[i]);",
            ),
            None => (WG, String::new(), "    return 1.0;"),
        };
        let eps = f32::from_bits(self.qk_norm.unwrap_or(0));
        SHADER
            .decode_template(self.shape, self.f16)
            .register("wg", wg.to_string())
            .register("qk_norm", self.qk_norm.is_some().to_string())
            // Debug formatting prints the shortest string that reads back to the same f32.
            .register("eps", format!("{eps:?}"))
            .register("norm_bindings", bindings)
            .register("norm_weight", weight)
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shape, self.f16, self.qk_norm))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shader completed with and without q/k norms, f32 and f16 (for the registry's validation
/// test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for qk_norm in [None, Some(1e-6f32.to_bits())] {
        for f16 in [false, true] {
            let kernel = RopeSource {
                shape: [2, 4, 2, 32, 16],
                f16,
                qk_norm,
            };
            out.push(Variant::of(&kernel, &SHADER, f16));
        }
    }
    out
}

/// A cache tensor the kernel may write: its own contiguous buffer in `elem`.
fn writable(t: CubeTensor, elem: DType) -> CubeTensor {
    let t = cast_to(t, elem);
    if t.can_mut() && t.is_contiguous_buffer() && t.is_contiguous() {
        t
    } else {
        t.copy()
    }
}

/// Launches the kernel, with the q/k norms' factors and eps when given.
#[allow(clippy::too_many_arguments)]
fn launch_cube(
    qkv: CubeTensor,
    bias: CubeTensor,
    pos: CubeTensor,
    (cos, sin): (CubeTensor, CubeTensor),
    k: CubeTensor,
    v: CubeTensor,
    norms: Option<(CubeTensor, CubeTensor, f32)>,
    heads: u32,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let f16 = reads_f16(&qkv);
    let elem = elem_dtype(f16);
    let dtype = qkv.dtype;
    let (qkv, bias) = (contiguous_as(qkv, elem), contiguous_as(bias, elem));
    let (cos, sin) = (
        contiguous_as(cos, DType::F32),
        contiguous_as(sin, DType::F32),
    );
    let pos = into_contiguous(as_i32(pos));
    let (k, v) = (writable(k, elem), writable(v, elem));
    let [b, row] = qkv.shape().dims::<2>();
    let [_, hkv, c, d] = k.shape().dims::<4>();
    let h = heads as usize;
    debug_assert_eq!(row, (h + 2 * hkv) * d);
    let q = new_tensor(&qkv, Shape::new([b, h, d]), elem);
    if b * row > 0 {
        let kernel = RopeSource {
            shape: [b, h, hkv, c, d],
            f16,
            qk_norm: norms.as_ref().map(|n| n.2.to_bits()),
        };
        let mut bound = vec![&qkv, &bias, &pos, &cos, &sin, &k, &v, &q];
        let weights = norms.map(|(qn, kn, _)| (contiguous_as(qn, elem), contiguous_as(kn, elem)));
        match &weights {
            Some((qn, kn)) => {
                bound.extend([qn, kn]);
                launch_wgsl(kernel, NORM_WG, b * (h + 2 * hkv), &bound);
            }
            None => launch_wgsl(kernel, WG, (b * row).div_ceil(WG as usize), &bound),
        }
    }
    (cast_to(q, dtype), cast_to(k, dtype), cast_to(v, dtype))
}

impl RopeCacheBackend for CubeBackend {
    fn rope_cache_write(
        qkv: CubeTensor,
        bias: CubeTensor,
        pos: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        heads: u32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        launch_cube(qkv, bias, pos, (cos, sin), k, v, None, heads)
    }

    fn rope_cache_write_normed(
        qkv: CubeTensor,
        bias: CubeTensor,
        pos: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        q_norm: CubeTensor,
        k_norm: CubeTensor,
        heads: u32,
        eps: f32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let norms = Some((q_norm, k_norm, eps));
        launch_cube(qkv, bias, pos, (cos, sin), k, v, norms, heads)
    }
}

/// The CPU loop, with the q/k norms' factors and eps when given.
#[allow(clippy::too_many_arguments)]
fn run_flex(
    qkv: FloatTensor<Flex>,
    bias: FloatTensor<Flex>,
    pos: IntTensor<Flex>,
    (cos, sin): (FloatTensor<Flex>, FloatTensor<Flex>),
    k: FloatTensor<Flex>,
    v: FloatTensor<Flex>,
    norms: Option<(FloatTensor<Flex>, FloatTensor<Flex>, f32)>,
    heads: u32,
) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
    let dtype = qkv.dtype();
    let [b, row] = qkv.shape().dims::<2>();
    let [_, hkv, c, d] = k.shape().dims::<4>();
    let h = heads as usize;
    let half = d / 2;
    let (qkv, bias) = (cpu::f32_dense(qkv), cpu::f32_dense(bias));
    let (cos, sin) = (cpu::f32_dense(cos), cpu::f32_dense(sin));
    let (mut k, mut v) = (cpu::f32_dense(k), cpu::f32_dense(v));
    let norms = norms.map(|(qn, kn, eps)| (cpu::f32_dense(qn), cpu::f32_dense(kn), eps));
    let pos = cpu::positions(pos);
    let mut q = vec![0f32; b * h * d];
    {
        let (x, bias) = (cpu::read(&qkv), cpu::read(&bias));
        let (cos, sin) = (cpu::read(&cos), cpu::read(&sin));
        let norms = norms
            .as_ref()
            .map(|(qn, kn, eps)| (cpu::read(qn), cpu::read(kn), *eps));
        let kc = cpu::write(&mut k);
        let vc = cpu::write(&mut v);
        let mut head_x = vec![0f32; d];
        for (r, &p) in pos.iter().enumerate() {
            let in_cache = p >= 0 && (p as usize) < c;
            let t = p.clamp(0, c as i64 - 1) as usize * d;
            let (cos, sin) = (&cos[t..t + d], &sin[t..t + d]);
            let x = &x[r * row..(r + 1) * row];
            let mut rotate = |head: usize, out: &mut [f32]| {
                let base = head * d;
                for (i, hx) in head_x.iter_mut().enumerate() {
                    *hx = x[base + i] + bias[base + i];
                }
                if let Some((qn, kn, eps)) = &norms {
                    let w = if head < h { qn } else { kn };
                    let ms = head_x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    let inv = 1.0 / (ms + eps).sqrt();
                    head_x
                        .iter_mut()
                        .zip(w.iter())
                        .for_each(|(v, w)| *v = *v * inv * w);
                }
                for i in 0..d {
                    let j = if i < half { i + half } else { i - half };
                    out[i] = head_x[i] * cos[i] + head_x[j] * sin[i];
                }
            };
            for head in 0..h {
                let at = (r * h + head) * d;
                rotate(head, &mut q[at..at + d]);
            }
            if !in_cache {
                continue;
            }
            for g in 0..hkv {
                let at = ((r * hkv + g) * c + p as usize) * d;
                rotate(h + g, &mut kc[at..at + d]);
                let base = (h + hkv + g) * d;
                for i in 0..d {
                    vc[at + i] = x[base + i] + bias[base + i];
                }
            }
        }
    }
    let q = cpu::from_f32(q, [b, h, d]);
    (
        cpu::cast_back(q, dtype),
        cpu::cast_back(k, dtype),
        cpu::cast_back(v, dtype),
    )
}

impl RopeCacheBackend for Flex {
    fn rope_cache_write(
        qkv: FloatTensor<Flex>,
        bias: FloatTensor<Flex>,
        pos: IntTensor<Flex>,
        cos: FloatTensor<Flex>,
        sin: FloatTensor<Flex>,
        k: FloatTensor<Flex>,
        v: FloatTensor<Flex>,
        heads: u32,
    ) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
        run_flex(qkv, bias, pos, (cos, sin), k, v, None, heads)
    }

    fn rope_cache_write_normed(
        qkv: FloatTensor<Flex>,
        bias: FloatTensor<Flex>,
        pos: IntTensor<Flex>,
        cos: FloatTensor<Flex>,
        sin: FloatTensor<Flex>,
        k: FloatTensor<Flex>,
        v: FloatTensor<Flex>,
        q_norm: FloatTensor<Flex>,
        k_norm: FloatTensor<Flex>,
        heads: u32,
        eps: f32,
    ) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
        let norms = Some((q_norm, k_norm, eps));
        run_flex(qkv, bias, pos, (cos, sin), k, v, norms, heads)
    }
}

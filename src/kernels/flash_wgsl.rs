//! Flash attention's WGSL kernels and their launches on the wgpu runtime: the forward
//! (`shaders/flash_attention_fwd.wgsl`, one launch) and the backward
//! (`shaders/flash_attention_bwd_dq.wgsl` then `shaders/flash_attention_bwd_dkdv.wgsl`, two
//! launches). No `[S, K]` buffer exists in either: the backward recomputes the probabilities from
//! the forward's row log-sum-exp. The custom autodiff op (`kernels/flash_attention.rs`, with the
//! CPU kernel and the burn-ops twin) calls [`flash_forward_wgsl`] / [`flash_backward_wgsl`] from
//! its `CubeBackend` implementation (where [`flash_wgsl_supported`] holds), which is how the
//! tests and benchmarks reach them too.
//!
//! Contract (both directions): `q [B, H, S, D]`, `k`, `v [B, HKV, K, D]`, `qpos [B, S]`, `kpos
//! [B, K]` (ints, negative = padding), `window` (0 = none), `scale`. H = HKV · G, query head h
//! reads kv head h / G. Query i of row r sees key j iff qpos[r, i] ≥ 0, kpos[r, j] ≥ 0, kpos ≤ qpos
//! and (window = 0 or qpos − kpos < window). A query that sees no key gets out = 0, lse = 0 (and
//! no gradient). f16 inputs are read as f16 where the device's WGSL has it; all arithmetic is f32.
//! Padding rows may hold anything (NaN included): the kernels zero them when staging.
//!
//! lavapipe (gallivm) ends every loop of an invocation once it has run 65535 loop iterations in
//! all, silently. The kernels unroll the work over the head dim, which leaves about 3.3 loop
//! iterations per key (forward; 2.3 in dq) and 2.3 per query and head (dk/dv): on lavapipe, K up
//! to ~19k and G · S up to ~28k. Real GPUs have no such cap.

use burn::backend::ops::FloatTensorOps;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{DType, Shape, TensorMetadata};
use burn::cubecl::prelude::KernelId;

use super::common::{
    Shader, Variant, as_i32, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_f32, new_tensor,
    reads_f16, shader, upload_words,
};

pub(crate) const FWD_SHADER: Shader = shader!("flash_attention_fwd.wgsl");
pub(crate) const BWD_DQ_SHADER: Shader = shader!("flash_attention_bwd_dq.wgsl");
pub(crate) const BWD_DKDV_SHADER: Shader = shader!("flash_attention_bwd_dkdv.wgsl");

/// Invocations per workgroup: queries per workgroup in the forward and dq kernels (G heads ×
/// WG / G positions), keys per workgroup in the dk/dv kernel.
pub const WORKGROUP: usize = 64;

/// f32 elements of one staged tile (keys or queries): the kernels stage two, which with 1920
/// (and their few small arrays) stays within WebGPU's default 16 KiB of workgroup memory.
const TILE_ELEMS: usize = 1920;

/// Rows of a staged tile for head dim `d`: as many as fit [`TILE_ELEMS`], at most 32 (and at
/// most the workgroup, whose invocations load one position each).
fn tile_rows(d: usize) -> usize {
    (TILE_ELEMS / d.max(1)).clamp(1, 32.min(WORKGROUP))
}

/// Whether the kernels take these shapes: H a multiple of HKV, the G = H / HKV heads of a group
/// within one workgroup, and a head dim that is a multiple of 4 (rows are vec4s) whose tile fits
/// workgroup memory. Callers check this (the op falls back to its twin otherwise).
pub fn flash_wgsl_supported(heads: usize, kv_heads: usize, d: usize) -> bool {
    kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && heads / kv_heads <= WORKGROUP
        && d.is_multiple_of(4)
        && (4..=TILE_ELEMS).contains(&d)
}

/// `pattern` once per vec4 of a row (`#` its index, 0 .. d / 4), joined by `sep`: the shaders'
/// per-key and per-query work written out, because lavapipe caps the loop iterations of an
/// invocation (65535 in all) and a loop over the head dim per key would exhaust it.
fn unrolled(d: usize, pattern: &str, sep: &str) -> String {
    (0..d / 4)
        .map(|i| pattern.replace('#', &i.to_string()))
        .collect::<Vec<_>>()
        .join(sep)
}

/// One of the three shaders for a head dim, a group size and an element type.
struct FlashSource {
    shader: &'static Shader,
    d: usize,
    g: usize,
    f16: bool,
}

impl KernelSource for FlashSource {
    fn source(&self) -> SourceTemplate {
        let d = self.d;
        let sum = |pattern: &str| unrolled(d, pattern, " + ");
        let stmts = |pattern: &str| unrolled(d, pattern, " ");
        let template = self
            .shader
            .template(self.f16)
            .register("d", d.to_string())
            .register("g", self.g.to_string())
            .register("wg", WORKGROUP.to_string())
            .register("tk", tile_rows(d).to_string());
        // Each shader's unrolled lines (the names its header lists).
        match self.shader.file {
            "flash_attention_fwd.wgsl" => template
                .register("dot_qk", sum("dot(qv[#], ks[kb + #u])"))
                .register("rescale", stmts("acc[#] *= c;"))
                .register("add_pv", stmts("acc[#] += p * vs[kb + #u];")),
            "flash_attention_bwd_dq.wgsl" => template
                .register("dot_qk", sum("dot(qv[#], ks[kb + #u])"))
                .register("dot_dv", sum("dot(dov[#], vs[kb + #u])"))
                .register("add_dsk", stmts("acc[#] += ds * ks[kb + #u];")),
            _ => template
                .register("dot_qk", sum("dot(qs[ib + #u], kv[#])"))
                .register("dot_dv", sum("dot(dos[ib + #u], vv[#])"))
                .register("add_pdo", stmts("dva[#] += p * dos[ib + #u];"))
                .register("add_dsq", stmts("dka[#] += ds * qs[ib + #u];")),
        }
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shader.file, self.d, self.g, WORKGROUP, self.f16))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The three shaders completed, f32 and f16, for GQA ratios 1 and 3 and head dims 64 and 128
/// (for the registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for shader in [&FWD_SHADER, &BWD_DQ_SHADER, &BWD_DKDV_SHADER] {
        for (d, g, f16) in [
            (64, 1, false),
            (64, 3, false),
            (128, 3, true),
            (64, 7, true),
        ] {
            let kernel = FlashSource { shader, d, g, f16 };
            out.push(Variant::of(&kernel, shader, f16));
        }
    }
    out
}

/// The run-time shape every shader reads (binding `info`): B, HKV, S, K, window, scale's bits.
fn info(like: &CubeTensor, [b, hkv, s, k]: [usize; 4], window: u32, scale: f32) -> CubeTensor {
    let words = [
        b as u32,
        hkv as u32,
        s as u32,
        k as u32,
        window,
        scale.to_bits(),
    ];
    upload_words(like, &words, DType::U32)
}

/// `(out [B, H, S, D]` in q's dtype, `lse [B, H, S]` f32`)`: one launch (plus casts where an
/// input is not already contiguous in the element type). Shapes as [`flash_wgsl_supported`].
pub fn flash_forward_wgsl(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    qpos: CubeTensor,
    kpos: CubeTensor,
    window: u32,
    scale: f32,
) -> (CubeTensor, CubeTensor) {
    let dtype = q.dtype;
    let f16 = reads_f16(&q);
    let elem = elem_dtype(f16);
    let cast = |t: CubeTensor| contiguous_as(t, elem);
    let (q, k, v) = (cast(q), cast(k), cast(v));
    let qpos = into_contiguous(as_i32(qpos));
    let kpos = into_contiguous(as_i32(kpos));
    let [b, h, s, d] = q.shape().dims::<4>();
    let [_, hkv, nk, _] = k.shape().dims::<4>();
    let out = new_tensor(&q, Shape::new([b, h, s, d]), elem);
    let lse = new_f32(&q, Shape::new([b, h, s]));
    if b * h * s > 0 {
        let g = h / hkv;
        let groups = b * hkv * s.div_ceil(WORKGROUP / g);
        let info = info(&q, [b, hkv, s, nk], window, scale);
        let kernel = FlashSource {
            shader: &FWD_SHADER,
            d,
            g,
            f16,
        };
        let bound = [&q, &k, &v, &qpos, &kpos, &out, &lse, &info];
        launch_wgsl(kernel, WORKGROUP as u32, groups, &bound);
    }
    (cast_to(out, dtype), lse)
}

/// `(dq [B, H, S, D]` in q's dtype, `dk`, `dv [B, HKV, K, D]` in k's dtype`)` from the forward's
/// `out` and `lse` and the upstream `dout`: two launches (dq and Δ, then dk and dv).
#[allow(clippy::too_many_arguments)]
pub fn flash_backward_wgsl(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    out: CubeTensor,
    lse: CubeTensor,
    dout: CubeTensor,
    qpos: CubeTensor,
    kpos: CubeTensor,
    window: u32,
    scale: f32,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let (q_dtype, k_dtype) = (q.dtype, k.dtype);
    let f16 = reads_f16(&q);
    let elem = elem_dtype(f16);
    let cast = |t: CubeTensor| contiguous_as(t, elem);
    let (q, k, v, out, dout) = (cast(q), cast(k), cast(v), cast(out), cast(dout));
    let lse = contiguous_as(lse, DType::F32);
    let qpos = into_contiguous(as_i32(qpos));
    let kpos = into_contiguous(as_i32(kpos));
    let [b, h, s, d] = q.shape().dims::<4>();
    let [_, hkv, nk, _] = k.shape().dims::<4>();
    let dq = new_tensor(&q, Shape::new([b, h, s, d]), elem);
    let dk = new_tensor(&q, Shape::new([b, hkv, nk, d]), elem);
    let dv = new_tensor(&q, Shape::new([b, hkv, nk, d]), elem);
    if b * hkv > 0 && s * nk * d > 0 {
        let g = h / hkv;
        let delta = new_f32(&q, Shape::new([b, h, s]));
        let info = info(&q, [b, hkv, s, nk], window, scale);
        let source = |shader| FlashSource { shader, d, g, f16 };
        let bound = [
            &q, &k, &v, &out, &dout, &lse, &qpos, &kpos, &dq, &delta, &info,
        ];
        let groups = b * hkv * s.div_ceil(WORKGROUP / g);
        launch_wgsl(source(&BWD_DQ_SHADER), WORKGROUP as u32, groups, &bound);
        let bound = [
            &q, &k, &v, &dout, &lse, &delta, &qpos, &kpos, &dk, &dv, &info,
        ];
        let groups = b * hkv * nk.div_ceil(WORKGROUP);
        launch_wgsl(source(&BWD_DKDV_SHADER), WORKGROUP as u32, groups, &bound);
    } else {
        // No key or no query: every gradient is zero, and the kernels would write nothing.
        let zeros = |t: &CubeTensor| CubeBackend::float_zeros(t.shape(), &t.device, elem.into());
        return (
            cast_to(zeros(&dq), q_dtype),
            cast_to(zeros(&dk), k_dtype),
            cast_to(zeros(&dv), k_dtype),
        );
    }
    (
        cast_to(dq, q_dtype),
        cast_to(dk, k_dtype),
        cast_to(dv, k_dtype),
    )
}

// ---------------------------------------------------------------- tensor-level entry points

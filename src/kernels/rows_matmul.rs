//! `x · wᵀ` for the few rows of a decode step: `x [m, k]` against a weight in Hugging Face layout
//! `w [n, k]` (each output's weights contiguous), for m ≤ [`MAX_ROWS`].
//!
//! A decode step reads every weight once for a handful of rows, so it is bound by memory, not
//! arithmetic; a general GEMM tiles for reuse that m ≤ 16 rows cannot give (the gemm crate's
//! 16-row micro-kernel runs half empty at 8 rows, cubecl's tiles likewise).
//! - wgpu: `shaders/rows_matmul.wgsl`, teams of invocations streaming a weight row in vec4
//!   loads against every input row, one launch, shapes baked in.
//! - CPU backend: each weight row is streamed once and dotted with every input row while it is in
//!   cache, the outputs split across threads. The inner loop is written for the auto-vectoriser
//!   (8 independent lanes); on x86-64 a copy compiled for AVX2 + FMA is picked at run time,
//!   elsewhere (aarch64 NEON) the baseline vectorises already.
//!
//! The twin is burn's `x.matmul(w.transpose())`, which also serves the shapes no kernel takes.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate};
use burn::backend::{Backend, Dispatch, Flex, Shape, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::common::{
    Shader, Variant, cast_to, contiguous_as, elem_dtype, f16_kernel_available, is_cpu, is_wgpu,
    launch_wgsl, new_tensor, reads_f16, shader,
};
use super::cpu::{self, PARALLEL_WORK, dot};

/// Above this many rows a tiled GEMM wins (weights are reused across rows).
pub const MAX_ROWS: usize = 16;

/// Weights smaller than this many elements stay in cache between steps, so a tiled GEMM (which
/// reduces fewer partial sums) is faster there (CPU backend).
pub const MIN_WEIGHT: usize = 1 << 17;

/// Outputs per parallel task: enough work per task to amortise scheduling.
const CHUNK: usize = 64;

/// The WGSL kernel's workgroup: `COLS` outputs, each streamed by a team of `LANES` invocations
/// (a team reads `LANES` · 16 contiguous bytes of its weight row per iteration).
pub const COLS: usize = 8;
pub const LANES: usize = 8;

/// Which implementation [`rows_matmul`] takes for `x [m, k]` and `w [n, k]` on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsPath {
    Wgsl,
    Cpu,
    /// burn's matmul against the transposed view.
    Twin,
}

/// The path [`rows_matmul`] and [`rows_gated`] take for these operands on their device.
pub fn rows_path(x: &Tensor<2>, w: &Tensor<2>) -> RowsPath {
    let [m, k] = x.dims();
    let [n, _] = w.dims();
    let device = x.device();
    let dtype = x.dtype();
    if m > MAX_ROWS || dtype != w.dtype() {
        return RowsPath::Twin;
    }
    if is_cpu(&device) && dtype == DType::F32 && n * k >= MIN_WEIGHT {
        RowsPath::Cpu
    } else if is_wgpu(&device)
        && (dtype == DType::F32 || (dtype == DType::F16 && f16_kernel_available(&device)))
        && k % 4 == 0
    {
        // (f16 without WGSL f16 would widen the whole weight every call: burn's matmul instead.)
        RowsPath::Wgsl
    } else {
        RowsPath::Twin
    }
}

type DispatchOp = fn(FloatTensor<Dispatch>, FloatTensor<Dispatch>) -> FloatTensor<Dispatch>;

/// `kernel` where [`rows_path`] has one for these operands, `twin` otherwise.
fn dispatch_rows(
    x: Tensor<2>,
    w: Tensor<2>,
    kernel: DispatchOp,
    twin: fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    match rows_path(&x, &w) {
        RowsPath::Twin => twin(x, w),
        RowsPath::Wgsl | RowsPath::Cpu => {
            Tensor::from_dispatch(kernel(x.into_dispatch(), w.into_dispatch()))
        }
    }
}

/// `x [m, k] · w [n, k]ᵀ → [m, n]` (see the module docs for which path runs).
pub fn rows_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    dispatch_rows(
        x,
        w,
        <Dispatch as RowsMatmul>::rows_matmul,
        rows_matmul_twin,
    )
}

/// The burn-ops twin.
pub fn rows_matmul_twin(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    x.matmul(w.transpose())
}

/// [`rows_matmul`] with f32 outputs whatever the operands' dtype: the lm_head of a decode step,
/// whose logits go on to sampling and log-probs in f32. The kernels sum in f32 and write f32
/// (logits rounded to f16 would move log-probs by up to ~1e-2 at logits near 30); the twin casts
/// its product.
pub fn rows_matmul_f32(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    match rows_path(&x, &w) {
        RowsPath::Twin => rows_matmul_twin(x, w).cast(DType::F32),
        RowsPath::Wgsl | RowsPath::Cpu => Tensor::from_dispatch(
            <Dispatch as RowsMatmul>::rows_matmul_f32(x.into_dispatch(), w.into_dispatch()),
        ),
    }
}

/// The gated MLP of a stacked gate/up projection: `x [m, k]` against `w [2n, k]` (gate rows,
/// then up rows) → `act(x · gateᵀ) · (x · upᵀ)` `[m, n]`, `act` SiLU or, with `gelu`, GELU-tanh;
/// in one kernel where [`rows_path`] allows.
pub fn rows_gated(x: Tensor<2>, w: Tensor<2>, gelu: bool) -> Tensor<2> {
    match rows_path(&x, &w) {
        RowsPath::Twin => rows_gated_twin(x, w, gelu),
        RowsPath::Wgsl | RowsPath::Cpu => Tensor::from_dispatch(
            <Dispatch as RowsMatmul>::rows_gated(x.into_dispatch(), w.into_dispatch(), gelu),
        ),
    }
}

/// The burn-ops twin of [`rows_gated`].
pub fn rows_gated_twin(x: Tensor<2>, w: Tensor<2>, gelu: bool) -> Tensor<2> {
    let [m, _] = x.dims();
    let n = w.dims()[0] / 2;
    let gu = rows_matmul_twin(x, w);
    let g = gu.clone().slice([0..m, 0..n]);
    let g = if gelu {
        gelu_tanh(g)
    } else {
        burn::tensor::activation::silu(g)
    };
    g * gu.slice([0..m, n..2 * n])
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, PyTorch's `gelu(approximate="tanh")`. The cube
/// is a product (a `powf` of a negative base is undefined in WGSL) and the tanh argument is
/// clamped to ±15, where tanh is ±1 in f32 (some drivers' tanh overflows to NaN far out).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cube = x.clone() * x.clone() * x.clone();
    let inner = ((x.clone() + cube * GELU_CUBIC) * SQRT_2_OVER_PI).clamp(-15.0, 15.0);
    x * (inner.tanh() + 1.0) * 0.5
}

/// √(2/π) and the cubic coefficient of the tanh GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044715;

/// [`gelu_tanh`] of one value, as the CPU kernels compute it.
pub fn gelu_tanh_f32(x: f32) -> f32 {
    let inner = (SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)).clamp(-15.0, 15.0);
    0.5 * x * (1.0 + inner.tanh())
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait RowsMatmul: Backend {
    /// `x [m, k] · w [n, k]ᵀ` in x's dtype.
    #[fusion(meta = |x, w| TensorSpec::new(Shape::new([x.shape[0], w.shape[0]]), x.dtype))]
    fn rows_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x [m, k] · w [n, k]ᵀ` in f32.
    #[fusion(meta = |x, w| TensorSpec::new(Shape::new([x.shape[0], w.shape[0]]), DType::F32))]
    fn rows_matmul_f32(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `act(x · gateᵀ) · (x · upᵀ)` for `w` = gate rows then up rows; SiLU, or GELU-tanh with
    /// `gelu`.
    #[fusion(meta = |x, w, _gelu| TensorSpec::new(Shape::new([x.shape[0], w.shape[0] / 2]), x.dtype))]
    fn rows_gated(x: FloatTensor<Self>, w: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self>;
}

pub(crate) const SHADER: Shader = shader!("rows_matmul.wgsl");

struct RowsSource {
    /// `[m, k, n]` (n outputs: half the weight's rows when gated).
    shape: [usize; 3],
    gated: bool,
    /// The gate's activation is GELU-tanh rather than SiLU.
    gelu: bool,
    f16: bool,
    /// f32 outputs from f16 operands.
    out_f32: bool,
}

impl KernelSource for RowsSource {
    fn source(&self) -> SourceTemplate {
        let [m, k, n] = self.shape;
        SHADER
            .template(self.f16)
            .register("m", m.to_string())
            .register("k", k.to_string())
            .register("n", n.to_string())
            .register("cols", COLS.to_string())
            .register("lanes", LANES.to_string())
            .register("wg", (COLS * LANES).to_string())
            .register("gated", self.gated.to_string())
            .register("gelu", self.gelu.to_string())
            .register(
                "out",
                if self.f16 && !self.out_f32 {
                    "f16"
                } else {
                    "f32"
                },
            )
            .register(
                "partial",
                ((1 + self.gated as usize) * COLS * m * LANES).to_string(),
            )
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shape, self.gated, self.gelu, self.f16, self.out_f32))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shader completed for every template branch (plain, SiLU- and GELU-gated; f32, f16 and f16
/// with f32 outputs), for the registry's validation test.
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for (gated, gelu) in [(false, false), (true, false), (true, true)] {
        for (f16, out_f32) in [(false, false), (true, false), (true, true)] {
            let kernel = RowsSource {
                shape: [3, 64, 40],
                gated,
                gelu,
                f16,
                out_f32,
            };
            out.push(Variant::of(&kernel, &SHADER, f16));
        }
    }
    out
}

/// Launches the kernel; the output is in x's dtype, or f32 with `out_f32`.
fn launch_rows(x: CubeTensor, w: CubeTensor, gated: Option<bool>, out_f32: bool) -> CubeTensor {
    let (gelu, gated) = (gated == Some(true), gated.is_some());
    let dtype = if out_f32 { DType::F32 } else { x.dtype };
    let f16 = reads_f16(&x) && w.dtype == DType::F16;
    let elem = elem_dtype(f16);
    let out = if out_f32 { DType::F32 } else { elem };
    let (x, w) = (contiguous_as(x, elem), contiguous_as(w, elem));
    let [m, k] = x.shape().dims::<2>();
    let n = w.shape().dims::<2>()[0] / (1 + gated as usize);
    let y = new_tensor(&x, Shape::new([m, n]), out);
    if m * n > 0 {
        let kernel = RowsSource {
            shape: [m, k, n],
            gated,
            gelu,
            f16,
            out_f32,
        };
        launch_wgsl(
            kernel,
            (COLS * LANES) as u32,
            n.div_ceil(COLS),
            &[&x, &w, &y],
        );
    }
    cast_to(y, dtype)
}

impl RowsMatmul for CubeBackend {
    fn rows_matmul(x: CubeTensor, w: CubeTensor) -> CubeTensor {
        launch_rows(x, w, None, false)
    }

    fn rows_matmul_f32(x: CubeTensor, w: CubeTensor) -> CubeTensor {
        launch_rows(x, w, None, true)
    }

    fn rows_gated(x: CubeTensor, w: CubeTensor, gelu: bool) -> CubeTensor {
        launch_rows(x, w, Some(gelu), false)
    }
}

/// `x [m, k] · w [n, k]ᵀ` as a row-major `[m, n]` vector.
fn cpu_rows(x: FloatTensor<Flex>, w: FloatTensor<Flex>) -> Vec<f32> {
    let [m, k] = x.shape().dims::<2>();
    let [n, _] = w.shape().dims::<2>();
    if m == 0 || n == 0 {
        return vec![];
    }
    let (x, w) = (cpu::f32_dense(x), cpu::f32_dense(w));
    let (xs, ws) = (cpu::read(&x), cpu::read(&w));
    // [n, m]: each output column's m values together, so tasks own disjoint slices.
    let mut out_t = vec![0f32; n * m];
    let task = |(c, out): (usize, &mut [f32])| {
        let rows = &ws[c * CHUNK * k..(c * CHUNK + out.len() / m) * k];
        columns(xs, rows, m, k, out);
    };
    if m * n * k < PARALLEL_WORK {
        out_t.chunks_mut(CHUNK * m).enumerate().for_each(task);
    } else {
        out_t.par_chunks_mut(CHUNK * m).enumerate().for_each(task);
    }
    let mut out = vec![0f32; m * n];
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            out[r * n + j] = v;
        }
    }
    out
}

impl RowsMatmul for Flex {
    fn rows_matmul(x: FloatTensor<Flex>, w: FloatTensor<Flex>) -> FloatTensor<Flex> {
        let m = x.shape().dims::<2>()[0];
        let n = w.shape().dims::<2>()[0];
        cpu::from_f32(cpu_rows(x, w), [m, n])
    }

    fn rows_matmul_f32(x: FloatTensor<Flex>, w: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // The CPU path runs only f32 operands (see `rows_path`), whose output is f32 already.
        Self::rows_matmul(x, w)
    }

    fn rows_gated(x: FloatTensor<Flex>, w: FloatTensor<Flex>, gelu: bool) -> FloatTensor<Flex> {
        let m = x.shape().dims::<2>()[0];
        let n = w.shape().dims::<2>()[0] / 2;
        let gu = cpu_rows(x, w); // [m, 2n]
        let mut out = Vec::with_capacity(m * n);
        // (chunks_exact panics on 0: an MLP without outputs has nothing to write.)
        for row in gu.chunks_exact(2 * n.max(1)) {
            let (gate, up) = row.split_at(n);
            out.extend(gate.iter().zip(up).map(|(&g, &u)| {
                let a = if gelu {
                    gelu_tanh_f32(g)
                } else {
                    cpu::silu_sigmoid(g).0
                };
                a * u
            }));
        }
        cpu::from_f32(out, [m, n])
    }
}

/// `out[j·m + r] = x_r · w_j` for the weight rows `w` (`[out.len() / m, k]`).
fn columns(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features this copy is compiled for were just detected.
        unsafe { columns_avx2(x, w, m, k, out) };
        return;
    }
    columns_generic::<false>(x, w, m, k, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    columns_generic::<true>(x, w, m, k, out);
}

#[inline(always)]
fn columns_generic<const FMA: bool>(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    for (wj, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        for (r, o) in o.iter_mut().enumerate() {
            *o = dot::<FMA>(&x[r * k..(r + 1) * k], wj);
        }
    }
}

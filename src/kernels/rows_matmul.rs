//! `x · wᵀ` for the few rows of a decode step on the CPU backend: `x [m, k]` against a weight in
//! Hugging Face layout `w [n, k]` (each output's weights contiguous), for m ≤ [`MAX_ROWS`].
//!
//! A decode step reads every weight once for a handful of rows, so it is bound by memory, not
//! arithmetic; a general GEMM tiles for reuse that m ≤ 16 rows cannot give (the gemm crate's
//! 16-row micro-kernel runs half empty at 8 rows). Here each weight row is streamed once and
//! dotted with every input row while it is in cache, the outputs split across threads. The inner
//! loop is written for the auto-vectoriser (8 independent lanes); on x86-64 a copy compiled for
//! AVX2 + FMA is picked at run time, elsewhere (aarch64 NEON) the baseline vectorises already.
//!
//! On wgpu the call sites keep burn's matmul (which burn's fusion merges with what follows);
//! the CPU kernel's reference in the tests is the plain `x.matmul(w.transpose())`.

use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::cpu;
use super::sample::is_cpu;

/// Above this many rows a tiled GEMM wins (weights are reused across rows).
pub const MAX_ROWS: usize = 16;

/// Weights smaller than this many elements stay in cache between steps, so a tiled GEMM (which
/// reduces fewer partial sums) is faster there.
pub const MIN_WEIGHT: usize = 1 << 17;

/// Outputs per parallel task: enough work per task to amortise scheduling.
const CHUNK: usize = 64;

/// Below this many multiply-adds one thread is faster than handing out tasks (tiny models).
pub(crate) const PARALLEL_WORK: usize = 1 << 18;

/// `x [m, k] · w [n, k]ᵀ → [m, n]`: this kernel on the CPU backend for f32 with m ≤
/// [`MAX_ROWS`] and a weight too large to stay in cache, burn's matmul against the transposed
/// view otherwise.
pub fn rows_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let [m, _] = x.dims();
    let [n, k] = w.dims();
    let cpu = is_cpu(&x.device());
    let f32 = x.dtype() == DType::F32 && w.dtype() == DType::F32;
    if !cpu || m > MAX_ROWS || n * k < MIN_WEIGHT || !f32 {
        return x.matmul(w.transpose());
    }
    let (x, w) = (x.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(<burn::backend::Dispatch as RowsMatmul>::rows_matmul(x, w))
}

#[burn::backend::backend_extension(Flex)]
pub trait RowsMatmul: burn::backend::Backend {
    fn rows_matmul(
        x: burn::backend::tensor::FloatTensor<Self>,
        w: burn::backend::tensor::FloatTensor<Self>,
    ) -> burn::backend::tensor::FloatTensor<Self>;
}

impl RowsMatmul for Flex {
    fn rows_matmul(
        x: burn::backend::tensor::FloatTensor<Flex>,
        w: burn::backend::tensor::FloatTensor<Flex>,
    ) -> burn::backend::tensor::FloatTensor<Flex> {
        let [m, k] = x.shape().dims::<2>();
        let [n, _] = w.shape().dims::<2>();
        if m == 0 || n == 0 {
            return cpu::from_f32(vec![], [m, n]);
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

/// Dot product in 8 independent lanes (a strict left-to-right sum would not vectorise).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] = if FMA {
                x[l].mul_add(y[l], acc[l])
            } else {
                acc[l] + x[l] * y[l]
            };
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// [`dot`] for the other CPU kernels of this module's family (attention scores, norms).
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot::<false>(a, b)
}

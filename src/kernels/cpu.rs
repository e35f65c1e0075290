//! What the kernels written in Rust for the CPU backend (burn-flex) share, the CPU half of
//! [`super::common`]: storage access (its tensors are reference-counted byte buffers with a
//! strided layout, and these kernels want dense f32 slices; a decode step's tensors are already
//! dense f32, so nothing here copies on the hot path, and a shared or strided tensor is copied
//! once, as burn's own in-place ops do), the dot product and the threading threshold.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::{DType, Flex};
use burn::tensor::TensorData;

/// `t` as dense f32 (cast and made contiguous where it is not).
pub fn f32_dense(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        Flex::float_cast(t, DType::F32.into())
    };
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The elements of a tensor from [`f32_dense`], in row-major order.
pub fn read(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32_dense gives a contiguous f32 tensor")
}

/// Mutable elements of a tensor from [`f32_dense`]; copies the buffer first if it is shared.
pub fn write(t: &mut FlexTensor) -> &mut [f32] {
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .expect("f32_dense gives a contiguous tensor");
    &mut t.storage_mut::<f32>()[start..end]
}

/// An int tensor's values (positions, target ids).
pub fn positions(t: FlexTensor) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

pub fn from_f32(values: Vec<f32>, shape: impl Into<burn::backend::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `(silu(g), sigmoid(g))`, the SiLU as the decode step's SwiGLU has always computed it.
pub fn silu_sigmoid(g: f32) -> (f32, f32) {
    let d = 1.0 + (-g).exp();
    (g / d, 1.0 / d)
}

/// Back to the caller's dtype where the kernel computed in f32.
pub fn cast_back(t: FlexTensor, dtype: DType) -> FlexTensor {
    if dtype == DType::F32 {
        t
    } else {
        Flex::float_cast(t, dtype.into())
    }
}

/// Below this many multiply-adds one thread is faster than handing out tasks (tiny models).
pub(crate) const PARALLEL_WORK: usize = 1 << 18;

/// Dot product in 8 independent lanes (a strict left-to-right sum would not vectorise); `FMA`
/// fuses the multiply-adds (for a copy compiled with FMA, as `rows_matmul`'s AVX2 one).
#[inline(always)]
pub(crate) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
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

/// [`dot`] without FMA: attention scores, norms.
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot::<false>(a, b)
}

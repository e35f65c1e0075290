//! Storage access for the decode kernels written in Rust for the CPU backend (burn-flex): its
//! tensors are reference-counted byte buffers with a strided layout, and these kernels want
//! dense f32 slices. A decode step's tensors are already dense f32, so nothing here copies on the
//! hot path; a shared or strided tensor is copied once, as burn's own in-place ops do.

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

//! Hand-written kernels on the hot paths (WGSL for wgpu; Rust loops for the CPU backend's decode
//! step and training step), each next to its burn-ops twin.
//!
//! A kernel is its shader in `shaders/`, its launch/twin file here and its line in
//! [`registry::KERNELS`] (which `wgspin bench kernels` and the shader tests go through). What the
//! launches share is in [`common`] (WGSL side: devices, dtypes, outputs, sources with the WGSL
//! prelude `shaders/prelude.wgsl`, launch) and `cpu` (the CPU kernels' storage access).

pub mod attention;
pub mod bench;
pub mod common;
mod cpu;
mod cpu_flash;
mod cpu_norm_rope;
mod cpu_train;
pub mod flash_attention;
pub mod flash_wgsl;
pub mod logprobs;
pub mod lse;
pub mod norm;
pub mod norm_train;
pub mod optim_step;
pub mod pack_flat;
pub mod registry;
pub mod rope_cache;
pub mod rope_train;
pub mod rows_matmul;
pub mod sample;
pub mod softmax;
pub mod swiglu;

use burn::tensor::{DType, FloatDType, Tensor};

/// Added to the scores of masked keys, by the model's masks and the kernels' alike. Finite, so a
/// fully masked (padding) query row gives a uniform distribution instead of NaN.
pub const MASKED: f32 = -1.0e9;

/// `t` in `dtype` (a no-op when it already is).
pub fn like<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

//! Hand-written kernels on the hot paths (WGSL for wgpu; Rust loops for the CPU backend's decode
//! step and training step), each next to its burn-ops twin.

pub mod attention;
mod cpu;
mod cpu_train;
mod cube;
pub mod logprobs;
pub mod lse;
pub mod norm;
pub mod optim_step;
pub mod rope_cache;
pub mod rows_matmul;
pub mod sample;
pub mod softmax;
pub mod swiglu;

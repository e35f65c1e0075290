//! Hand-written kernels on the hot paths (WGSL for wgpu; for the decode step also Rust loops
//! for the CPU backend), each next to its burn-ops twin.

pub mod attention;
mod cpu;
mod cube;
pub mod logprobs;
pub mod lse;
pub mod norm;
pub mod rope_cache;
pub mod rows_matmul;
pub mod sample;

//! Hand-written WGSL kernels on the hot paths, each next to its burn-ops twin.

pub mod attention;
pub mod logprobs;
pub mod sample;

//! wgspin: SPIN (Self-Play fIne-tuNing) of small language models on any GPU wgpu reaches
//! (Vulkan, Metal, DX12), with a CPU fallback. The folders follow the concerns (see
//! ARCHITECTURE.md): the Hugging Face and GGUF formats at the edges, the model and its kernels,
//! the data, generation, training and the SPIN loop over them, and the reporting of it all.

pub mod data;
pub mod device;
pub mod error;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod job;
pub mod kernels;
pub mod load;
pub mod manifest;
pub mod model;
pub mod outputs;
pub mod report;
pub mod rng;
pub mod spin;
pub mod train;

pub use error::{Error, Result};
pub use load::bundle::ModelBundle;

//! wgspin: SPIN (Self-Play fIne-tuNing) of small language models on any GPU wgpu reaches
//! (Vulkan, Metal, DX12), with a CPU fallback. See ARCHITECTURE.md for the module map.

pub mod bench;
pub mod bundle;
pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod hf_names;
pub mod kernels;
pub mod model;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod runtime_cache;
pub mod score;
pub mod sft;
pub mod spin;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use bundle::ModelBundle;
pub use error::{Error, Result};

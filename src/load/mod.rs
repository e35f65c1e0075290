//! Loading, above the formats and the model: a model given as a Hugging Face folder, a GGUF file or
//! a PEFT adapter folder, turned into a model on a device (`bundle.rs`); checkpoints `transformers`
//! loads written back (`checkpoint.rs`); PEFT adapters in and out (`adapter.rs`).

pub mod adapter;
pub mod bundle;
pub mod checkpoint;
pub mod source;

pub use source::ModelSource;

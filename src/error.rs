//! Typed errors of the wgspin library. Every variant names the file, line or tensor at fault and,
//! where there is one, how to fix it; the CLI adds context on top with anyhow.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not found. {hint}")]
    MissingFile { path: PathBuf, hint: String },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: unsupported model_type {model_type:?}; wgspin supports {supported}")]
    UnsupportedModel {
        path: PathBuf,
        model_type: String,
        supported: String,
    },

    #[error(
        "{path}: refusing to load pickle weights (.bin/.pt/.pth files can run arbitrary code when loaded). \
         Convert them to safetensors first, e.g. in Python: \
         `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
    )]
    PickleWeights { path: PathBuf },

    #[error("{path}: tensor {name:?}: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },

    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// A GGUF file that is malformed, truncated or uses something wgspin does not support.
    #[error("{path}: GGUF: {message}")]
    Gguf { path: PathBuf, message: String },

    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("chat template: {message}")]
    ChatTemplate { message: String },

    #[error("{path}:{line}: {message}")]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A data file as a whole is unusable (not a readable Parquet file, or no usable rows).
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },

    #[error("server {url}: {message}")]
    Server { url: String, message: String },

    #[error("device: {0}")]
    Device(String),

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

//! What the model loader reads checkpoint tensors from, by Hugging Face name: safetensors files
//! ([`WeightFiles`]), tensors already in memory ([`TensorMap`], a dequantized GGUF file), or
//! random weights made from a config (`model::random_init`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::weights::{HostTensor, StoredDtype, WeightFiles};
use crate::error::{Error, Result};

/// Where the model loader takes checkpoint tensors from (Hugging Face names and shapes):
/// safetensors files, or tensors already in memory (a dequantized GGUF file).
pub trait TensorSource {
    /// Every tensor name, sorted.
    fn tensor_names(&self) -> Vec<String>;
    /// Row-major shape without reading the data.
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Storage type without reading the data; an error names a missing tensor or a dtype that
    /// cannot be widened to f32.
    fn tensor_dtype(&self, name: &str) -> Result<StoredDtype>;
    /// File to name in errors about `name`.
    fn source_path(&self, name: &str) -> PathBuf;
    /// The tensor widened to f32.
    fn read_tensor(&self, name: &str) -> Result<HostTensor>;
}

impl TensorSource for WeightFiles {
    fn tensor_names(&self) -> Vec<String> {
        self.names().map(str::to_string).collect()
    }
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|(shape, _)| shape)
    }
    fn tensor_dtype(&self, name: &str) -> Result<StoredDtype> {
        self.dtype(name)
    }
    fn source_path(&self, name: &str) -> PathBuf {
        self.path_of(name)
    }
    fn read_tensor(&self, name: &str) -> Result<HostTensor> {
        self.read(name)
    }
}

/// Tensors held in memory under Hugging Face names, read from `path`.
pub struct TensorMap {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl TensorMap {
    fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            name: name.into(),
            message: "missing from the checkpoint".into(),
        })
    }
}

impl TensorSource for TensorMap {
    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }
    fn tensor_dtype(&self, name: &str) -> Result<StoredDtype> {
        Ok(self.get(name)?.dtype)
    }
    fn source_path(&self, _name: &str) -> PathBuf {
        self.path.clone()
    }
    fn read_tensor(&self, name: &str) -> Result<HostTensor> {
        self.get(name).cloned()
    }
}

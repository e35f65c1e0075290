//! Reading Hugging Face safetensors checkpoints (one file or sharded with
//! `model.safetensors.index.json`) into host f32 buffers; f32, f16 and bf16 on disk.
//! Pickle checkpoints (`.bin`, `.pt`, `.pth`) are refused: unpickling can run arbitrary code.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors, View};

use crate::error::{Error, Result};

/// Floating-point storage type of a checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
}

impl StoredDtype {
    /// Name used by `torch_dtype` in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::F16 => "float16",
            StoredDtype::BF16 => "bfloat16",
        }
    }

    /// Bytes per value on disk.
    pub fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
        }
    }

    /// The storage types wgspin widens to f32; `None` for every other safetensors dtype.
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(StoredDtype::F32),
            Dtype::F16 => Some(StoredDtype::F16),
            Dtype::BF16 => Some(StoredDtype::BF16),
            _ => None,
        }
    }

    fn to_safetensors(self) -> Dtype {
        match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
        }
    }
}

/// A tensor read to the host and widened to f32.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub dtype: StoredDtype,
}

struct Shard {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// All safetensors files of a checkpoint, with an index from tensor name to file.
pub struct WeightFiles {
    shards: Vec<Shard>,
    index: BTreeMap<String, usize>,
}

fn is_pickle(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("bin" | "pt" | "pth" | "ckpt")
    )
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

impl WeightFiles {
    /// Finds the weights of a model folder: the sharded index, `model.safetensors`, or else every
    /// `*.safetensors` file there.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    path: index_path.clone(),
                    message: "missing `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let all = list_dir(dir)?;
            let st: Vec<PathBuf> = all
                .iter()
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
                .cloned()
                .collect();
            if st.is_empty() {
                if let Some(p) = all.iter().find(|p| is_pickle(p)) {
                    return Err(Error::PickleWeights { path: p.clone() });
                }
                return Err(Error::MissingFile {
                    path: dir.join("model.safetensors"),
                    hint: "The model folder has no *.safetensors weights.".into(),
                });
            }
            st
        };
        Self::open_files(&files)
    }

    /// Opens the given safetensors files; a tensor name must live in exactly one of them.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = vec![];
        let mut index = BTreeMap::new();
        for path in files {
            if is_pickle(path) {
                return Err(Error::PickleWeights { path: path.clone() });
            }
            let bytes = std::fs::read(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::MissingFile {
                    path: path.clone(),
                    hint: "A weight shard named in the index is missing: download it again.".into(),
                },
                _ => Error::io(path, e),
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&bytes).map_err(|e| Error::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for name in metadata.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(Error::Tensor {
                        path: path.clone(),
                        name: name.clone(),
                        message: "appears in more than one weight file".into(),
                    });
                }
            }
            shards.push(Shard {
                path: path.clone(),
                bytes,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self { shards, index })
    }

    /// Names of every tensor, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// File that holds `name` (or the first file, for error messages about missing tensors).
    pub fn path_of(&self, name: &str) -> PathBuf {
        let i = self.index.get(name).copied().unwrap_or(0);
        self.shards
            .get(i)
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// Shape and storage type of `name` without reading its data.
    pub fn info(&self, name: &str) -> Option<(Vec<usize>, Dtype)> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.metadata.info(name)?;
        Some((info.shape.clone(), info.dtype))
    }

    fn missing(&self, name: &str) -> Error {
        Error::Tensor {
            path: self.path_of(name),
            name: name.into(),
            message: "missing from the checkpoint".into(),
        }
    }

    /// Storage type of `name` from its file's header; an error for a dtype wgspin cannot widen.
    pub fn dtype(&self, name: &str) -> Result<StoredDtype> {
        let (_, dtype) = self.info(name).ok_or_else(|| self.missing(name))?;
        StoredDtype::from_safetensors(dtype).ok_or_else(|| Error::Tensor {
            path: self.path_of(name),
            name: name.into(),
            message: format!("dtype {dtype:?} is not supported (expected F32, F16 or BF16)"),
        })
    }

    /// Reads `name` and widens it to f32.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let shard_index = *self.index.get(name).ok_or_else(|| self.missing(name))?;
        let shard = &self.shards[shard_index];
        let err = |message: String| Error::Tensor {
            path: shard.path.clone(),
            name: name.into(),
            message,
        };
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| err("missing from the header".into()))?;
        let (start, end) = info.data_offsets;
        let bytes = shard
            .bytes
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| err("data offsets point past the end of the file".into()))?;
        let (data, dtype) = match info.dtype {
            Dtype::F32 => (
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                StoredDtype::F32,
            ),
            Dtype::F16 => (
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                StoredDtype::F16,
            ),
            Dtype::BF16 => (
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                StoredDtype::BF16,
            ),
            other => {
                return Err(err(format!(
                    "dtype {other:?} is not supported (expected F32, F16 or BF16)"
                )));
            }
        };
        let data: Vec<f32> = data;
        let numel: usize = info.shape.iter().product();
        if data.len() != numel {
            return Err(err(format!(
                "holds {} values but its shape {:?} needs {numel}",
                data.len(),
                info.shape
            )));
        }
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
            dtype,
        })
    }
}

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

/// A host tensor as safetensors' writer sees it: encoded to `dtype` only when the writer asks for
/// its bytes, one tensor at a time, so a file is written without an encoded copy of the model.
struct Encoded<'a> {
    tensor: &'a HostTensor,
    dtype: StoredDtype,
}

impl View for Encoded<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let data = &self.tensor.data;
        if cfg!(target_endian = "little") && self.dtype == StoredDtype::F32 {
            return Cow::Borrowed(bytemuck::cast_slice(data));
        }
        let mut out = vec![0u8; self.data_len()];
        let chunks = out.chunks_exact_mut(self.dtype.size()).zip(data);
        match self.dtype {
            StoredDtype::F32 => chunks.for_each(|(c, v)| c.copy_from_slice(&v.to_le_bytes())),
            StoredDtype::F16 => {
                chunks.for_each(|(c, v)| c.copy_from_slice(&f16::from_f32(*v).to_le_bytes()))
            }
            StoredDtype::BF16 => {
                chunks.for_each(|(c, v)| c.copy_from_slice(&bf16::from_f32(*v).to_le_bytes()))
            }
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.tensor.data.len() * self.dtype.size()
    }
}

/// Writes f32 host tensors to a safetensors file in the given storage type. Written to a temporary
/// file next to `path` and renamed, so a crash never leaves a half-written checkpoint. Each
/// tensor is encoded as it is written: besides `tensors`, at most one encoded tensor is in memory.
pub fn write_safetensors<'a, S>(
    path: &Path,
    tensors: impl IntoIterator<Item = (S, &'a HostTensor)>,
    dtype: StoredDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()>
where
    S: AsRef<str> + Ord + Display,
{
    let mut views = vec![];
    for (name, tensor) in tensors {
        // The header's offsets come from the data lengths: a shape that disagrees with them would
        // make a file no reader accepts.
        let numel: usize = tensor.shape.iter().product();
        if numel != tensor.data.len() {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                message: format!(
                    "holds {} values but its shape {:?} needs {numel}",
                    tensor.data.len(),
                    tensor.shape
                ),
            });
        }
        views.push((name, Encoded { tensor, dtype }));
    }
    crate::fsutil::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| match e {
            SafeTensorError::IoError(e) => Error::io(path, e),
            e => Error::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_dtype_is_named_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.safetensors");
        let bytes = [0u8; 16];
        let view = safetensors::tensor::TensorView::new(Dtype::I64, vec![2], &bytes).unwrap();
        safetensors::serialize_to_file([("ids", view)], None, &path).unwrap();
        let files = WeightFiles::open_files(std::slice::from_ref(&path)).unwrap();
        for e in [
            files.tensor_dtype("ids").unwrap_err(),
            files.read("ids").unwrap_err(),
        ] {
            let msg = e.to_string();
            assert!(matches!(e, Error::Tensor { .. }), "{msg}");
            assert!(
                msg.contains("ids.safetensors") && msg.contains("I64"),
                "{msg}"
            );
        }
    }
}

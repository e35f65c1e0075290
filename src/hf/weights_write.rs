//! Writing safetensors files (checkpoints, adapters, optimizer state) from host f32 tensors in a
//! chosen storage type, one tensor encoded at a time; the reading half is `weights.rs`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensorError, View};

use super::weights::{HostTensor, StoredDtype};
use crate::error::{Error, Result};

/// A host tensor as safetensors' writer sees it: encoded to `dtype` only when the writer asks for
/// its bytes, one tensor at a time, so a file is written without an encoded copy of the model.
pub(super) struct Encoded<'a> {
    pub(super) tensor: &'a HostTensor,
    pub(super) dtype: StoredDtype,
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

/// The header metadata transformers writes (`{"format": "pt"}`), which its loader checks.
pub fn pt_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
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

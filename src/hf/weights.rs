//! Reading Hugging Face safetensors checkpoints (one file or sharded with
//! `model.safetensors.index.json`) into host f32 buffers; f32, f16 and bf16 on disk.
//! Pickle checkpoints (`.bin`, `.pt`, `.pth`) are refused: unpickling can run arbitrary code.
//!
//! Files are memory-mapped rather than read: a tensor is widened straight from the mapping into
//! its f32 buffer, and on Unix its file pages are handed back once it has been read (on Linux
//! they leave the resident set at once; macOS only deactivates them), so loading does not hold
//! the file's bytes beside the widened model. Writing is in `weights_write.rs`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};

pub use super::weights_write::{pt_metadata, write_safetensors};

/// Floating-point storage type of a checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

    pub(super) fn to_safetensors(self) -> Dtype {
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
    /// The whole file, mapped read-only (see [`map_file`]), or already in memory.
    map: Contents,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// A safetensors file's bytes: mapped from disk, or handed over in memory.
enum Contents {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Contents {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Contents::Mapped(m) => m,
            Contents::Owned(v) => v,
        }
    }
}

/// All safetensors files of a checkpoint, with an index from tensor name to file.
///
/// Keep it only as long as loading takes: the files stay mapped while it lives, and Windows
/// refuses to replace or delete a mapped file (a checkpoint written over the model folder).
pub struct WeightFiles {
    shards: Vec<Shard>,
    index: BTreeMap<String, usize>,
}

/// A pickle checkpoint, by extension: refused, since unpickling can run arbitrary code.
pub(crate) fn is_pickle(path: &Path) -> bool {
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

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            hint: "A weight shard named in the index is missing: download it again.".into(),
        },
        _ => Error::io(path, e),
    })?;
    // SAFETY: the file is opened read-only and the mapping is only ever handed out as shared
    // `&[u8]` slices, so this process never writes through it. What a mapping cannot rule out is
    // another process changing the file while it is mapped: one rewritten in place changes the
    // values read, and one truncated under us makes the next touch of a lost page raise SIGBUS
    // (the process dies; it does not read garbage). Model files are not edited while a model
    // loads, and this is the tradeoff the safetensors loaders of transformers and candle make to
    // avoid copying multi-gigabyte files into memory.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Header of a mapped safetensors file: (data section start, metadata).
fn read_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata)> {
    // `read_metadata` checks the header's offsets against `bytes.len()`: they must be contiguous
    // and end exactly at the end of the file, so no later slice of the data section can fall
    // outside the mapping.
    match SafeTensors::read_metadata(bytes) {
        Ok((header_len, metadata)) => Ok((8 + header_len, metadata)),
        Err(SafeTensorError::MetadataIncompleteBuffer) => Err(Error::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "the file is {} bytes, not the size its header describes (truncated or an \
                 incomplete download?)",
                bytes.len()
            ),
        }),
        Err(SafeTensorError::TensorInvalidInfo) => Err(Error::Safetensors {
            path: path.to_path_buf(),
            message: mis_sized_tensor(bytes)
                .unwrap_or_else(|| "a tensor's shape and dtype do not match its byte range".into()),
        }),
        Err(e) => Err(Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Names the tensor whose shape × dtype size differs from its `data_offsets` span (the
/// safetensors crate reports that without a name). Reads the header JSON again; `None` if it
/// cannot say.
fn mis_sized_tensor(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    for (name, info) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let bits = serde_json::from_value::<Dtype>(info.get("dtype")?.clone())
            .ok()?
            .bitsize() as u64;
        let u64s = |key: &str| -> Option<Vec<u64>> {
            info.get(key)?
                .as_array()?
                .iter()
                .map(|d| d.as_u64())
                .collect()
        };
        let (shape, offsets) = (u64s("shape")?, u64s("data_offsets")?);
        let want = shape
            .iter()
            .try_fold(bits, |a: u64, &d| a.checked_mul(d))
            .map(|b| b.div_ceil(8));
        let have = offsets.get(1)?.checked_sub(*offsets.first()?);
        if want != have {
            return Some(format!(
                "tensor `{name}`: shape {shape:?} in {} needs {} bytes but its data_offsets {offsets:?} span {}",
                info.get("dtype")?.as_str()?,
                want.map_or("more than 2^64".to_string(), |w| w.to_string()),
                have.map_or("a negative range".to_string(), |h| h.to_string()),
            ));
        }
    }
    None
}

/// Widens little-endian values of `dtype` to f32 into a buffer allocated once at its final size.
/// `bytes.len()` must be a multiple of `dtype.size()`.
fn widen(bytes: &[u8], dtype: StoredDtype) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / dtype.size()];
    // Casting the f32 destination to bytes is always aligned, so f32 is one copy whatever the
    // file's alignment. half's slice conversion (vectorised for f16 where the CPU can) needs
    // 2-byte alignment, which a mapped tensor need not have: the format does not promise it.
    #[cfg(target_endian = "little")]
    match dtype {
        StoredDtype::F32 => {
            bytemuck::cast_slice_mut::<f32, u8>(&mut out).copy_from_slice(bytes);
            return out;
        }
        StoredDtype::F16 => {
            if let Ok(h) = bytemuck::try_cast_slice::<u8, f16>(bytes) {
                h.convert_to_f32_slice(&mut out);
                return out;
            }
        }
        StoredDtype::BF16 => {
            if let Ok(h) = bytemuck::try_cast_slice::<u8, bf16>(bytes) {
                h.convert_to_f32_slice(&mut out);
                return out;
            }
        }
    }
    let n = dtype.size();
    for (v, c) in out.iter_mut().zip(bytes.chunks_exact(n)) {
        *v = match dtype {
            StoredDtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            StoredDtype::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
            StoredDtype::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        };
    }
    out
}

impl WeightFiles {
    /// Finds the weights of a model folder: the sharded index, `model.safetensors`, or else every
    /// `*.safetensors` file there.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open_files(&Self::paths_in(dir)?)
    }

    /// The weight files [`Self::open_dir`] reads (the index's shards, `model.safetensors`, or
    /// every `*.safetensors`), without opening them.
    pub fn paths_in(dir: &Path) -> Result<Vec<PathBuf>> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                crate::fsutil::read_text(&index_path).map_err(|e| Error::io(&index_path, e))?;
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
        Ok(files)
    }

    /// Opens the given safetensors files (headers only; no tensor data is read); a tensor name
    /// must live in exactly one of them.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = vec![];
        let mut index = BTreeMap::new();
        for path in files {
            if is_pickle(path) {
                return Err(Error::PickleWeights { path: path.clone() });
            }
            let map = Contents::Mapped(map_file(path)?);
            Self::add_shard(&mut shards, &mut index, path, map)?;
        }
        Ok(Self { shards, index })
    }

    /// One safetensors file already in memory (`name` is only used in messages), checked as
    /// [`WeightFiles::open_files`] checks a file on disk.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Self> {
        let (mut shards, mut index) = (vec![], BTreeMap::new());
        Self::add_shard(&mut shards, &mut index, name, Contents::Owned(bytes))?;
        Ok(Self { shards, index })
    }

    fn add_shard(
        shards: &mut Vec<Shard>,
        index: &mut BTreeMap<String, usize>,
        path: &Path,
        map: Contents,
    ) -> Result<()> {
        let (data_start, metadata) = read_header(path, &map)?;
        for name in metadata.tensors().keys() {
            if index.insert(name.clone(), shards.len()).is_some() {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    message: "appears in more than one weight file".into(),
                });
            }
        }
        shards.push(Shard {
            path: path.to_path_buf(),
            map,
            data_start,
            metadata,
        });
        Ok(())
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
        let dtype = self.dtype(name)?;
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| err("missing from the header".into()))?;
        // No overflow below: `read_header` checked every offset and size against the file.
        let (start, end) = info.data_offsets;
        let bytes = shard
            .map
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| err("data offsets point past the end of the file".into()))?;
        let numel: usize = info.shape.iter().product();
        if bytes.len() != numel * dtype.size() {
            return Err(err(format!(
                "holds {} values but its shape {:?} needs {numel}",
                bytes.len() / dtype.size(),
                info.shape
            )));
        }
        let data = widen(bytes, dtype);
        release_pages(shard, shard.data_start + start, bytes.len());
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
            dtype,
        })
    }
}

/// Drops a tensor's file pages from this process's resident set once it has been widened: the
/// loader reads each tensor once, and without this the mapped file would stay resident beside
/// the f32 model until the files are dropped. Only a hint; the page cache keeps the data.
#[cfg(unix)]
fn release_pages(shard: &Shard, offset: usize, len: usize) {
    // SAFETY: the map is a read-only shared file mapping (`Mmap::map`: PROT_READ, MAP_SHARED),
    // so it has no private pages to lose: MADV_DONTNEED only drops them from this process, and
    // the next access refaults them from the page cache, so a slice read later (or by another
    // thread right now) sees the same bytes, the file's, under the same caveat as `map_file`.
    // memmap2 rounds the start down to a page; the range lies inside the map because
    // `read_header` checked every tensor's offsets against the mapped length.
    if let Contents::Mapped(map) = &shard.map {
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }
}

#[cfg(not(unix))]
fn release_pages(_shard: &Shard, _offset: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::source::TensorSource;
    use safetensors::tensor::View;

    fn sample() -> HostTensor {
        // Signs, magnitudes from f16's subnormal range to its largest finite value, and values
        // that round differently in f16 and bf16.
        let mut data: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.377).collect();
        data.extend([1e-6, 65504.0, -0.0, 1.0 + 1e-3]);
        HostTensor {
            shape: vec![4, 7],
            data,
            dtype: StoredDtype::F32,
        }
    }

    #[test]
    fn written_files_read_back_with_header_dtype_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let t = sample();
        for dtype in [StoredDtype::F32, StoredDtype::F16, StoredDtype::BF16] {
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            write_safetensors(&path, [("w", &t)], dtype, None).unwrap();
            let files = WeightFiles::open_files(std::slice::from_ref(&path)).unwrap();
            assert_eq!(files.tensor_dtype("w").unwrap(), dtype);
            let back = files.read("w").unwrap();
            assert_eq!((back.shape.as_slice(), back.dtype), (&[4, 7][..], dtype));
            // Tolerance zero: widening f16/bf16 is exact, so the value read back must be half's
            // own rounding of the original, bit for bit.
            let expected: Vec<f32> = match dtype {
                StoredDtype::F32 => t.data.clone(),
                StoredDtype::F16 => t.data.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
                StoredDtype::BF16 => t.data.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back.data), bits(&expected), "{dtype:?}");
            // The unaligned fallback of `widen` agrees with the aligned path.
            let bytes = crate::hf::weights_write::Encoded { tensor: &t, dtype }
                .data()
                .into_owned();
            let shifted = [&[0u8][..], &bytes].concat();
            assert_eq!(
                bits(&widen(&shifted[1..], dtype)),
                bits(&expected),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        write_safetensors(&path, [("w", &sample())], StoredDtype::BF16, None).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        for keep in [len - 2, len / 2, 12, 4, 0] {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(keep).unwrap();
            drop(f);
            let e = WeightFiles::open_files(std::slice::from_ref(&path))
                .err()
                .unwrap();
            assert!(matches!(e, Error::Safetensors { .. }), "{keep}: {e}");
            assert!(e.to_string().contains("cut.safetensors"), "{keep}: {e}");
        }
    }

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

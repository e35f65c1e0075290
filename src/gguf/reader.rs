//! GGUF (v2/v3) parsing: header, metadata key/values and tensor infos, then tensor data on demand,
//! dequantized to f32. Every count, length and offset comes from an untrusted file, so each is
//! checked against the bytes actually present (checked arithmetic, no allocation sized by the file
//! beyond what the file can hold) and every failure is an [`Error::Gguf`] / [`Error::Tensor`]
//! naming the file, never a panic.
//!
//! Layout: `"GGUF"`, version u32, tensor count u64, kv count u64, kvs (key string, type u32, value),
//! tensor infos (name, n_dims u32, dims u64 × n_dims with the fastest-varying first, type u32,
//! offset u64 relative to the data section), padding to `general.alignment` (default 32), data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dequant::{self, GgmlType};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is treated as a malformed file.
const MAX_NESTING: usize = 4;

/// A metadata value (GGUF value types 0..=12).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and the elements.
    Array(u32, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::Array(..) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// Any integer type that holds a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // The shortest decimal that reads back as this f32 (1e-5, not 9.999999747378752e-6):
            // the number the file's writer stated, before it was rounded to f32.
            MetaValue::F32(v) => format!("{v}").parse().ok(),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(_, items) => Some(items),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension. The row-major shape is the reverse.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte range of the data in the file (checked against the file length).
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    /// Row-major shape (Hugging Face order): the reverse of the ggml dims.
    pub fn shape(&self) -> Vec<usize> {
        // Fits: numel was checked to fit in usize while parsing.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
}

/// Whether `path` looks like a GGUF file (by extension or magic).
pub fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: String) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!(
                "truncated: {what} at byte {} needs {n} bytes but only {remaining} remain (file is {} bytes)",
                self.pos,
                self.bytes.len()
            )));
        }
        let n = n as usize; // ≤ remaining, so fits
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        // Token strings of some vocabularies are not valid UTF-8 on their own; keep them readable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("key {key:?}: invalid bool byte {b}"))),
            },
            8 => MetaValue::Str(self.string(key)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.err(format!("key {key:?}: arrays nested too deeply")));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                // Every element takes at least one byte: a count beyond the remaining bytes is a
                // corrupt file, and the allocation below stays bounded by the file size.
                if count > self.remaining() {
                    return Err(self.err(format!(
                        "key {key:?}: array of {count} elements cannot fit in the {} bytes left",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(elem, items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.err(format!("key {key:?}: unknown metadata value type {other}")));
            }
        })
    }

    /// Magic and version, then (version, tensor count, metadata count).
    fn header(&mut self) -> Result<(u32, u64, u64)> {
        if self.take(4, "magic")? != MAGIC {
            return Err(self.err("not a GGUF file (the first bytes are not \"GGUF\")".into()));
        }
        let version = self.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(self.err(format!(
                "GGUF version {version} is not supported (supported: 2, 3); re-convert the model with a current llama.cpp"
            )));
        }
        let tensor_count = self.u64("tensor count")?;
        let kv_count = self.u64("metadata count")?;
        Ok((version, tensor_count, kv_count))
    }

    fn metadata(&mut self, kv_count: u64) -> Result<BTreeMap<String, MetaValue>> {
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            // A key/value takes at least 12 bytes; huge counts fail here on the first missing byte.
            let key = self.string(&format!("metadata key #{i}"))?;
            let ty = self.u32(&key)?;
            let value = self.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(self.err(format!("metadata key {key:?} appears twice")));
            }
        }
        Ok(metadata)
    }

    /// Tensor info #`i`, as stated.
    fn tensor_info(&mut self, i: u64) -> Result<RawTensorInfo> {
        let name = self.string(&format!("tensor info #{i}"))?;
        let n_dims = self.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(Error::Tensor {
                path: self.path.to_path_buf(),
                name,
                message: format!("has {n_dims} dimensions (GGUF allows at most {MAX_DIMS})"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&name)?);
        }
        let ty = self.u32(&name)?;
        let offset = self.u64(&name)?;
        Ok(RawTensorInfo {
            name,
            dims,
            ty,
            offset,
        })
    }
}

/// `general.alignment` (a power of two), or the default.
fn alignment(path: &Path, metadata: &BTreeMap<String, MetaValue>) -> Result<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
            _ => Err(Error::Gguf {
                path: path.to_path_buf(),
                message: format!("general.alignment must be a power of two, got {v:?}"),
            }),
        },
    }
}

/// A tensor info as the header states it, before its type, size and data range are checked.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

impl RawTensorInfo {
    /// Checks the type, the element count and the data range against the file.
    fn locate(
        self,
        path: &Path,
        data_start: u64,
        alignment: u64,
        file_len: u64,
    ) -> Result<TensorInfo> {
        let RawTensorInfo {
            name,
            dims,
            ty,
            offset,
        } = self;
        let terr = |message: String| Error::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            message,
        };
        let ty = GgmlType::from_id(ty).map_err(&terr)?;
        let numel = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| terr(format!("dims {dims:?} overflow")))?;
        let (block, _) = ty.block();
        if dims.first().is_some_and(|&d| d % block as u64 != 0) {
            return Err(terr(format!(
                "row length {} is not a multiple of the {} block size {block}",
                dims[0],
                ty.name()
            )));
        }
        let size = ty
            .byte_size(numel)
            .ok_or_else(|| terr(format!("dims {dims:?} overflow")))?;
        if offset % alignment != 0 {
            return Err(terr(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(size));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(terr(format!("data offset {offset} overflows")));
        };
        if end > file_len {
            return Err(terr(format!(
                "data (bytes {start}..{end}) runs past the end of the file ({file_len} bytes): the file is truncated or corrupt"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            start: start as usize,
            len: size as usize,
        })
    }
}

fn check_unique_names(path: &Path, tensors: &[TensorInfo]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                name: t.name.clone(),
                message: "appears twice in the GGUF header".into(),
            });
        }
    }
    Ok(())
}

impl GgufFile {
    /// Reads and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: path.to_path_buf(),
                hint: "Pass --model a GGUF file or a Hugging Face model folder.".into(),
            },
            _ => Error::io(path, e),
        })?;
        Self::parse(path, bytes)
    }

    /// Parses GGUF bytes; `path` is only used in messages.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        let (version, tensor_count, kv_count) = c.header()?;
        let metadata = c.metadata(kv_count)?;
        let alignment = alignment(path, &metadata)?;
        let mut raw = vec![];
        for i in 0..tensor_count {
            raw.push(c.tensor_info(i)?);
        }
        let data_start = (c.pos as u64).next_multiple_of(alignment);
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for info in raw {
            tensors.push(info.locate(path, data_start, alignment, file_len)?);
        }
        check_unique_names(path, &tensors)?;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (range checked while parsing).
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.start..info.start + info.len]
    }

    /// Dequantizes a tensor to f32, row-major in [`TensorInfo::shape`] order.
    pub fn dequantize(&self, info: &TensorInfo) -> Vec<f32> {
        let mut out = vec![];
        dequant::dequantize(info.ty, self.raw(info), &mut out);
        out
    }

    fn err(&self, message: String) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message,
        }
    }

    /// A required metadata value, typed by `get`, with an error naming the key.
    pub fn require<T>(&self, key: &str, get: impl Fn(&MetaValue) -> Option<T>) -> Result<T> {
        let v = self
            .get(key)
            .ok_or_else(|| self.err(format!("missing metadata key {key:?}")))?;
        get(v).ok_or_else(|| {
            self.err(format!(
                "metadata key {key:?} has an unexpected value {v:?}"
            ))
        })
    }

    /// An optional metadata value; present with the wrong type is an error.
    pub fn optional<T>(
        &self,
        key: &str,
        get: impl Fn(&MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => get(v).map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata key {key:?} has an unexpected value {v:?}"
                ))
            }),
        }
    }

    /// A string array (e.g. `tokenizer.ggml.tokens`).
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let strings = v.as_array().and_then(|items| {
            items
                .iter()
                .map(MetaValue::as_str)
                .collect::<Option<Vec<_>>>()
        });
        strings
            .map(Some)
            .ok_or_else(|| self.err(format!("metadata key {key:?} is not an array of strings")))
    }

    pub fn gguf_error(&self, message: String) -> Error {
        self.err(message)
    }
}

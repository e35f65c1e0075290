//! What `--model` names, probed once: a Hugging Face folder, a GGUF file, or a PEFT adapter folder
//! with the model it sits on. The jobs resolve it once and ask it what they need (the files a
//! model's identity hashes, an adapter's base) instead of probing the path again at each step.

use std::path::{Path, PathBuf};

use super::adapter::{self, Adapter};
use crate::error::Result;
use crate::manifest::ModelFiles;

/// A model on disk, by kind.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A Hugging Face model folder (config, tokenizer, safetensors).
    Folder(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
    /// A PEFT adapter folder and the model it names as its base.
    Adapter {
        dir: PathBuf,
        base: Box<ModelSource>,
    },
}

impl ModelSource {
    /// Probes `path`: a GGUF file, an adapter folder (whose base must be found), else a model
    /// folder (checked by the loader, which says what is missing).
    pub fn resolve(path: &Path) -> Result<Self> {
        if path.is_file() && crate::gguf::reader::is_gguf(path) {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if adapter::is_adapter_dir(path) {
            let base = Adapter::open(path)?.base_path()?;
            return Ok(Self::Adapter {
                dir: path.to_path_buf(),
                base: Box::new(Self::resolve(&base)?),
            });
        }
        Ok(Self::Folder(path.to_path_buf()))
    }

    /// The folder or file that was named.
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder(p) | Self::Gguf(p) => p,
            Self::Adapter { dir, .. } => dir,
        }
    }

    /// An adapter's base model; `None` for a model.
    pub fn base(&self) -> Option<&ModelSource> {
        match self {
            Self::Adapter { base, .. } => Some(base),
            _ => None,
        }
    }

    /// What the model's identity hashes: the files loading reads (an adapter's config and weights,
    /// a folder's metadata and the weight files the loader opens, a GGUF whole) and its base's.
    pub fn files(&self) -> Result<ModelFiles> {
        let path = self.path();
        // A file (a GGUF, or anything else the loader will refuse by name) is hashed whole.
        let read = if path.is_file() {
            vec![]
        } else {
            super::bundle::files_read(path)?
        };
        Ok(ModelFiles {
            path: path.to_path_buf(),
            read,
            base: match self.base() {
                Some(b) => Some(Box::new(b.files()?)),
                None => None,
            },
        })
    }
}

/// The identity (see [`crate::manifest::model_identity`]) of the model at `path`.
pub fn model_identity(path: &Path) -> Result<serde_json::Value> {
    crate::manifest::model_identity(&ModelSource::resolve(path)?.files()?)
}

/// The base model an adapter folder at `path` names, when it is one and the base is found; what an
/// output must never replace beside the adapter itself. A base that cannot be found is left to the
/// loader, which says why: the lenient twin of [`ModelSource::resolve`]'s lookup, which must find
/// the same base.
pub fn adapter_base(path: &Path) -> Option<PathBuf> {
    if !adapter::is_adapter_dir(path) {
        return None;
    }
    Adapter::open(path).and_then(|a| a.base_path()).ok()
}

//! A checkpoint's tensors against its config, from the headers alone: every name the config implies
//! is there with its shape and a readable storage type, and nothing else is (what the loader and
//! `export-gguf` check before reading a single tensor).

use crate::error::{Error, Result};
use crate::hf::config::ModelConfig;
use crate::hf::names as hf_names;
use crate::hf::source::TensorSource;
use crate::hf::weights::StoredDtype;

/// The layer count of the config against the layers the weights hold, before the name table is
/// built: a config that claims 10⁸ layers would otherwise build 10⁹ names (gigabytes) first.
fn check_layer_count(cfg: &ModelConfig, files: &dyn TensorSource) -> Result<()> {
    let names = files.tensor_names();
    let held = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i + 1);
    // Fewer layers than held: validate names the first unexpected tensor.
    if cfg.num_layers <= held {
        return Ok(());
    }
    let path = names
        .first()
        .map(|n| files.source_path(n))
        .unwrap_or_default();
    Err(Error::Tensor {
        path,
        name: format!("model.layers.{held}"),
        message: format!(
            "the config says {} layers (num_hidden_layers / block_count) but the weights hold {held}; \
             the weights and the config disagree",
            cfg.num_layers
        ),
    })
}

/// Checks names, shapes and storage types of a checkpoint against the config, from its headers
/// alone (nothing is read or widened); returns the storage dtype of the embeddings (what a
/// checkpoint written back should use).
pub fn validate(cfg: &ModelConfig, files: &dyn TensorSource) -> Result<StoredDtype> {
    check_layer_count(cfg, files)?;
    let expected = hf_names::expected_tensors(cfg);
    for (name, shape) in &expected {
        let Some(found) = files.tensor_shape(name) else {
            return Err(Error::Tensor {
                path: files.source_path(name),
                name: name.clone(),
                message: "missing from the checkpoint (does config.json match these weights?)"
                    .into(),
            });
        };
        if &found != shape {
            return Err(Error::Tensor {
                path: files.source_path(name),
                name: name.clone(),
                message: format!(
                    "has shape {found:?} but config.json implies {shape:?}; the weights and config.json disagree"
                ),
            });
        }
        // Every tensor the loader will read, so an unsupported one fails before any is uploaded.
        files.tensor_dtype(name)?;
    }
    for name in files.tensor_names() {
        let name = name.as_str();
        if !expected.iter().any(|(n, _)| n == name) && !hf_names::is_ignorable(cfg, name) {
            return Err(Error::Tensor {
                path: files.source_path(name),
                name: name.into(),
                message: format!(
                    "unexpected tensor for a {} model with this config.json",
                    cfg.family.model_type
                ),
            });
        }
    }
    files.tensor_dtype(hf_names::EMBED)
}

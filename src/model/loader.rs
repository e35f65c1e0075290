//! Builds a [`Transformer`] from checkpoint tensors. Every expected tensor is checked before any
//! is uploaded: the error names the missing, unexpected or mis-shaped tensor and its file.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use super::attention::Attention;
use super::layers::{Linear, Mlp, RmsNorm};
use super::named::params_mut;
use super::{DecoderLayer, Transformer};
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

/// A model of `cfg`'s structure whose parameters are one-element placeholders, for
/// [`params_mut`] to fill by name: the structure (which layers have biases, whether the head is
/// tied) comes from the config, the names from [`hf_names`] only.
fn skeleton(cfg: &ModelConfig, device: &Device) -> Transformer {
    let one = || Param::from_tensor(Tensor::<1>::zeros([1], device));
    let two = || Param::from_tensor(Tensor::<2>::zeros([1, 1], device));
    let linear = |bias: bool| Linear {
        weight: two(),
        bias: bias.then(one),
        lora: None,
    };
    let norm = || RmsNorm {
        weight: one(),
        eps: cfg.rms_norm_eps,
        offset: cfg.norm.offset(),
    };
    let layers = (0..cfg.num_layers)
        .map(|l| DecoderLayer {
            input_norm: norm(),
            attn: Attention {
                q: linear(cfg.qkv_bias),
                k: linear(cfg.qkv_bias),
                v: linear(cfg.qkv_bias),
                o: linear(cfg.o_bias),
                q_norm: cfg.qk_norm.then(norm),
                k_norm: cfg.qk_norm.then(norm),
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                scale: cfg.attn_scale,
            },
            attn_out_norm: cfg.sandwich_norms.then(norm),
            post_attn_norm: norm(),
            mlp: Mlp {
                gate: linear(cfg.mlp_bias),
                up: linear(cfg.mlp_bias),
                down: linear(cfg.mlp_bias),
                act: cfg.activation,
            },
            mlp_out_norm: cfg.sandwich_norms.then(norm),
            kind: cfg.layer_kinds[l],
        })
        .collect();
    Transformer {
        embed: two(),
        layers,
        norm: norm(),
        lm_head: (!cfg.tie_word_embeddings).then(two),
        kinds: Transformer::config_kinds(cfg),
        embed_scale: cfg.embed_scale,
        compute: burn::tensor::DType::F32,
    }
}

/// Validates the checkpoint and uploads it to `device` (weights widened to f32) tensor by tensor;
/// returns the model and the storage dtype [`validate`] reports.
pub fn load(
    cfg: &ModelConfig,
    files: &dyn TensorSource,
    device: &Device,
) -> Result<(Transformer, StoredDtype)> {
    let stored_dtype = validate(cfg, files)?;
    let mut model = skeleton(cfg, device);
    let mut filled = 0;
    for (name, mut param) in params_mut(&mut model) {
        let t = files.read_tensor(&name)?;
        // One NaN or inf weight makes every log-prob NaN and every generation empty, silently.
        if let Some(bad) = t.data.iter().find(|x| !x.is_finite()) {
            return Err(Error::Tensor {
                path: files.source_path(&name),
                name: name.clone(),
                message: format!(
                    "holds {bad}: the weights are corrupt (or were saved after a diverged run)"
                ),
            });
        }
        param.set_data(TensorData::new(t.data, t.shape), device);
        filled += 1;
    }
    // A field the named view missed would keep its placeholder, and a `[1]` norm broadcasts
    // silently: refuse rather than run a wrong model.
    let expected = hf_names::expected_tensors(cfg).len();
    if filled != expected {
        return Err(Error::Invalid(format!(
            "internal error: the model has {filled} named parameters but the name table {expected}"
        )));
    }
    Ok((model, stored_dtype))
}

//! Builds a [`Transformer`] from checkpoint tensors. Every expected tensor is checked before any
//! is uploaded: the error names the missing, unexpected or mis-shaped tensor and its file.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use super::attention::Attention;
use super::layers::{Linear, Mlp, RmsNorm};
use super::{DecoderLayer, Transformer};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hf_names::{self, LayerTensor};
use crate::weights::{StoredDtype, TensorSource};

/// Checks names, shapes and storage types of a checkpoint against the config, from its headers
/// alone (nothing is read or widened); returns the storage dtype of the embeddings (what a
/// checkpoint written back should use).
pub fn validate(cfg: &ModelConfig, files: &dyn TensorSource) -> Result<StoredDtype> {
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
                    cfg.arch.model_type()
                ),
            });
        }
    }
    files.tensor_dtype(hf_names::EMBED)
}

struct Builder<'a> {
    files: &'a dyn TensorSource,
    device: &'a Device,
}

impl Builder<'_> {
    fn tensor<const D: usize>(&self, name: &str) -> Result<Tensor<D>> {
        let t = self.files.read_tensor(name)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, t.shape),
            self.device,
        ))
    }
    fn param<const D: usize>(&self, name: &str) -> Result<Param<Tensor<D>>> {
        Ok(Param::from_tensor(self.tensor(name)?))
    }
    fn linear(&self, layer: usize, w: LayerTensor, b: Option<LayerTensor>) -> Result<Linear> {
        Ok(Linear {
            weight: self.param(&hf_names::layer(layer, w))?,
            bias: b
                .map(|b| self.param(&hf_names::layer(layer, b)))
                .transpose()?,
        })
    }
    fn norm(&self, name: &str, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.param(name)?,
            eps,
        })
    }
}

/// Validates the checkpoint and uploads it to `device` (weights widened to f32); returns the model
/// and the storage dtype [`validate`] reports.
pub fn load(
    cfg: &ModelConfig,
    files: &dyn TensorSource,
    device: &Device,
) -> Result<(Transformer, StoredDtype)> {
    let stored_dtype = validate(cfg, files)?;
    let bld = Builder { files, device };
    let qkv_bias = |t| cfg.qkv_bias.then_some(t);
    let mlp_bias = |t| cfg.mlp_bias.then_some(t);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        use LayerTensor::*;
        layers.push(DecoderLayer {
            input_norm: bld.norm(&hf_names::layer(l, InputNorm), cfg.rms_norm_eps)?,
            attn: Attention {
                q: bld.linear(l, Q, qkv_bias(QBias))?,
                k: bld.linear(l, K, qkv_bias(KBias))?,
                v: bld.linear(l, V, qkv_bias(VBias))?,
                o: bld.linear(l, O, cfg.o_bias.then_some(OBias))?,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            },
            post_attn_norm: bld.norm(&hf_names::layer(l, PostAttentionNorm), cfg.rms_norm_eps)?,
            mlp: Mlp {
                gate: bld.linear(l, Gate, mlp_bias(GateBias))?,
                up: bld.linear(l, Up, mlp_bias(UpBias))?,
                down: bld.linear(l, Down, mlp_bias(DownBias))?,
            },
        });
    }
    let model = Transformer {
        embed: bld.param(hf_names::EMBED)?,
        layers,
        norm: bld.norm(hf_names::FINAL_NORM, cfg.rms_norm_eps)?,
        lm_head: (!cfg.tie_word_embeddings)
            .then(|| bld.param(hf_names::LM_HEAD))
            .transpose()?,
        rope: Transformer::config_rope(cfg),
        window: cfg.window,
    };
    Ok((model, stored_dtype))
}

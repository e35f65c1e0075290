//! Builds a [`Transformer`] from checkpoint tensors. Every expected tensor is checked before any
//! is uploaded ([`crate::hf::validate`]): the error names the missing, unexpected or mis-shaped
//! tensor and its file.

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
pub use crate::hf::validate::validate;
use crate::hf::weights::StoredDtype;

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

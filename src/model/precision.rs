//! Mixed precision as PyTorch's autocast does it: parameters keep their storage dtype (f32 master
//! weights for what is trained), each matmul casts its weight to the activations' dtype, and the
//! activations run in the compute dtype from the embedding on; norms and the attention softmax
//! run in f32 and cast back, and log-probs and losses come out in f32. Gradients reach f32
//! parameters through the casts, in f32.

use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use super::Transformer;
use super::named::params_mut;
use crate::error::{Error, Result};

/// The dtype of the activations (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f16 on a GPU whose WGSL has `shader-f16`, f32 elsewhere.
    #[default]
    Auto,
    F32,
    F16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

impl Precision {
    /// The compute dtype on `device`; f16 where the device cannot run it is refused.
    pub fn resolve(self, device: &Device) -> Result<DType> {
        let f16 = crate::device::runs_f16(device);
        match self {
            Self::F32 => Ok(DType::F32),
            Self::Auto if f16 == Some(true) => Ok(DType::F16),
            Self::Auto => Ok(DType::F32),
            Self::F16 if f16 == Some(false) => Err(Error::Invalid(
                "--dtype f16: this GPU's WGSL has no shader-f16; use --dtype f32".into(),
            )),
            Self::F16 => Ok(DType::F16),
        }
    }
}

/// `t` in `dtype` (a no-op when it already is).
pub fn like<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

/// Runs `m`'s activations in `dtype`, and stores the parameters that get no gradient (a LoRA
/// base, every weight of a model that only scores) in it, halving their memory: their values are
/// what each matmul would cast them to anyway. Trained parameters keep their f32 master values.
pub fn set_compute(m: &mut Transformer, dtype: DType) {
    m.compute = dtype;
    if dtype == DType::F32 {
        return;
    }
    for (_, mut p) in params_mut(m) {
        p.store_frozen_as(dtype);
    }
}

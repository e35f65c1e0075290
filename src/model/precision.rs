//! Mixed precision as PyTorch's autocast does it: parameters keep their storage dtype (f32 master
//! weights for what is trained), each matmul casts its weight to the activations' dtype, and the
//! activations run in the compute dtype from the embedding on; norms and the attention softmax
//! run in f32 and cast back, and log-probs and losses come out in f32. Gradients reach f32
//! parameters through the casts, in f32.

use burn::tensor::{DType, Device};
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
        self.resolve_for(crate::device::runs_f16(device))
    }

    /// [`Self::resolve`] for a device whose WGSL has `shader-f16` (`Some(true)`), lacks it
    /// (`Some(false)`), or that is not a GPU (`None`: the CPU backend, which runs f16 in
    /// software and so takes it only when asked).
    pub fn resolve_for(self, f16: Option<bool>) -> Result<DType> {
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

/// How run records and messages name a compute dtype (`--dtype`'s spelling).
pub fn dtype_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "f32".into(),
        DType::F16 => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `t` in `dtype` (a no-op when it already is); the kernels' own, which the model shares.
pub use crate::kernels::like;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_f16_only_on_a_gpu_with_shader_f16() {
        assert_eq!(Precision::Auto.resolve_for(Some(true)).unwrap(), DType::F16);
        assert_eq!(
            Precision::Auto.resolve_for(Some(false)).unwrap(),
            DType::F32
        );
        assert_eq!(Precision::Auto.resolve_for(None).unwrap(), DType::F32);
        for f16 in [Some(true), Some(false), None] {
            assert_eq!(Precision::F32.resolve_for(f16).unwrap(), DType::F32);
        }
        // The CPU backend runs f16 in software when asked.
        assert_eq!(Precision::F16.resolve_for(None).unwrap(), DType::F16);
    }

    /// No adapter here lacks shader-f16 (lavapipe has it), so the refusal is checked on the
    /// decision itself: it names the missing feature and the flag that works.
    #[test]
    fn f16_on_a_gpu_without_shader_f16_is_refused_naming_the_fix() {
        let err = Precision::F16
            .resolve_for(Some(false))
            .unwrap_err()
            .to_string();
        for part in ["--dtype f16", "shader-f16", "--dtype f32"] {
            assert!(err.contains(part), "{part:?} not in {err:?}");
        }
    }
}

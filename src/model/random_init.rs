//! A model with random weights made from its `config.json` alone, for benchmarks where the
//! checkpoint is not at hand (`wgspin bench generate|train --random-init`, as
//! `scripts/bench_*.py --config` does with `from_config`). Only speed is measured with it.
//!
//! Matrices are uniform with transformers' initialiser standard deviation (0.02), norms are
//! ones, biases zeros. They are generated on the host, tensor by tensor as the loader asks for
//! them, and uploaded like a checkpoint's.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::{Transformer, loader};
use crate::error::{Error, Result};
use crate::hf::config::{HfConfig, ModelConfig};
use crate::hf::names as hf_names;
use crate::hf::source::TensorSource;
use crate::hf::weights::{HostTensor, StoredDtype};
use crate::rng::SplitMix64;

/// transformers' `initializer_range` default.
const STD: f32 = 0.02;

struct RandomWeights {
    shapes: Vec<(String, Vec<usize>)>,
    config: PathBuf,
    seed: u64,
    /// What the family's norms add to their weight (see [`crate::hf::config::NormKind`]).
    norm_offset: f32,
}

impl TensorSource for RandomWeights {
    fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shapes.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }

    fn tensor_dtype(&self, name: &str) -> Result<StoredDtype> {
        match self.tensor_shape(name) {
            Some(_) => Ok(StoredDtype::F32),
            None => Err(Error::Invalid(format!("random init: no tensor {name}"))),
        }
    }

    fn source_path(&self, _name: &str) -> PathBuf {
        self.config.clone()
    }

    fn read_tensor(&self, name: &str) -> Result<HostTensor> {
        let (index, shape) = self
            .shapes
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n == name)
            .map(|(i, (_, s))| (i, s.clone()))
            .ok_or_else(|| Error::Invalid(format!("random init: no tensor {name}")))?;
        let n: usize = shape.iter().product();
        let data = if name.ends_with("norm.weight") {
            // A norm that starts as the identity: w = 1, or w = 0 where it scales by 1 + w.
            vec![1.0 - self.norm_offset; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            // A uniform on [-a, a] has standard deviation a / √3.
            let a = STD * 3f32.sqrt();
            let mut rng =
                SplitMix64(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (0..n).map(|_| a * (2.0 * rng.uniform() - 1.0)).collect()
        };
        Ok(HostTensor {
            shape,
            data,
            dtype: StoredDtype::F32,
        })
    }
}

/// The config at `path` (a `config.json` or a folder holding one) and a model with random
/// weights on `device`.
pub fn random_model(path: &Path, seed: u64, device: &Device) -> Result<(ModelConfig, Transformer)> {
    let (config, config_path) = if path.is_dir() {
        (ModelConfig::from_dir(path)?, path.join("config.json"))
    } else {
        (
            HfConfig::from_file(path)?.resolve(path, &[])?,
            path.to_path_buf(),
        )
    };
    let source = RandomWeights {
        shapes: hf_names::expected_tensors(&config),
        config: config_path,
        seed,
        norm_offset: config.norm.offset(),
    };
    let (model, _) = loader::load(&config, &source, device)?;
    Ok((config, model))
}

//! Optimizers (RMSprop, SPIN's choice; AdamW), gradient-norm clipping and learning-rate
//! schedules, written to match PyTorch / Hugging Face semantics so runs compare with the official
//! recipes. Parameters are handled flattened (`[numel]`) and in the fixed order of
//! [`crate::model::named::trainable_mut`]; state is saved by tensor name.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hf::weights::{HostTensor, StoredDtype, WeightFiles, write_safetensors};
use crate::kernels::optim_step::{AdamwCoefs, RmspropCoefs, adamw_step, rmsprop_step, sum_squares};
use crate::model::Transformer;
use crate::model::named::trainable_mut;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// torch.optim.RMSprop (alpha 0.99, eps 1e-8, no momentum), as the SPIN recipes use.
    #[default]
    Rmsprop,
    /// torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, decoupled weight decay).
    Adamw,
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rmsprop" => Ok(Self::Rmsprop),
            "adamw" => Ok(Self::Adamw),
            _ => Err(format!("unknown optimizer {s:?}; choose rmsprop or adamw")),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rmsprop => "rmsprop",
            Self::Adamw => "adamw",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warmup, then linear decay to 0 (transformers' default).
    #[default]
    Linear,
    /// Linear warmup, then half a cosine to 0.
    Cosine,
    /// Linear warmup, then constant.
    Constant,
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            "constant" => Ok(Self::Constant),
            _ => Err(format!(
                "unknown schedule {s:?}; choose linear, cosine or constant"
            )),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::Constant => "constant",
        })
    }
}

/// Learning rate of optimizer step `step` (0-based) of `total`, as transformers' schedulers give
/// it (the first warmup step runs at lr 0).
pub fn lr_at(schedule: Schedule, peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    let (s, t, w) = (step as f64, total as f64, warmup as f64);
    if step < warmup {
        return peak * s / w.max(1.0);
    }
    let progress = (s - w) / (t - w).max(1.0);
    match schedule {
        Schedule::Linear => peak * ((t - s) / (t - w).max(1.0)).max(0.0),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0),
        Schedule::Constant => peak,
    }
}

/// Settings of the optimizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f64,
}

impl From<&crate::train::TrainConfig> for OptimConfig {
    fn from(cfg: &crate::train::TrainConfig) -> Self {
        Self {
            kind: cfg.optimizer,
            weight_decay: cfg.weight_decay,
        }
    }
}

/// Optimizer state: per parameter, RMSprop's square average or AdamW's two moments.
pub struct Optimizer {
    cfg: OptimConfig,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Per parameter (in `trainable_mut` order): first tensor = square average (RMSprop) or first
    /// moment (AdamW); second = AdamW's second moment.
    state: Vec<Option<(Tensor<1>, Option<Tensor<1>>)>>,
}

const RMS_ALPHA: f64 = 0.99;
const EPS: f64 = 1e-8;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

/// Global L2 norm of `grads` times `scale` (one readback).
pub fn grad_norm(grads: &[Tensor<1>], scale: f64) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let sq: Vec<Tensor<1>> = grads
        .iter()
        .map(|g| sum_squares(g.clone(), scale as f32))
        .collect();
    let total = Tensor::cat(sq, 0).sum();
    crate::device::traffic::read();
    let v = total
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Device(format!("reading the gradient norm back failed: {e:?}")))?;
    Ok((v[0] as f64).sqrt())
}

impl Optimizer {
    pub fn new(cfg: OptimConfig) -> Self {
        Self {
            cfg,
            steps: 0,
            state: vec![],
        }
    }

    /// One update of every parameter of `model` with `grads` (aligned with `trainable_mut`) times
    /// `grad_scale` (the loss-scale and clipping factor), at `lr`.
    pub fn step(
        &mut self,
        model: &mut Transformer,
        grads: Vec<Tensor<1>>,
        lr: f64,
        grad_scale: f64,
    ) {
        self.steps += 1;
        let t = self.steps as i32;
        let wd = self.cfg.weight_decay as f32;
        let (lr, grad_scale) = (lr as f32, grad_scale as f32);
        let mut params = trainable_mut(model);
        if self.state.len() != params.len() {
            self.state = vec![None; params.len()];
        }
        for (i, ((_, p), g)) in params.iter_mut().zip(grads).enumerate() {
            let w = p.value_flat();
            // torch starts both from zeros; the first step's update is the same.
            let zeros = || w.zeros_like();
            let new = match self.cfg.kind {
                OptimizerKind::Rmsprop => {
                    let v = self.state[i].take().map_or_else(zeros, |(v, _)| v);
                    let c = RmspropCoefs {
                        lr,
                        alpha: RMS_ALPHA as f32,
                        eps: EPS as f32,
                        weight_decay: wd,
                        grad_scale,
                    };
                    let (w, v) = rmsprop_step(w, g, v, c);
                    self.state[i] = Some((v, None));
                    w
                }
                OptimizerKind::Adamw => {
                    let (m, v) = match self.state[i].take() {
                        Some((m, Some(v))) => (m, v),
                        _ => (zeros(), zeros()),
                    };
                    let c = AdamwCoefs {
                        lr,
                        beta1: BETA1 as f32,
                        beta2: BETA2 as f32,
                        eps: EPS as f32,
                        weight_decay: wd,
                        bias1: (1.0 - BETA1.powi(t)) as f32,
                        bias2: (1.0 - BETA2.powi(t)) as f32,
                        grad_scale,
                    };
                    let (w, m, v) = adamw_step(w, g, m, v, c);
                    self.state[i] = Some((m, Some(v)));
                    w
                }
            };
            p.set_flat(new);
        }
    }

    /// Saves the state (by parameter name) to a safetensors file.
    pub fn save(&self, path: &Path, model: &Transformer) -> Result<()> {
        let mut m = model.clone();
        let names: Vec<String> = trainable_mut(&mut m).into_iter().map(|(n, _)| n).collect();
        let read = |t: &Tensor<1>| -> Result<HostTensor> {
            let data = t
                .clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::Device(format!("reading optimizer state failed: {e:?}")))?;
            Ok(HostTensor {
                shape: vec![data.len()],
                data,
                dtype: StoredDtype::F32,
            })
        };
        let mut tensors = vec![];
        for (name, st) in names.iter().zip(&self.state) {
            if let Some((a, b)) = st {
                tensors.push((format!("{name}.state0"), read(a)?));
                if let Some(b) = b {
                    tensors.push((format!("{name}.state1"), read(b)?));
                }
            }
        }
        let meta = HashMap::from([
            ("steps".to_string(), self.steps.to_string()),
            ("optimizer".to_string(), self.cfg.kind.to_string()),
        ]);
        let tensors = tensors.iter().map(|(name, t)| (name, t));
        write_safetensors(path, tensors, StoredDtype::F32, Some(meta))
    }

    /// Loads state saved by [`Optimizer::save`] for `model`'s parameters onto `device`.
    pub fn load(
        cfg: OptimConfig,
        path: &Path,
        steps: u64,
        model: &Transformer,
        device: &Device,
    ) -> Result<Self> {
        let files = WeightFiles::open_files(&[path.to_path_buf()])?;
        let mut m = model.clone();
        let names: Vec<String> = trainable_mut(&mut m).into_iter().map(|(n, _)| n).collect();
        let mut state = vec![];
        let up = |name: &str| -> Result<Option<Tensor<1>>> {
            if !files.contains(name) {
                return Ok(None);
            }
            let t = files.read(name)?;
            let n = t.data.len();
            Ok(Some(Tensor::from_data(
                TensorData::new(t.data, [n]),
                device,
            )))
        };
        for name in &names {
            let a = up(&format!("{name}.state0"))?;
            let b = up(&format!("{name}.state1"))?;
            if cfg.kind == OptimizerKind::Adamw && a.is_some() != b.is_some() {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    message:
                        "AdamW state needs both moments; the file was written by another optimizer"
                            .into(),
                });
            }
            state.push(a.map(|a| (a, b)));
        }
        Ok(Self { cfg, steps, state })
    }
}

//! Optimizers (RMSprop, SPIN's choice; AdamW), gradient-norm clipping and learning-rate
//! schedules, written to match PyTorch / Hugging Face semantics so runs compare with the official
//! recipes. Parameters are handled in flat groups ([`super::flat`]) in the fixed order of
//! [`crate::model::named::trainable_mut`], and the update is issued with no read-back: clipping
//! and the skip of a step whose gradients are not finite are decided on the device
//! ([`control`]). State is saved by tensor name, one tensor per parameter.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::module::ParamId;
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hf::weights::{HostTensor, StoredDtype, WeightFiles, write_safetensors};
use crate::kernels::optim_step::{
    AdamwCoefs, RmspropCoefs, StepControl, adamw_step_ctl, rmsprop_step_ctl, step_probe,
    sum_squares,
};
use crate::model::Transformer;
use crate::model::named::trainable_mut;
use crate::train::flat::Layout;

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

/// Optimizer state, flat per group of parameters ([`Layout`]): RMSprop's square average or
/// AdamW's two moments. The parameters themselves are kept as slices of the flat weights the last
/// update wrote, so the next update starts from those buffers without packing them again.
pub struct Optimizer {
    cfg: OptimConfig,
    /// Optimizer steps applied (a step the loss scaler skipped does not count).
    pub steps: u64,
    layout: Option<Layout>,
    /// Per group: first tensor = square average (RMSprop) or first moment (AdamW); second =
    /// AdamW's second moment; `[len]` each.
    state: Vec<Option<(Tensor<1>, Option<Tensor<1>>)>>,
    /// The groups' flat weights `[len]` the parameters were last set from, and those parameters'
    /// ids: while the model still holds exactly them, its weights are these buffers.
    weights: Option<(Vec<Tensor<1>>, Vec<ParamId>)>,
}

const RMS_ALPHA: f64 = 0.99;
const EPS: f64 = 1e-8;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

/// `(numel, dtype)` of each trainable parameter of `model`, in trainable order.
fn shapes(model: &mut Transformer) -> Vec<(usize, DType)> {
    trainable_mut(model)
        .iter()
        .map(|(_, p)| {
            let v = p.value_flat();
            (v.dims()[0], v.dtype())
        })
        .collect()
}

/// `Σ (g · scale)²` over the flat gradient groups `grads`, on the device `[1]`: one reduction per
/// group.
pub fn sum_squares_flat(grads: &[Tensor<1>], scale: f64) -> Option<Tensor<1>> {
    grads
        .iter()
        .map(|g| sum_squares(g.clone(), scale as f32))
        .reduce(|a, b| a + b)
}

/// The device's value the update is decided on ([`StepControl`]): the squared norm `norm2` of
/// the unscaled gradients, made NaN where one of `losses` (`[1]` each) is not finite: not finite
/// when the norm or a loss is not, and equal to `norm2` otherwise.
pub fn probe(norm2: Tensor<1>, losses: Vec<Tensor<1>>) -> StepControl {
    // One check for the step: a sum of losses is not finite when one of them is not (or when
    // finite losses overflow f32 together, which a loss scaled by at most 2¹⁶ does not reach).
    let total = losses
        .into_iter()
        .map(|loss| loss.cast(DType::F32).sum()) // [1]
        .reduce(|a, b| a + b);
    let probe = match total {
        Some(t) => step_probe(norm2, t),
        None => norm2,
    };
    StepControl { probe }
}

impl Optimizer {
    pub fn new(cfg: OptimConfig) -> Self {
        Self {
            cfg,
            steps: 0,
            layout: None,
            state: vec![],
            weights: None,
        }
    }

    /// The flat layout of `model`'s trainable parameters (computed once).
    pub fn layout(&mut self, model: &mut Transformer) -> &Layout {
        let count = trainable_mut(model).len();
        if self.layout.as_ref().is_none_or(|l| l.count != count) {
            self.layout = Some(Layout::new(&shapes(model)));
            self.state = vec![];
            self.weights = None;
        }
        self.layout.get_or_insert_with(|| Layout::new(&[]))
    }

    /// The groups' flat weights of `model` for an update to write in place: the buffers of the
    /// last update while the model holds the parameters it set, else packed afresh. The model's
    /// parameters (views of those buffers) are released, so that the update owns them alone and
    /// the step's peak holds one copy of the weights, not two; the update sets them again.
    fn take_flat_weights(&mut self, model: &mut Transformer) -> Vec<Tensor<1>> {
        // Laid out from the values before they are released.
        let layout = self.layout(model).clone();
        let mut params = trainable_mut(model);
        let ids: Vec<ParamId> = params.iter().map(|(_, p)| p.id()).collect();
        let kept = self.weights.take().filter(|(_, known)| *known == ids);
        // Packing afresh: each value is dropped once copied into its group, so the weights are
        // never held twice over.
        let values: Vec<Tensor<1>> = match kept {
            Some(_) => vec![],
            None => params.iter().map(|(_, p)| p.value_flat()).collect(),
        };
        for (_, p) in params.iter_mut() {
            p.release();
        }
        drop(params);
        match kept {
            Some((w, _)) => w,
            None => layout.flatten(values),
        }
    }

    /// Issues one update of every parameter of `model` with the flat gradient groups `grads`
    /// (of [`Optimizer::layout`]) times `grad_scale` (the loss unscale) at `lr`, clipped to
    /// `max_grad_norm` and skipped as the device's `ctl` says; nothing is read back. Counts the
    /// step as applied: [`Optimizer::unstep`] takes it back when the device skipped it.
    pub fn step(
        &mut self,
        model: &mut Transformer,
        grads: Vec<Tensor<1>>,
        (lr, grad_scale, max_grad_norm): (f64, f64, f64),
        ctl: &StepControl,
    ) {
        self.steps += 1;
        let t = self.steps as i32;
        let wd = self.cfg.weight_decay as f32;
        let (lr, grad_scale) = (lr as f32, grad_scale as f32);
        let max_grad_norm = max_grad_norm as f32;
        let weights = self.take_flat_weights(model);
        let layout = self.layout(model).clone();
        if self.state.len() != layout.groups.len() {
            self.state = vec![None; layout.groups.len()];
        }
        let mut new = Vec::with_capacity(weights.len());
        for (i, (w, g)) in weights.into_iter().zip(grads).enumerate() {
            // torch starts both from zeros; the first step's update is the same.
            let zeros = || w.zeros_like();
            let w = match self.cfg.kind {
                OptimizerKind::Rmsprop => {
                    let v = self.state[i].take().map_or_else(zeros, |(v, _)| v);
                    let c = RmspropCoefs {
                        lr,
                        alpha: RMS_ALPHA as f32,
                        eps: EPS as f32,
                        weight_decay: wd,
                        grad_scale,
                        max_grad_norm,
                    };
                    let (w, v) = rmsprop_step_ctl([w, g, v], ctl, c);
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
                        max_grad_norm,
                    };
                    let (w, m, v) = adamw_step_ctl([w, g, m, v], ctl, c);
                    self.state[i] = Some((m, Some(v)));
                    w
                }
            };
            new.push(w);
        }
        let mut params = trainable_mut(model);
        for ((_, p), w) in params.iter_mut().zip(layout.split(&new)) {
            p.set_flat(w);
        }
        let ids = params.iter().map(|(_, p)| p.id()).collect();
        self.weights = Some((new, ids));
    }

    /// Takes back the count of a step the device skipped (its weights and state kept).
    pub fn unstep(&mut self) {
        self.steps = self.steps.saturating_sub(1);
    }

    /// Saves the state (by parameter name) to a safetensors file.
    pub fn save(&self, path: &Path, model: &Transformer) -> Result<()> {
        let mut m = model.clone();
        let names: Vec<String> = trainable_mut(&mut m).into_iter().map(|(n, _)| n).collect();
        let read = |t: &Tensor<1>| -> Result<Vec<f32>> {
            t.clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::Device(format!("reading optimizer state failed: {e:?}")))
        };
        let host = |data: &[f32]| HostTensor {
            shape: vec![data.len()],
            data: data.to_vec(),
            dtype: StoredDtype::F32,
        };
        let mut per_param: Vec<Vec<(String, HostTensor)>> = vec![vec![]; names.len()];
        // Before the first applied step there is no state (as torch's optimizer has none).
        let groups = self.layout.as_ref().map_or(&[][..], |l| &l.groups[..]);
        for (g, st) in groups.iter().zip(&self.state) {
            let (Some((a, b)), true) = (st, self.steps > 0) else {
                continue;
            };
            let (a, b) = (read(a)?, b.as_ref().map(read).transpose()?);
            for mem in &g.members {
                let (lo, hi) = (mem.offset, mem.offset + mem.numel);
                let name = &names[mem.index];
                per_param[mem.index].push((format!("{name}.state0"), host(&a[lo..hi])));
                if let Some(b) = &b {
                    per_param[mem.index].push((format!("{name}.state1"), host(&b[lo..hi])));
                }
            }
        }
        let tensors: Vec<(String, HostTensor)> = per_param.into_iter().flatten().collect();
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
        let layout = Layout::new(&shapes(&mut m));
        let names: Vec<String> = trainable_mut(&mut m).into_iter().map(|(n, _)| n).collect();
        let read = |name: &str| -> Result<Option<Vec<f32>>> {
            if !files.contains(name) {
                return Ok(None);
            }
            Ok(Some(files.read(name)?.data))
        };
        let (mut first, mut second) = (vec![], vec![]);
        for name in &names {
            let a = read(&format!("{name}.state0"))?;
            let b = read(&format!("{name}.state1"))?;
            if cfg.kind == OptimizerKind::Adamw && a.is_some() != b.is_some() {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    message:
                        "AdamW state needs both moments; the file was written by another optimizer"
                            .into(),
                });
            }
            first.push(a);
            second.push(b);
        }
        // A parameter without state starts from zeros, as torch's would.
        let up = |values: &[Option<Vec<f32>>]| -> Vec<Option<Tensor<1>>> {
            layout
                .pack_host(values)
                .into_iter()
                .zip(&layout.groups)
                .map(|(flat, g)| {
                    let any = g.members.iter().any(|m| values[m.index].is_some());
                    any.then(|| Tensor::from_data(TensorData::new(flat, [g.len]), device))
                })
                .collect()
        };
        let state = up(&first)
            .into_iter()
            .zip(up(&second))
            .map(|(a, b)| a.map(|a| (a, b)))
            .collect();
        Ok(Self {
            cfg,
            steps,
            layout: Some(layout),
            state,
            weights: None,
        })
    }
}

//! The state of a [`Trainer`](super::Trainer) whatever its objective: the data order, the step
//! plan, gradients by parameter name, and the state carried from step to step with the clipped
//! update that advances it.

use burn::tensor::Tensor;

use super::TrainConfig;
use super::optim::{OptimConfig, Optimizer, grad_norm, lr_at};
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::model::named::trainable_mut;

/// The order of the pairs in `epoch`: a Fisher–Yates shuffle keyed by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    // A pure function of (seed, epoch), so a resumed run replays it.
    let mut rng = crate::rng::SplitMix64(seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

/// The step plan: how the pairs split into forward passes and optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub micro_per_epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub warmup_steps: usize,
}

impl Plan {
    pub fn new(n_pairs: usize, cfg: &TrainConfig) -> Self {
        let micro = n_pairs.div_ceil(cfg.batch_size);
        let spe = micro.div_ceil(cfg.grad_accum);
        let total = spe * cfg.epochs;
        Self {
            micro_per_epoch: micro,
            steps_per_epoch: spe,
            total_steps: total,
            warmup_steps: (cfg.warmup_ratio * total as f64).ceil() as usize,
        }
    }

    /// Pair indices of each forward pass of optimizer step `step`.
    pub fn micro_batches(&self, step: usize, n_pairs: usize, cfg: &TrainConfig) -> Vec<Vec<usize>> {
        let epoch = step / self.steps_per_epoch;
        let order = epoch_order(n_pairs, cfg.data_seed, epoch);
        let first = (step % self.steps_per_epoch) * cfg.grad_accum;
        let last = (first + cfg.grad_accum).min(self.micro_per_epoch);
        (first..last)
            .map(|m| {
                let lo = m * cfg.batch_size;
                order[lo..(lo + cfg.batch_size).min(n_pairs)].to_vec()
            })
            .collect()
    }
}

/// The gradient of every parameter in `grads`, aligned with [`trainable_mut`], flattened.
pub fn param_grads(model: &Transformer, grads: &burn::tensor::Gradients) -> Result<Vec<Tensor<1>>> {
    let mut m = model.clone();
    trainable_mut(&mut m)
        .iter()
        .map(|(name, p)| {
            p.grad_flat(grads).ok_or_else(|| {
                Error::Device(format!(
                    "no gradient reached {name}; the model is not on an autodiff device"
                ))
            })
        })
        .collect()
}

pub(crate) fn read_f32(t: Tensor<1>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Device(format!("reading {what} back failed: {e:?}")))
}

/// The model being trained, its settings, the optimizer, the step plan and the step count.
pub struct TrainState {
    /// On an autodiff device.
    pub model: Transformer,
    pub cfg: TrainConfig,
    pub optimizer: Optimizer,
    pub plan: Plan,
    /// Optimizer steps done.
    pub step: usize,
    pub pad_id: u32,
}

impl TrainState {
    /// The settings checked, then `n` examples (`what` names them in the error) planned into
    /// steps, with a fresh optimizer.
    pub fn new(
        model: Transformer,
        cfg: TrainConfig,
        n: usize,
        what: &str,
        pad_id: u32,
    ) -> Result<Self> {
        cfg.validate()?;
        if n == 0 {
            return Err(Error::Invalid(format!("no {what}")));
        }
        Ok(Self {
            plan: Plan::new(n, &cfg),
            optimizer: Optimizer::new(OptimConfig::from(&cfg)),
            model,
            cfg,
            step: 0,
            pad_id,
        })
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.plan.total_steps
    }

    /// Example indices of each forward pass of the next step, out of `n`.
    pub fn micro_batches(&self, n: usize) -> Vec<Vec<usize>> {
        self.plan.micro_batches(self.step, n, &self.cfg)
    }

    /// Seeds the device's generator for LoRA dropout in forward pass `micro` of the next step,
    /// so the masks are a pure function of (seed, step) and a resumed run draws the same ones.
    pub fn seed_dropout(&self, micro: usize) {
        if self.cfg.lora.enabled() && self.cfg.lora.dropout > 0.0 {
            let key = (self.step as u64).wrapping_mul(0x9E37_79B9) ^ micro as u64;
            let mut rng = crate::rng::SplitMix64(self.cfg.data_seed ^ key);
            self.model.device().seed(rng.next());
        }
    }

    /// Clips `grads` to `max_grad_norm` and takes the next optimizer step at the scheduled
    /// learning rate. Fails, changing nothing, when the gradient norm is not finite. Returns
    /// (lr, norm).
    pub fn update(&mut self, mut grads: Vec<Tensor<1>>) -> Result<(f64, f64)> {
        let norm = grad_norm(&grads)?;
        if !norm.is_finite() {
            return Err(Error::Invalid(format!(
                "step {}: the gradient norm is {norm}; stopping, the last checkpoint is kept. Try a lower --lr or --max-grad-norm",
                self.step + 1
            )));
        }
        let cfg = &self.cfg;
        if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm {
            let scale = cfg.max_grad_norm / (norm + 1e-6);
            grads = grads.into_iter().map(|g| g.mul_scalar(scale)).collect();
        }
        let (total, warmup) = (self.plan.total_steps, self.plan.warmup_steps);
        let lr = lr_at(cfg.schedule, cfg.lr, self.step, total, warmup);
        self.optimizer.step(&mut self.model, grads, lr);
        self.step += 1;
        Ok((lr, norm))
    }
}

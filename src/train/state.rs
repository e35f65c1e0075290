//! The state of a [`Trainer`](super::Trainer) whatever its objective: the data order, the step
//! plan, gradients by parameter name, and the state carried from step to step with the clipped
//! update that advances it: issued to the device with no read-back, then settled on the host
//! from one blocking read per step.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use super::optim::{OptimConfig, Optimizer, lr_at, probe, sum_squares_flat};
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

/// Optimizer steps per length group under `--group-by-length` (transformers' sampler sorts
/// groups of 50 batches).
pub const LENGTH_GROUP_STEPS: usize = 50;

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

    /// Example indices of each forward pass of optimizer step `step`; `lens[i]` is example i's
    /// padded length (the longest row it puts in a batch).
    ///
    /// A forward pass pads its rows to the longest, so the step's examples are sorted by length
    /// (longest first: the step's peak memory comes at its first pass) before they are cut into
    /// micro-batches; the step's set of examples, hence its gradient, is that of the shuffled
    /// order. With `--group-by-length`, whole groups of [`LENGTH_GROUP_STEPS`] steps are sorted
    /// first, as transformers' length-grouped sampler does, so steps themselves hold similar
    /// lengths. Either way the order is a pure function of (seed, epoch, lengths).
    pub fn micro_batches(&self, step: usize, lens: &[usize], cfg: &TrainConfig) -> Vec<Vec<usize>> {
        let n = lens.len();
        let epoch = step / self.steps_per_epoch;
        let mut order = epoch_order(n, cfg.data_seed, epoch);
        let per_step = cfg.batch_size * cfg.grad_accum;
        let by_len = |group: &mut [usize]| group.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        if cfg.group_by_length {
            order
                .chunks_mut(per_step * LENGTH_GROUP_STEPS)
                .for_each(by_len);
        }
        let lo = ((step % self.steps_per_epoch) * per_step).min(n);
        let mut examples = order[lo..(lo + per_step).min(n)].to_vec();
        by_len(&mut examples);
        examples
            .chunks(cfg.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// The gradient of every parameter in `grads`, aligned with [`trainable_mut`], as
/// [`crate::model::named::ParamRef::grad`] gives it (`[rows, cols]`, possibly a strided view).
pub fn param_grads(model: &Transformer, grads: &burn::tensor::Gradients) -> Result<Vec<Tensor<2>>> {
    let mut m = model.clone();
    trainable_mut(&mut m)
        .iter()
        .map(|(name, p)| {
            p.grad(grads).ok_or_else(|| {
                Error::Device(format!(
                    "no gradient reached {name}; the model is not on an autodiff device"
                ))
            })
        })
        .collect()
}

/// `values` cut into consecutive pieces of `sizes`.
pub(crate) fn split_at_sizes(values: &[f32], sizes: &[usize]) -> Vec<Vec<f32>> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let piece = values
                .get(at..at + n)
                .map_or_else(Vec::new, <[f32]>::to_vec);
            at += n;
            piece
        })
        .collect()
}

/// An update issued to the device and what it left to read back, all in one tensor.
pub struct Issued {
    /// `[1 + Σ sizes]`: the probe (the squared norm of the unscaled gradients; not finite when
    /// it or a loss is not, and then the device skipped the update), then each pass's
    /// measurement.
    readback: Tensor<1>,
    sizes: Vec<usize>,
    lr: f64,
}

/// What the one read of a step returned.
pub struct ReadBack {
    /// Of the unscaled gradients (not finite when they are not).
    pub norm: f64,
    /// Whether the device applied the update (the gradients and the loss were finite).
    pub applied: bool,
    /// Each pass's measurement.
    pub measured: Vec<Vec<f32>>,
    pub lr: f64,
}

/// Dynamic loss scaling for f16 activations, as PyTorch's `GradScaler` with its defaults: the
/// loss is multiplied by `scale` before the backward pass, so that small gradients do not flush to
/// zero in f16, and the gradients are divided by it after; a step whose gradients are not finite
/// is skipped (the data and the schedule move on, the weights and optimizer state do not) and the
/// scale halved; after [`LossScaler::GROWTH_INTERVAL`] finite steps in a row it doubles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub good_steps: usize,
    /// Steps skipped over the whole run.
    pub skipped: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: Self::INIT,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    pub const INIT: f64 = 65536.0;
    pub const GROWTH_INTERVAL: usize = 2000;
    /// Gradients that overflow at a scale below this are not finite for a reason the scale
    /// cannot fix (f16 activations overflowing, or divergence): training stops.
    pub const MIN: f64 = 1.0;

    /// Records a step whose unscaled gradients were `finite` or not.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

/// The model being trained, its settings, the optimizer, the step plan and the step count.
pub struct TrainState {
    /// On an autodiff device.
    pub model: Transformer,
    pub cfg: TrainConfig,
    pub optimizer: Optimizer,
    pub plan: Plan,
    /// Steps done (including any the loss scaler skipped).
    pub step: usize,
    pub pad_id: u32,
    /// With f16 activations (the model's compute dtype); `None` in f32.
    pub scaler: Option<LossScaler>,
    /// Blocking reads from the device so far (each waits for the queue to drain).
    reads: AtomicU64,
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
        let scaler = (model.compute == DType::F16).then(LossScaler::default);
        Ok(Self {
            scaler,
            plan: Plan::new(n, &cfg),
            optimizer: Optimizer::new(OptimConfig::from(&cfg)),
            model,
            cfg,
            step: 0,
            pad_id,
            reads: AtomicU64::new(0),
        })
    }

    /// Blocking reads from the device this state made so far: one per optimizer step.
    pub fn blocking_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// `t` read back to the host (`what` names it in the error): a blocking read, counted.
    pub fn read_back(&self, t: Tensor<1>, what: &str) -> Result<Vec<f32>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        crate::device::traffic::read();
        t.into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Device(format!("reading {what} back failed: {e:?}")))
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.plan.total_steps
    }

    /// Example indices of each forward pass of the next step (`lens`: padded lengths).
    pub fn micro_batches(&self, lens: &[usize]) -> Vec<Vec<usize>> {
        self.plan.micro_batches(self.step, lens, &self.cfg)
    }

    /// The device generator's seed for LoRA dropout in forward pass `micro` of the next step
    /// (`None` without dropout), so the masks are a pure function of (seed, step) and a resumed
    /// run draws the same ones.
    pub fn dropout_seed(&self, micro: usize) -> Option<u64> {
        (self.cfg.lora.enabled() && self.cfg.lora.dropout > 0.0).then(|| {
            let key = (self.step as u64).wrapping_mul(0x9E37_79B9) ^ micro as u64;
            crate::rng::SplitMix64(self.cfg.data_seed ^ key).next()
        })
    }

    /// What the loss is multiplied by before the backward pass (1 in f32).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.map_or(1.0, |s| s.scale)
    }

    /// Issues the next optimizer step at the scheduled learning rate with `grads` (of the
    /// scaled loss, aligned with [`trainable_mut`]), unscaled and clipped to `max_grad_norm`;
    /// `losses`: each pass's loss `[1]`, `measured`: each pass's measurement (f32). Nothing is
    /// read back: the device computes the norm and the clip factor and skips the update (weights
    /// and optimizer state kept) when the norm or a loss is not finite; [`TrainState::read_issued`]
    /// then reads the outcome and the measurements in one go and [`TrainState::finish_update`]
    /// settles the step on the host.
    pub fn issue_update(
        &mut self,
        grads: Vec<Tensor<2>>,
        losses: Vec<Tensor<1>>,
        measured: Vec<Tensor<1>>,
    ) -> Issued {
        let unscale = 1.0 / self.loss_scale();
        let (total, warmup) = (self.plan.total_steps, self.plan.warmup_steps);
        let lr = lr_at(self.cfg.schedule, self.cfg.lr, self.step, total, warmup);
        let device = self.model.device();
        let flat = self.optimizer.layout(&mut self.model).flatten_2d(grads);
        let norm2 = sum_squares_flat(&flat, unscale).unwrap_or_else(|| Tensor::zeros([1], &device));
        let ctl = probe(norm2, losses);
        let coefs = (lr, unscale, self.cfg.max_grad_norm);
        self.optimizer.step(&mut self.model, flat, coefs, &ctl);
        let sizes = measured.iter().map(|t| t.dims()[0]).collect();
        let parts = [ctl.probe].into_iter().chain(measured).collect();
        Issued {
            readback: Tensor::cat(parts, 0),
            sizes,
            lr,
        }
    }

    /// The one blocking read of a step issued by [`TrainState::issue_update`].
    pub fn read_issued(&self, issued: Issued) -> Result<ReadBack> {
        let v = self.read_back(issued.readback, "the step's gradient norm and log-probs")?;
        let probe = v.first().copied().unwrap_or(f32::NAN);
        Ok(ReadBack {
            norm: (probe as f64).sqrt(),
            applied: probe.is_finite(),
            measured: split_at_sizes(v.get(1..).unwrap_or(&[]), &issued.sizes),
            lr: issued.lr,
        })
    }

    /// Settles a step the device has run, from its read-back `r`: a step the device skipped
    /// (gradients not finite) counts as skipped under loss scaling (and halves the scale) and
    /// otherwise fails, the weights and optimizer state as they were. Returns (lr, norm); the
    /// norm is not finite for a skipped step.
    pub fn finish_update(&mut self, r: &ReadBack) -> Result<(f64, f64)> {
        let (lr, norm) = (r.lr, r.norm);
        if !r.applied {
            self.optimizer.unstep();
        }
        if let Some(s) = self.scaler.as_mut() {
            s.update(r.applied);
            if !r.applied {
                if s.scale < LossScaler::MIN {
                    return Err(Error::Invalid(format!(
                        "step {}: the gradients are not finite even with the loss scaled by {}; \
                         stopping, the last checkpoint is kept. The f16 activations overflow or \
                         training diverged: try --dtype f32, a lower --lr or a --max-grad-norm",
                        self.step + 1,
                        s.scale * 2.0
                    )));
                }
                self.step += 1;
                return Ok((lr, norm));
            }
        }
        if !r.applied {
            return Err(Error::Invalid(format!(
                "step {}: the gradient norm is {norm}; stopping, the last checkpoint is kept. Try a lower --lr or --max-grad-norm",
                self.step + 1
            )));
        }
        self.step += 1;
        Ok((lr, norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch_size: usize, grad_accum: usize, group_by_length: bool) -> TrainConfig {
        TrainConfig {
            batch_size,
            grad_accum,
            group_by_length,
            epochs: 2,
            ..Default::default()
        }
    }

    /// Lengths that follow the index, so sorted order is visible.
    fn lens(n: usize) -> Vec<usize> {
        (0..n).map(|i| 10 + (i * 37) % 101).collect()
    }

    fn steps(c: &TrainConfig, lens: &[usize]) -> Vec<Vec<Vec<usize>>> {
        let plan = Plan::new(lens.len(), c);
        (0..plan.total_steps)
            .map(|s| plan.micro_batches(s, lens, c))
            .collect()
    }

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScaler::default();
        s.update(false);
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 2));
    }

    #[test]
    fn a_step_holds_the_shuffled_orders_examples_sorted_longest_first() {
        let (n, c) = (203, cfg(4, 3, false));
        let l = lens(n);
        let plan = Plan::new(n, &c);
        for (s, micro) in steps(&c, &l).iter().enumerate() {
            let order = epoch_order(n, c.data_seed, s / plan.steps_per_epoch);
            let lo = (s % plan.steps_per_epoch) * 12;
            let mut want = order[lo..(lo + 12).min(n)].to_vec();
            let mut got: Vec<usize> = micro.iter().flatten().copied().collect();
            let got_lens: Vec<usize> = got.iter().map(|&i| l[i]).collect();
            assert!(got_lens.windows(2).all(|w| w[0] >= w[1]), "{got_lens:?}");
            assert!(micro.iter().all(|m| m.len() <= 4));
            want.sort();
            got.sort();
            assert_eq!(got, want, "step {s}: another set of examples than unsorted");
        }
    }

    #[test]
    fn grouping_by_length_covers_every_example_once_per_epoch_and_pads_less() {
        let n = 1000;
        let l = lens(n);
        let padded = |c: &TrainConfig| -> usize {
            steps(c, &l)
                .iter()
                .flatten()
                .map(|m| m.len() * m.iter().map(|&i| l[i]).max().unwrap_or(0))
                .sum()
        };
        let grouped = cfg(4, 2, true);
        let all = steps(&grouped, &l);
        let per_epoch = Plan::new(n, &grouped).steps_per_epoch;
        for epoch in all.chunks(per_epoch) {
            let mut seen: Vec<usize> = epoch.iter().flatten().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(all, steps(&grouped, &l), "not a pure function of the seed");
        let real: usize = l.iter().sum::<usize>() * 2;
        let (plain, sorted_steps, by_len) = (
            padded(&cfg(4, 1, false)),
            padded(&cfg(4, 2, false)),
            padded(&grouped),
        );
        eprintln!(
            "padded tokens over {real} real: batch 4 {plain}, 4 x 2 sorted in the step \
             {sorted_steps}, grouped by length {by_len}"
        );
        assert!(sorted_steps < plain, "{sorted_steps} vs {plain}");
        assert!(by_len < sorted_steps, "{by_len} vs {sorted_steps}");
        assert!(by_len as f64 <= 1.05 * real as f64, "{by_len} vs {real}");
    }
}

//! The one trainer: every objective ([`super::objective`]: SPIN's pairwise loss, SFT's next-token
//! loss) goes through the same batching, gradient accumulation, chunked log-probs, clipping, NaN
//! stop and update; the job around it ([`super::job`]) gives all the same metrics and resumable
//! checkpoints.

use std::time::Instant;

use burn::tensor::Tensor;
use serde_json::{Value, json};

use super::objective::{Measured, Objective, Pass, StepStats};
use super::state::{TrainState, split_at_sizes};
use super::{PairLogps, TrainConfig};
use crate::error::{Error, Result};
use crate::model::Transformer;

/// Gradients of one optimizer step and what its forward passes measured.
pub struct StepGrads {
    /// Aligned with [`crate::model::named::trainable_mut`], flattened.
    pub grads: Vec<Tensor<1>>,
    pub measured: Measured,
    /// Tokens fed (a SPIN prompt counts twice: once per response).
    pub tokens: usize,
}

impl StepGrads {
    /// (policy, reference) log-probs, for the SPIN objective.
    pub fn pairs(&self) -> Option<(&PairLogps, &PairLogps)> {
        super::objective::spin::pairs(&self.measured)
    }
}

/// A gradient `[rows, cols]` flattened `[numel]` (a copy where it is a strided view).
fn flat_grad(g: Tensor<2>) -> Tensor<1> {
    let n = g.shape().num_elements();
    g.reshape([n])
}

/// A step's forward and backward passes, their results still on the device.
struct Passes {
    /// `[rows, cols]` per parameter, possibly strided views ([`crate::model::named::ParamRef::grad`]).
    grads: Vec<Tensor<2>>,
    /// Each pass's loss `[1]`.
    losses: Vec<Tensor<1>>,
    /// What each pass measured, f32 `[n]` each.
    measured: Vec<Tensor<1>>,
    tokens: usize,
}

/// Metrics of one optimizer step, named as TRL names them.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub stats: StepStats,
    pub lr: f64,
    /// Of the unscaled gradients; not finite for a step the loss scaler skipped.
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// With f16 activations: the loss scale after this step, and whether it skipped the update.
    pub loss_scale: Option<(f64, bool)>,
}

impl StepMetrics {
    pub fn to_json(&self) -> Value {
        let mut row = json!({"step": self.step, "epoch": self.epoch, "loss": self.stats.loss()});
        if let Some(r) = row.as_object_mut() {
            for &(name, value) in self.stats.metrics() {
                r.insert(name.into(), json!(value));
            }
            r.insert("lr".into(), json!(self.lr));
            r.insert("grad_norm".into(), json!(self.grad_norm));
            r.insert("tokens/s".into(), json!(self.tokens_per_s));
            if let Some((scale, skipped)) = self.loss_scale {
                r.insert("loss_scale".into(), json!(scale));
                r.insert("skipped".into(), json!(skipped));
            }
        }
        row
    }
}

/// The model under training and its objective.
pub struct Trainer {
    pub state: TrainState,
    pub objective: Objective,
}

impl Trainer {
    pub fn new(
        model: Transformer,
        cfg: TrainConfig,
        objective: Objective,
        pad_id: u32,
    ) -> Result<Self> {
        let (n, what) = {
            let o = objective.behaviour(&cfg);
            (o.len(), o.noun())
        };
        let state = TrainState::new(model, cfg, n, what, pad_id)?;
        Ok(Self { state, objective })
    }

    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }

    /// Gradients of the step's loss over the examples of `micro` (one forward + backward per
    /// entry, accumulated), aligned with [`crate::model::named::trainable_mut`], and what the
    /// forward passes measured; the objective says how examples become passes and a loss (SPIN's
    /// is the mean over the step's pairs, SFT's the mean over its response tokens).
    ///
    /// Under f16 loss scaling the gradients are those of the loss times
    /// [`TrainState::loss_scale`]; [`TrainState::update`] divides it out.
    ///
    /// Reads the measurements back (one blocking read); a training step does not call this but
    /// reads them together with the update's outcome ([`Trainer::train_step`]).
    pub fn gradients(&self, micro: &[Vec<usize>]) -> Result<StepGrads> {
        let p = self.passes(micro)?;
        let sizes: Vec<usize> = p.measured.iter().map(|t| t.dims()[0]).collect();
        let values = if p.measured.is_empty() {
            vec![]
        } else {
            let all = Tensor::cat(p.measured, 0);
            self.state.read_back(all, "log-probs")?
        };
        let objective = self.objective.behaviour(&self.state.cfg);
        Ok(StepGrads {
            grads: p.grads.into_iter().map(flat_grad).collect(),
            measured: objective.measure(micro, split_at_sizes(&values, &sizes)),
            tokens: p.tokens,
        })
    }

    /// The forward and backward passes of `micro`, their results left on the device.
    fn passes(&self, micro: &[Vec<usize>]) -> Result<Passes> {
        let objective = self.objective.behaviour(&self.state.cfg);
        let mut pass = Pass::new(&self.state);
        let measured = objective.step(&mut pass, micro)?;
        let (grads, losses) = pass.into_parts();
        Ok(Passes {
            grads,
            losses,
            measured,
            tokens: micro.iter().flatten().map(|&i| objective.tokens(i)).sum(),
        })
    }

    /// One optimizer step (its forward passes, backward, clipping, update). Fails on a
    /// non-finite loss or gradient, leaving the model as it was before the step.
    ///
    /// One blocking read per step: the update is issued with the device deciding on clipping
    /// and on skipping a non-finite step, then the norm, that decision and the passes'
    /// measurements come back together.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let lengths = self.objective.behaviour(&self.state.cfg).lengths();
        let micro = self.state.micro_batches(&lengths);
        let Passes {
            grads,
            losses,
            measured,
            tokens,
        } = self.passes(&micro)?;
        let issued = self.state.issue_update(grads, losses, measured);
        let mut read = self.state.read_issued(issued)?;
        let objective = self.objective.behaviour(&self.state.cfg);
        let measured = objective.measure(&micro, std::mem::take(&mut read.measured));
        let stats = objective.stats(&measured);
        drop(objective);
        if !stats.loss().is_finite() {
            // The device skipped the update: a loss that is not finite fails its check.
            if !read.applied {
                self.state.optimizer.unstep();
            }
            return Err(self.diverged(&stats, &measured));
        }
        let (lr, norm) = self.state.finish_update(&read)?;
        let secs = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.state.step,
            epoch: self.state.step as f64 / self.state.plan.steps_per_epoch as f64,
            stats,
            lr,
            grad_norm: norm,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            loss_scale: self.state.scaler.map(|s| (s.scale, !read.applied)),
        })
    }

    /// The NaN stop's error, naming the likeliest cause rather than always blaming --lr.
    fn diverged(&self, stats: &StepStats, measured: &Measured) -> Error {
        let first = self.state.step == 0;
        let (detail, cause) = self
            .objective
            .behaviour(&self.state.cfg)
            .divergence(measured, first);
        let f16 = if self.state.scaler.is_some() {
            " With f16 activations, an overflow in the forward pass is likelier: try --dtype f32."
        } else {
            ""
        };
        Error::Invalid(format!(
            "step {}: the loss is {}{detail}; stopping, the last checkpoint is kept. {cause}.{f16}",
            self.state.step + 1,
            stats.loss(),
        ))
    }
}

//! Training objectives, as mlx-lm's trainer takes `loss=` as a callable: each file here says what
//! an example is, how a step's examples become forward passes and a loss, what the step measured,
//! its metrics and its model-card line. The trainer ([`super::trainer`]) does the rest (batching,
//! accumulation, clipping, the NaN stop, the update) the same for all of them.
//!
//! Adding an objective: a file implementing [`TrainObjective`], plus its line in each list below:
//! a variant of [`ObjectiveKind`] (the config's name), [`Objective`] (its examples) and
//! [`Measured`], and an arm in each of their matches. The job ([`super::job`]) prepares its
//! examples.

pub mod sft;
pub mod spin;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::score::{TokenizedPair, forward};
use super::state::{TrainState, param_grads};
use super::{PairLogps, TrainConfig, TrainPair};
use crate::error::Result;

/// Which loss a run trains with; the command sets it (`train`/`spin`: SPIN, `sft`: SFT), and
/// a resume must keep it. The name `train_config.json` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    #[default]
    Spin,
    Sft,
}

impl ObjectiveKind {
    /// Rows per example in a forward pass (for the memory estimate).
    pub fn rows_per_example(self) -> usize {
        match self {
            Self::Spin => spin::ROWS_PER_EXAMPLE,
            Self::Sft => sft::ROWS_PER_EXAMPLE,
        }
    }

    /// The model card's "method" row; `iteration`: the SPIN iteration, under `wgspin spin`.
    pub fn card_method(self, cfg: &TrainConfig, iteration: Option<usize>) -> String {
        match self {
            Self::Spin => spin::card_method(cfg, iteration),
            Self::Sft => sft::CARD_METHOD.to_string(),
        }
    }
}

/// What the trainer learns from: one variant per objective, holding its examples.
pub enum Objective {
    /// SPIN: the pairwise loss on the margin of (real − generated) log-probs over the frozen
    /// reference's, summed over each response's tokens.
    Spin {
        pairs: Vec<TrainPair>,
        reference: PairLogps,
    },
    /// SFT: next-token negative log-likelihood of the response tokens, the mean per token of
    /// each optimizer step.
    Sft { seqs: Vec<TokenizedPair> },
}

impl Objective {
    /// The objective's behaviour over its examples, with the run's settings.
    pub fn behaviour<'a>(&'a self, cfg: &TrainConfig) -> Box<dyn TrainObjective + 'a> {
        match self {
            Self::Spin { pairs, reference } => Box::new(spin::Spin {
                pairs,
                reference,
                loss: cfg.loss,
            }),
            Self::Sft { seqs } => Box::new(sft::Sft { seqs }),
        }
    }
}

/// What the forward passes of one step measured, per objective.
#[derive(Debug, Clone, PartialEq)]
pub enum Measured {
    /// Policy and reference log-probs of the step's pairs, in step order.
    Pairs {
        policy: PairLogps,
        reference: PairLogps,
    },
    /// Summed negative log-likelihood over the step's response tokens.
    Nll { nll: f64, tokens: usize },
}

/// A step's statistics for logs and metrics, as its objective states them.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    loss: f64,
    metrics: Vec<(&'static str, f64)>,
    summary: String,
}

impl StepStats {
    /// `metrics`: what metrics.jsonl records after `loss`, named as TRL names them; `summary`:
    /// the log line's words after `loss …`.
    pub fn new(loss: f64, metrics: Vec<(&'static str, f64)>, summary: String) -> Self {
        Self {
            loss,
            metrics,
            summary,
        }
    }

    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// The objective's metrics besides the loss, in the order metrics.jsonl writes them.
    pub fn metrics(&self) -> &[(&'static str, f64)] {
        &self.metrics
    }

    /// One line for logs: `loss …` and, for SPIN, margins and accuracies.
    pub fn summary(&self) -> String {
        let loss = format!("loss {:.4}", self.loss);
        if self.summary.is_empty() {
            loss
        } else {
            format!("{loss} {}", self.summary)
        }
    }
}

/// One training objective over its examples (see the module header).
pub trait TrainObjective {
    /// Examples to train on.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the examples are called in messages ("training pairs").
    fn noun(&self) -> &'static str;

    /// Each example's padded length: the longest row it puts in a forward pass.
    fn lengths(&self) -> Vec<usize>;

    /// Tokens example `i` feeds to a forward pass (for tokens/s).
    fn tokens(&self, i: usize) -> usize;

    /// The step's forward and backward passes over the micro-batches `micro` (indices of
    /// examples), each through [`Pass::backward`]; the step's loss is whatever mean the objective
    /// takes over the whole step, times [`Pass::scale`]. Returns what each pass measured, left on
    /// the device (f32, `[n]` each): the trainer reads it back once per step, after issuing the
    /// update, and hands it to [`TrainObjective::measure`].
    fn step(&self, pass: &mut Pass, micro: &[Vec<usize>]) -> Result<Vec<Tensor<1>>>;

    /// The step's measurement from the host values of what [`TrainObjective::step`] returned,
    /// one vector per pass.
    fn measure(&self, micro: &[Vec<usize>], values: Vec<Vec<f32>>) -> Measured;

    /// The step's statistics from what it measured.
    fn stats(&self, measured: &Measured) -> StepStats;

    /// For the NaN stop: what to show of the measurement, and the likeliest cause.
    fn divergence(&self, measured: &Measured, first_step: bool) -> (String, &'static str);
}

/// The trainer's side of one optimizer step: forward and backward passes, with the gradients
/// accumulated over the step's micro-batches.
pub struct Pass<'a> {
    state: &'a TrainState,
    /// `[rows, cols]` per parameter ([`crate::model::named::ParamRef::grad`]).
    grads: Option<Vec<Tensor<2>>>,
    /// Each pass's loss `[1]` (no autodiff), for the device's finiteness check.
    losses: Vec<Tensor<1>>,
}

impl<'a> Pass<'a> {
    pub fn new(state: &'a TrainState) -> Self {
        Self {
            state,
            grads: None,
            losses: vec![],
        }
    }

    /// The factor on the loss: f16's loss scale, 1 otherwise ([`TrainState::update`] divides
    /// it out).
    pub fn scale(&self) -> f64 {
        self.state.loss_scale()
    }

    /// Where the model's tensors live.
    pub fn device(&self) -> Device {
        self.state.model.device()
    }

    /// Adds the gradients of `loss_of(token log-probs of seqs)` and returns the second value
    /// `loss_of` returns: one forward and backward, or with `--gradient-checkpointing`
    /// recomputed per layer (see [`super::recompute`]). `micro` numbers the forward pass within
    /// the step (dropout seeds).
    pub fn backward(
        &mut self,
        seqs: &[TokenizedPair],
        micro: usize,
        loss_of: impl FnOnce(Tensor<1>) -> (Tensor<1>, Tensor<1>),
    ) -> Result<Tensor<1>> {
        let s = self.state;
        let (seed, chunk) = (s.dropout_seed(micro), s.cfg.max_logits);
        let mut loss_value = None;
        let loss_of = |lp| {
            let (loss, measured) = loss_of(lp);
            loss_value = Some(loss.clone().inner());
            (loss, measured)
        };
        let (g, measured) = if s.cfg.gradient_checkpointing {
            super::recompute::gradients(&s.model, seqs, s.pad_id, chunk, seed, loss_of)?
        } else {
            let lp = forward(&s.model, seqs, s.pad_id, chunk, seed);
            let (loss, measured) = loss_of(lp);
            (param_grads(&s.model, &loss.backward())?, measured)
        };
        self.losses.extend(loss_value);
        self.grads = Some(match self.grads.take() {
            None => g,
            Some(acc) => acc.into_iter().zip(g).map(|(a, b)| a + b).collect(),
        });
        Ok(measured)
    }

    /// The step's summed gradients, aligned with [`crate::model::named::trainable_mut`], and
    /// each pass's loss `[1]` (as [`Pass::backward`] took it, times the scale).
    pub fn into_parts(self) -> (Vec<Tensor<2>>, Vec<Tensor<1>>) {
        (self.grads.unwrap_or_default(), self.losses)
    }
}

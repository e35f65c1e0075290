//! The one trainer: SPIN's pairwise objective and SFT's next-token loss go through the same
//! batching, gradient accumulation, chunked log-probs, clipping, NaN stop and update; the job
//! around it ([`super::job`]) gives both the same metrics and resumable checkpoints.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::loss::{PairLoss, pair_losses};
use super::score::{TokenizedPair, sequence_sums};
use super::state::{TrainState, param_grads, read_f32};
use super::{PairLogps, RewardStats, TrainConfig, TrainPair, reward_stats};
use crate::error::{Error, Result};
use crate::model::Transformer;

/// Which loss a run trains with; the command sets it (`train`/`spin`: SPIN, `sft`: SFT), and
/// a resume must keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    #[default]
    Spin,
    Sft,
}

/// What the trainer learns from.
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
    pub fn len(&self) -> usize {
        match self {
            Self::Spin { pairs, .. } => pairs.len(),
            Self::Sft { seqs } => seqs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each example's padded length: the longest row it puts in a forward pass.
    pub fn lengths(&self) -> Vec<usize> {
        match self {
            Self::Spin { pairs, .. } => pairs
                .iter()
                .map(|p| p.prompt.len() + p.real.len().max(p.generated.len()))
                .collect(),
            Self::Sft { seqs } => seqs
                .iter()
                .map(|s| s.prompt.len() + s.response.len())
                .collect(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Spin { .. } => "training pairs",
            Self::Sft { .. } => "SFT examples",
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

/// Step statistics for metrics: TRL's reward statistics for SPIN, the per-token loss for SFT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepStats {
    Pairs(RewardStats),
    Nll { loss: f64 },
}

impl StepStats {
    pub fn loss(&self) -> f64 {
        match self {
            Self::Pairs(s) => s.loss,
            Self::Nll { loss } => *loss,
        }
    }

    /// One line for logs: `loss …` and, for SPIN, margins and accuracies.
    pub fn summary(&self) -> String {
        match self {
            Self::Pairs(s) => format!(
                "loss {:.4} rewards/margins {:.4} rewards/accuracies {:.2}",
                s.loss, s.margins, s.accuracies
            ),
            Self::Nll { loss } => format!("loss {loss:.4}"),
        }
    }
}

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
        match &self.measured {
            Measured::Pairs { policy, reference } => Some((policy, reference)),
            Measured::Nll { .. } => None,
        }
    }
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
        if let StepStats::Pairs(s) = &self.stats {
            let extra = json!({
                "rewards/real": s.rewards_real,
                "rewards/generated": s.rewards_generated,
                "rewards/margins": s.margins,
                "rewards/accuracies": s.accuracies,
                "logps/real": s.logps_real,
                "logps/generated": s.logps_generated,
            });
            if let (Some(r), Some(e)) = (row.as_object_mut(), extra.as_object()) {
                r.extend(e.clone());
            }
        }
        if let Some(r) = row.as_object_mut() {
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
        let what = objective.what();
        let state = TrainState::new(model, cfg, objective.len(), what, pad_id)?;
        Ok(Self { state, objective })
    }

    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }

    /// Gradients of `loss_of(token log-probs of seqs)` for the trainable parameters (aligned
    /// with [`crate::model::named::trainable_mut`]) and the second value `loss_of` returns: one
    /// forward and backward, or with `--gradient-checkpointing` recomputed per layer (see
    /// [`super::recompute`]). `micro` numbers the forward pass within the step (dropout seeds).
    fn backward(
        &self,
        seqs: &[TokenizedPair],
        micro: usize,
        loss_of: impl FnOnce(Tensor<1>) -> (Tensor<1>, Tensor<1>),
    ) -> Result<(Vec<Tensor<1>>, Tensor<1>)> {
        let s = &self.state;
        let (seed, chunk) = (s.dropout_seed(micro), s.cfg.max_logits);
        if s.cfg.gradient_checkpointing {
            return super::recompute::gradients(&s.model, seqs, s.pad_id, chunk, seed, loss_of);
        }
        let lp = super::score::forward(&s.model, seqs, s.pad_id, chunk, seed);
        let (loss, measured) = loss_of(lp);
        Ok((param_grads(&s.model, &loss.backward())?, measured))
    }

    /// Gradients of the step's loss over the examples of `micro` (one forward + backward per
    /// entry, accumulated), aligned with [`crate::model::named::trainable_mut`], and what the
    /// forward passes measured. SPIN's loss is the mean over the step's pairs, SFT's the mean
    /// over its response tokens.
    ///
    /// Under f16 loss scaling the gradients are those of the loss times
    /// [`TrainState::loss_scale`]; [`TrainState::update`] divides it out.
    pub fn gradients(&self, micro: &[Vec<usize>]) -> Result<StepGrads> {
        let scale = self.state.loss_scale();
        let mut grads: Option<Vec<Tensor<1>>> = None;
        let mut add = |g: Vec<Tensor<1>>| {
            grads = Some(match grads.take() {
                None => g,
                Some(acc) => acc.into_iter().zip(g).map(|(a, b)| a + b).collect(),
            });
        };
        let mut tokens = 0;
        let measured = match &self.objective {
            Objective::Spin { pairs, reference } => {
                let n_step: usize = micro.iter().map(Vec::len).sum();
                let PairLoss { kind, beta } = self.state.cfg.loss;
                let mut policy = PairLogps::default();
                let mut seen = PairLogps::default();
                for (k, idx) in micro.iter().enumerate() {
                    // Real responses first, then generated: one forward pass for both.
                    let b = idx.len();
                    let seqs: Vec<TokenizedPair> = idx
                        .iter()
                        .map(|&i| pairs[i].real_pair())
                        .chain(idx.iter().map(|&i| pairs[i].generated_pair()))
                        .collect();
                    let margin_ref: Vec<f32> = idx
                        .iter()
                        .map(|&i| (reference.real[i] - reference.generated[i]) as f32)
                        .collect();
                    let device = self.state.model.device();
                    let margin_ref =
                        Tensor::<1>::from_data(TensorData::new(margin_ref, [b]), &device);
                    let (g, logps) = self.backward(&seqs, k, |lp| {
                        let logps = sequence_sums(lp, &seqs); // [2b]
                        let margin = logps.clone().narrow(0, 0, b)
                            - logps.clone().narrow(0, b, b)
                            - margin_ref;
                        let loss = pair_losses(kind, margin, beta).sum();
                        (loss.mul_scalar(scale / n_step as f64), logps)
                    })?;
                    add(g);
                    let lp = read_f32(logps.inner(), "log-probs")?;
                    for (k, &i) in idx.iter().enumerate() {
                        policy.real.push(lp[k] as f64);
                        policy.generated.push(lp[b + k] as f64);
                        seen.real.push(reference.real[i]);
                        seen.generated.push(reference.generated[i]);
                        tokens += pairs[i].tokens();
                    }
                }
                Measured::Pairs {
                    policy,
                    reference: seen,
                }
            }
            Objective::Sft { seqs } => {
                let n_tokens: usize = micro
                    .iter()
                    .flatten()
                    .map(|&i| seqs[i].response.len())
                    .sum();
                let mut nll = 0.0;
                for (k, idx) in micro.iter().enumerate() {
                    let batch: Vec<TokenizedPair> = idx.iter().map(|&i| seqs[i].clone()).collect();
                    tokens += batch
                        .iter()
                        .map(|p| p.prompt.len() + p.response.len())
                        .sum::<usize>();
                    let (g, lp) = self.backward(&batch, k, |lp| {
                        let loss = lp.clone().sum().neg();
                        (loss.mul_scalar(scale / n_tokens.max(1) as f64), lp)
                    })?;
                    add(g);
                    nll -= read_f32(lp.inner(), "log-probs")?
                        .iter()
                        .map(|&x| x as f64)
                        .sum::<f64>();
                }
                Measured::Nll {
                    nll,
                    tokens: n_tokens,
                }
            }
        };
        Ok(StepGrads {
            grads: grads.unwrap_or_default(),
            measured,
            tokens,
        })
    }

    /// One optimizer step (its forward passes, backward, clipping, update). Fails on a
    /// non-finite loss or gradient, leaving the model as it was before the step.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let micro = self.state.micro_batches(&self.objective.lengths());
        let StepGrads {
            grads,
            measured,
            tokens,
        } = self.gradients(&micro)?;
        let PairLoss { kind, beta } = self.state.cfg.loss;
        let stats = match &measured {
            Measured::Pairs { policy, reference } => {
                StepStats::Pairs(reward_stats(policy, reference, kind, beta))
            }
            Measured::Nll { nll, tokens } => StepStats::Nll {
                loss: nll / (*tokens).max(1) as f64,
            },
        };
        if !stats.loss().is_finite() {
            return Err(self.diverged(&stats, &measured));
        }
        let (lr, norm) = self.state.update(grads)?;
        let secs = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.state.step,
            epoch: self.state.step as f64 / self.state.plan.steps_per_epoch as f64,
            stats,
            lr,
            grad_norm: norm,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            loss_scale: self.state.scaler.map(|s| (s.scale, !norm.is_finite())),
        })
    }

    /// The NaN stop's error, naming the likeliest cause rather than always blaming --lr.
    fn diverged(&self, stats: &StepStats, measured: &Measured) -> Error {
        let first = self.state.step == 0;
        let (detail, cause) = match measured {
            Measured::Pairs { policy, reference } => {
                let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
                let cause = if !(finite(&reference.real) && finite(&reference.generated)) {
                    "the reference model's own log-probs are not finite: the starting weights or \
                     config are broken, no --lr fixes that"
                } else if first {
                    "the first step already diverges: check the data, --beta and --lr"
                } else {
                    "training diverged: try a lower --lr, a --max-grad-norm, or a smaller --beta"
                };
                (
                    format!(
                        " (log-probs real {:?}, generated {:?})",
                        policy.real, policy.generated
                    ),
                    cause,
                )
            }
            Measured::Nll { .. } => (
                String::new(),
                if first {
                    "before any update: the starting weights, the config or the data are broken"
                } else {
                    "training diverged: try a lower --lr or a --max-grad-norm"
                },
            ),
        };
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

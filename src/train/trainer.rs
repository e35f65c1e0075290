//! The one trainer: SPIN's pairwise objective and SFT's next-token loss go through the same
//! batching, gradient accumulation, chunked log-probs, clipping, NaN stop and update; the job
//! around it ([`super::job`]) gives both the same metrics and resumable checkpoints.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::loss::{PairLoss, pair_losses};
use super::score::{TokenizedPair, response_token_logprobs, sequence_logprobs};
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
    pub grad_norm: f64,
    pub tokens_per_s: f64,
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

    /// SPIN's loss of pairs `idx` (differentiable, summed) and the policy log-probs `[2b]`
    /// (real responses first).
    fn spin_forward(
        &self,
        pairs: &[TrainPair],
        reference: &PairLogps,
        idx: &[usize],
    ) -> (Tensor<1>, Tensor<1>) {
        let b = idx.len();
        let seqs: Vec<TokenizedPair> = idx
            .iter()
            .map(|&i| pairs[i].real_pair())
            .chain(idx.iter().map(|&i| pairs[i].generated_pair()))
            .collect();
        let logps = sequence_logprobs(
            &self.state.model,
            &seqs,
            self.state.pad_id,
            self.state.cfg.max_logits,
        ); // [2b]
        let device = logps.device();
        let reference: Vec<f32> = idx
            .iter()
            .map(|&i| (reference.real[i] - reference.generated[i]) as f32)
            .collect();
        let reference = Tensor::<1>::from_data(TensorData::new(reference, [b]), &device);
        let margin = logps.clone().narrow(0, 0, b) - logps.clone().narrow(0, b, b) - reference;
        let PairLoss { kind, beta } = self.state.cfg.loss;
        (pair_losses(kind, margin, beta).sum(), logps)
    }

    /// Gradients of the step's loss over the examples of `micro` (one forward + backward per
    /// entry, accumulated), aligned with [`crate::model::named::trainable_mut`], and what the
    /// forward passes measured. SPIN's loss is the mean over the step's pairs, SFT's the mean
    /// over its response tokens.
    pub fn gradients(&self, micro: &[Vec<usize>]) -> Result<StepGrads> {
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
                let mut policy = PairLogps::default();
                let mut seen = PairLogps::default();
                for (k, idx) in micro.iter().enumerate() {
                    self.state.seed_dropout(k);
                    let (loss, logps) = self.spin_forward(pairs, reference, idx);
                    let g = loss.div_scalar(n_step as f64).backward();
                    add(param_grads(&self.state.model, &g)?);
                    let lp = read_f32(logps.inner(), "log-probs")?;
                    let b = idx.len();
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
                    self.state.seed_dropout(k);
                    let batch: Vec<TokenizedPair> = idx.iter().map(|&i| seqs[i].clone()).collect();
                    tokens += batch
                        .iter()
                        .map(|p| p.prompt.len() + p.response.len())
                        .sum::<usize>();
                    let lp = response_token_logprobs(
                        &self.state.model,
                        &batch,
                        self.state.pad_id,
                        self.state.cfg.max_logits,
                    );
                    let loss = lp.clone().sum().neg().div_scalar(n_tokens.max(1) as f64);
                    add(param_grads(&self.state.model, &loss.backward())?);
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
        Error::Invalid(format!(
            "step {}: the loss is {}{detail}; stopping, the last checkpoint is kept. {cause}",
            self.state.step + 1,
            stats.loss(),
        ))
    }
}

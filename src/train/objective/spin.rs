//! SPIN's pairwise objective: each pair's real and generated responses go through one forward
//! pass, their summed response-token log-probs give the margin over the frozen reference's, and
//! the pairwise loss of [`crate::train::loss`] (sigmoid, hinge or IPO) is averaged over the step's
//! pairs. Metrics are TRL's reward statistics.

use burn::tensor::{DType, Tensor, TensorData};

use super::{Measured, Pass, StepStats, TrainObjective};
use crate::error::Result;
use crate::train::loss::{PairLoss, pair_losses};
use crate::train::score::{TokenizedPair, sequence_sums};
use crate::train::{PairLogps, TrainConfig, TrainPair, reward_stats};

/// A pair puts its real and generated response through the forward pass together.
pub const ROWS_PER_EXAMPLE: usize = 2;

/// The model card's "method" row.
pub fn card_method(cfg: &TrainConfig, iteration: Option<usize>) -> String {
    let iteration = iteration
        .map(|t| format!(", iteration {t} (θ{t} → θ{})", t + 1))
        .unwrap_or_default();
    format!(
        "SPIN (Self-Play fIne-tuNing, Chen et al. 2024){iteration}: {} loss, β = {}",
        cfg.loss.kind, cfg.loss.beta
    )
}

/// SPIN over tokenized pairs, with the reference's log-probs of each.
pub struct Spin<'a> {
    pub pairs: &'a [TrainPair],
    pub reference: &'a PairLogps,
    pub loss: PairLoss,
}

impl TrainObjective for Spin<'_> {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn noun(&self) -> &'static str {
        "training pairs"
    }

    fn lengths(&self) -> Vec<usize> {
        self.pairs
            .iter()
            .map(|p| p.prompt.len() + p.real.len().max(p.generated.len()))
            .collect()
    }

    fn tokens(&self, i: usize) -> usize {
        self.pairs[i].tokens()
    }

    /// The loss is the mean over the step's pairs.
    fn step(&self, pass: &mut Pass, micro: &[Vec<usize>]) -> Result<Vec<Tensor<1>>> {
        let (pairs, reference) = (self.pairs, self.reference);
        let n_step: usize = micro.iter().map(Vec::len).sum();
        let PairLoss { kind, beta } = self.loss;
        let scale = pass.scale();
        let mut out = Vec::with_capacity(micro.len());
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
            crate::device::traffic::uploaded(1);
            let margin_ref =
                Tensor::<1>::from_data(TensorData::new(margin_ref, [b]), &pass.device());
            let logps = pass.backward(&seqs, k, |lp| {
                let logps = sequence_sums(lp, &seqs); // [2b]
                let margin =
                    logps.clone().narrow(0, 0, b) - logps.clone().narrow(0, b, b) - margin_ref;
                let loss = pair_losses(kind, margin, beta).sum();
                (loss.mul_scalar(scale / n_step as f64), logps)
            })?;
            out.push(logps.inner().cast(DType::F32)); // [2b]: real, then generated
        }
        Ok(out)
    }

    fn measure(&self, micro: &[Vec<usize>], values: Vec<Vec<f32>>) -> Measured {
        let reference = self.reference;
        let mut policy = PairLogps::default();
        let mut seen = PairLogps::default();
        for (idx, lp) in micro.iter().zip(values) {
            let b = idx.len();
            for (k, &i) in idx.iter().enumerate() {
                policy.real.push(lp[k] as f64);
                policy.generated.push(lp[b + k] as f64);
                seen.real.push(reference.real[i]);
                seen.generated.push(reference.generated[i]);
            }
        }
        Measured::Pairs {
            policy,
            reference: seen,
        }
    }

    fn stats(&self, measured: &Measured) -> StepStats {
        let empty = PairLogps::default();
        let (policy, reference) = pairs(measured).unwrap_or((&empty, &empty));
        let s = reward_stats(policy, reference, self.loss.kind, self.loss.beta);
        let metrics = vec![
            ("rewards/real", s.rewards_real),
            ("rewards/generated", s.rewards_generated),
            ("rewards/margins", s.margins),
            ("rewards/accuracies", s.accuracies),
            ("logps/real", s.logps_real),
            ("logps/generated", s.logps_generated),
        ];
        let summary = format!(
            "rewards/margins {:.4} rewards/accuracies {:.2}",
            s.margins, s.accuracies
        );
        StepStats::new(s.loss, metrics, summary)
    }

    fn divergence(&self, measured: &Measured, first_step: bool) -> (String, &'static str) {
        let Some((policy, reference)) = pairs(measured) else {
            return (String::new(), "training diverged");
        };
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        let cause = if !(finite(&reference.real) && finite(&reference.generated)) {
            "the reference model's own log-probs are not finite: the starting weights or config \
             are broken, no --lr fixes that"
        } else if first_step {
            "the first step already diverges: check the data, --beta and --lr"
        } else {
            "training diverged: try a lower --lr, a --max-grad-norm, or a smaller --beta"
        };
        let detail = format!(
            " (log-probs real {:?}, generated {:?})",
            policy.real, policy.generated
        );
        (detail, cause)
    }
}

/// (policy, reference) log-probs of a SPIN step's measurement.
pub fn pairs(measured: &Measured) -> Option<(&PairLogps, &PairLogps)> {
    if let Measured::Pairs { policy, reference } = measured {
        Some((policy, reference))
    } else {
        None
    }
}

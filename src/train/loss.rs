//! SPIN's pairwise losses on the margin
//! `m = (log π(y|x) − log π_ref(y|x)) − (log π(y'|x) − log π_ref(y'|x))`
//! (y the human response, y' the opponent's): sigmoid `−log σ(β m)` (the paper's logistic loss),
//! hinge `relu(1 − β m)`, and IPO `(m − 1/(2β))²`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    #[default]
    Sigmoid,
    Hinge,
    Ipo,
}

impl FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sigmoid" => Ok(LossKind::Sigmoid),
            "hinge" => Ok(LossKind::Hinge),
            "ipo" => Ok(LossKind::Ipo),
            _ => Err(format!("unknown loss {s:?}; choose sigmoid, hinge or ipo")),
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossKind::Sigmoid => "sigmoid",
            LossKind::Hinge => "hinge",
            LossKind::Ipo => "ipo",
        })
    }
}

/// SPIN's pairwise objective: which loss, and β inside it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct PairLoss {
    /// Pairwise loss: sigmoid (SPIN's logistic loss), hinge or ipo.
    #[arg(long = "loss", value_name = "LOSS", default_value_t = Self::default().kind)]
    pub kind: LossKind,
    /// β: scale of the log-prob margin inside the loss.
    #[arg(long, default_value_t = Self::default().beta)]
    pub beta: f64,
}

impl Default for PairLoss {
    fn default() -> Self {
        Self {
            kind: LossKind::Sigmoid,
            beta: 0.1,
        }
    }
}

/// Per-pair losses `[pairs]` from margins `[pairs]` (differentiable).
pub fn pair_losses(kind: LossKind, margin: Tensor<1>, beta: f64) -> Tensor<1> {
    match kind {
        LossKind::Sigmoid => log_sigmoid(margin.mul_scalar(beta)).neg(),
        LossKind::Hinge => relu(margin.mul_scalar(-beta).add_scalar(1.0)),
        LossKind::Ipo => margin.sub_scalar(1.0 / (2.0 * beta)).square(),
    }
}

/// Host twin of [`pair_losses`] for one margin, in f64 (tests and metrics).
pub fn pair_loss_host(kind: LossKind, margin: f64, beta: f64) -> f64 {
    match kind {
        LossKind::Sigmoid => {
            let z = beta * margin;
            // −log σ(z) = log(1 + e^{−z}), stable for both signs.
            if z >= 0.0 {
                (-z).exp().ln_1p()
            } else {
                -z + z.exp().ln_1p()
            }
        }
        LossKind::Hinge => (1.0 - beta * margin).max(0.0),
        LossKind::Ipo => (margin - 1.0 / (2.0 * beta)).powi(2),
    }
}

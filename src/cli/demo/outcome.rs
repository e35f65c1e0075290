//! What the demo measured: its table rows and SFT curves. Their own module so the run that
//! produces them and the report, page and terminal that show them each import them one way.

use serde::Serialize;

/// One row of the demo's table.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub seed: u64,
    pub stage: String,
    /// 0 for the converged SFT model, t+1 after SPIN iteration t or the matching continued SFT.
    pub round: usize,
    /// "start", "spin" or "sft".
    pub method: String,
    /// On the test split.
    pub exact_match: f64,
    pub heldout_loglik_per_token: f64,
    pub validation_exact_match: f64,
    pub reward_accuracy: Option<f64>,
    pub reward_margin: Option<f64>,
    pub seconds: f64,
}

/// One epoch of the converging SFT.
#[derive(Debug, Clone, Serialize)]
pub struct SftEpoch {
    pub epoch: usize,
    /// The learning rate of this epoch (it drops at plateaus).
    pub lr: f64,
    pub validation_exact_match: f64,
    pub validation_loglik_per_token: f64,
}

/// A seed's SFT run to convergence: every epoch and the one kept.
#[derive(Debug, Clone, Serialize)]
pub struct SftCurve {
    pub seed: u64,
    pub best_epoch: usize,
    pub epochs: Vec<SftEpoch>,
}

/// Everything the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoOutcome {
    pub results: Vec<StageResult>,
    pub sft_curves: Vec<SftCurve>,
}

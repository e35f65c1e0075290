//! Training: SPIN on (prompt, real, generated) pairs, where the main player θ_{t+1} learns to
//! tell the human response from the opponent's with the opponent θ_t as the frozen reference, and
//! SFT on (prompt, response), both through one [`Trainer`] (see [`trainer`]); what differs
//! between them lives in [`objective`].
//!
//! The reference log-probs are computed once, before training, and cached in the output folder,
//! so only one model is in memory while training. Each optimizer step feeds the real and the
//! generated responses of its pairs through one forward pass, sums response-token log-probs
//! (prompt masked, eos appended) through the fused chunked log-prob op, and applies the pairwise
//! loss to the margin (see [`loss`]). Data order, learning rate and optimizer state are all
//! functions of (seed, step), so a resumed run continues exactly where the saved one stopped.

pub mod card;
pub mod flat;
pub mod job;
pub mod loss;
pub mod memory;
pub mod objective;
pub mod optim;
pub mod profile;
pub mod recompute;
pub mod score;
pub mod state;
pub mod trainer;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::SftExample;
use crate::error::{Error, Result};
use crate::hf::tokenizer::ChatTokenizer;
use crate::model::Transformer;
use crate::model::lora::LoraConfig;
use crate::model::precision::Precision;
use crate::train::score::{ScoreOptions, TokenizedPair, score_all};
use loss::{LossKind, PairLoss, pair_loss_host};
pub use objective::{Measured, Objective, ObjectiveKind, StepStats, TrainObjective};
use optim::{OptimizerKind, Schedule};
pub use state::{Plan, TrainState};
pub use trainer::{StepGrads, StepMetrics, Trainer};

/// Every training setting, with the defaults of SPIN's recipe (uclaml/SPIN `configs/config.yaml`:
/// RMSprop, lr 5e-7, 3 epochs, batch 8, linear schedule with 10% warmup, lengths 1024 / 512).
/// One schema: the doc comments are the flags' help, [`Default`] holds the defaults both clap
/// and serde use, `--config FILE.toml` takes the flag names as keys, and `train_config.json`
/// is this struct serialized (field names, with the pair loss nested as `loss: {kind, beta}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// What is trained: SPIN's pairwise loss or SFT's next-token loss (set by the command).
    #[arg(skip)]
    pub objective: ObjectiveKind,
    /// SPIN's pairwise loss (unused by SFT; `wgspin train` and `spin` set it from --loss/--beta).
    #[arg(skip)]
    pub loss: PairLoss,
    /// Peak learning rate.
    #[arg(long, default_value_t = Self::default().lr)]
    pub lr: f64,
    /// Optimizer: rmsprop (SPIN's choice) or adamw.
    #[arg(long, default_value_t = Self::default().optimizer)]
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = Self::default().weight_decay)]
    pub weight_decay: f64,
    /// Passes over the training data.
    #[arg(long, default_value_t = Self::default().epochs)]
    pub epochs: usize,
    /// Examples per micro-batch (one forward pass; a SPIN pair counts once, its real and
    /// generated responses go through together).
    #[arg(long, default_value_t = Self::default().batch_size)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch-size × grad-accum).
    #[arg(long, default_value_t = Self::default().grad_accum)]
    pub grad_accum: usize,
    /// Longest prompt + response in tokens (at most the model's context); longer examples are truncated as SPIN does.
    #[arg(long, default_value_t = Self::default().max_length)]
    pub max_length: usize,
    /// Longest prompt kept (its end) when an example is too long.
    #[arg(long, default_value_t = Self::default().max_prompt_length)]
    pub max_prompt_length: usize,
    /// Fraction of the steps with linear learning-rate warmup.
    #[arg(long, default_value_t = Self::default().warmup_ratio)]
    pub warmup_ratio: f64,
    /// Learning-rate schedule after warmup: linear, cosine or constant.
    #[arg(long, default_value_t = Self::default().schedule)]
    pub schedule: Schedule,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = Self::default().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Seed of the data order (shuffled per epoch as a pure function of seed and epoch).
    #[arg(long, default_value_t = Self::default().data_seed)]
    pub data_seed: u64,
    /// Save a resumable checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = Self::default().save_every)]
    pub save_every: usize,
    /// Write a metrics row every N steps.
    #[arg(long, default_value_t = Self::default().logging_steps)]
    pub logging_steps: usize,
    /// LoRA: train low-rank adapters on the frozen model instead of every weight.
    #[command(flatten)]
    pub lora: LoraConfig,
    /// Activations' dtype: auto (f16 on a GPU whose WGSL has shader-f16, f32 elsewhere), f32 or
    /// f16. Trained weights and optimizer state stay f32 (a LoRA base is stored in f16); with f16
    /// the loss is scaled dynamically and a step whose gradients overflow is skipped. In spin the
    /// opponent generates in it too.
    #[arg(long, default_value_t = Self::default().dtype)]
    pub dtype: Precision,
    /// Refuse to start when the estimated peak memory of a step (at --max-length) exceeds this,
    /// e.g. 8GB (binary units), naming the setting to change; `wgspin plan` prints the estimate.
    #[arg(long, value_parser = memory::parse_size)]
    #[serde(skip)]
    pub max_memory: Option<u64>,
    /// Also sort the shuffled examples by length in groups of 50 optimizer steps, so a step's
    /// examples have similar lengths and pad less (transformers' group_by_length). Without it,
    /// only the examples within each step are sorted into its micro-batches.
    #[arg(long)]
    pub group_by_length: bool,
    /// Gradient checkpointing: keep only each decoder layer's input and recompute the layer in
    /// the backward pass (transformers' per-layer checkpointing); less memory, one more forward.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Logits (positions × vocab) the lm_head computes at once in training and scoring; more
    /// means fewer launches and more memory. 0 = from the device: an eighth of its largest
    /// buffer, at most 2²⁶, on a GPU; 2²³ on the CPU. Results do not depend on it, so a resume
    /// may change it.
    #[arg(long, default_value_t = Self::default().max_logits)]
    #[serde(skip_serializing)]
    pub max_logits: usize,
}

/// SFT's peak learning rate (the alignment-handbook SFT recipes use 2e-5): SPIN's 5e-7 would
/// barely move a model under the next-token loss.
pub const SFT_LR: f64 = 2e-5;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveKind::Spin,
            loss: PairLoss::default(),
            lr: 5e-7,
            optimizer: OptimizerKind::Rmsprop,
            weight_decay: 0.0,
            epochs: 3,
            batch_size: 8,
            grad_accum: 1,
            max_length: 1024,
            max_prompt_length: 512,
            warmup_ratio: 0.1,
            schedule: Schedule::Linear,
            max_grad_norm: 1.0,
            data_seed: 42,
            save_every: 0,
            logging_steps: 1,
            lora: LoraConfig::default(),
            dtype: Precision::Auto,
            max_memory: None,
            group_by_length: false,
            gradient_checkpointing: false,
            max_logits: 0,
        }
    }
}

impl TrainConfig {
    /// The autodiff device training runs on (checkpointing is the trainer's, per layer: see
    /// [`recompute`]).
    pub fn train_device(&self, device: &Device) -> Device {
        device.clone().autodiff()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        // Each message names the flag the user typed, with its value.
        if !(self.loss.beta > 0.0 && self.loss.beta.is_finite()) {
            return bad(format!("--beta {}: must be > 0", self.loss.beta));
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr {}: must be ≥ 0", self.lr));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!("--weight-decay {}: must be ≥ 0", self.weight_decay));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad(format!(
                "--max-grad-norm {}: must be ≥ 0 (0 = off)",
                self.max_grad_norm
            ));
        }
        for (flag, n) in [
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--max-prompt-length", self.max_prompt_length),
            ("--logging-steps", self.logging_steps),
        ] {
            if n == 0 {
                return bad(format!("{flag} 0: must be at least 1"));
            }
        }
        if self.max_length <= self.max_prompt_length {
            return bad(format!(
                "--max-length {} must exceed --max-prompt-length {} so responses keep some tokens",
                self.max_length, self.max_prompt_length
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio {}: must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        self.lora.validate()
    }
}

/// A tokenized training pair; both responses end with eos unless truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainPair {
    pub id: String,
    pub prompt: Vec<u32>,
    pub real: Vec<u32>,
    pub generated: Vec<u32>,
}

impl TrainPair {
    pub fn real_pair(&self) -> TokenizedPair {
        TokenizedPair {
            prompt: self.prompt.clone(),
            response: self.real.clone(),
        }
    }
    pub fn generated_pair(&self) -> TokenizedPair {
        TokenizedPair {
            prompt: self.prompt.clone(),
            response: self.generated.clone(),
        }
    }
    pub fn tokens(&self) -> usize {
        2 * self.prompt.len() + self.real.len() + self.generated.len()
    }
}

/// SPIN's truncation: when prompt + the longer response exceed `max_length`, keep the end of the
/// prompt (at most `max_prompt_length` tokens), then cut both responses to fit.
pub fn truncate(
    mut prompt: Vec<u32>,
    mut real: Vec<u32>,
    mut generated: Vec<u32>,
    max_length: usize,
    max_prompt_length: usize,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let longest = real.len().max(generated.len());
    if prompt.len() + longest > max_length && prompt.len() > max_prompt_length {
        prompt.drain(..prompt.len() - max_prompt_length);
    }
    if prompt.len() + longest > max_length {
        let keep = max_length.saturating_sub(prompt.len()).max(1);
        real.truncate(keep);
        generated.truncate(keep);
    }
    (prompt, real, generated)
}

/// `(--max-length, --max-prompt-length)`, within the model's context where that is shorter
/// (positions past it were never trained, and a long row would size the attention scores past any
/// device); the prompt keeps room for at least one response token.
pub fn lengths(cfg: &TrainConfig, tok: &ChatTokenizer) -> (usize, usize) {
    let max = tok
        .context()
        .map_or(cfg.max_length, |c| cfg.max_length.min(c));
    (max, cfg.max_prompt_length.min(max.saturating_sub(1)))
}

/// Tokenizes pairs by the shared rule (prompt through the chat template, eos appended) and
/// truncates them. Examples need `generated`.
pub fn tokenize_pairs(
    tok: &ChatTokenizer,
    examples: &[SftExample],
    cfg: &TrainConfig,
) -> Result<Vec<TrainPair>> {
    examples
        .iter()
        .map(|ex| {
            let generated = ex.generated.as_deref().ok_or_else(|| {
                Error::Invalid(format!(
                    "example {:?} has no generated response; train on the output of `wgspin generate` (SPIN format)",
                    ex.id
                ))
            })?;
            let prompt = tok
                .chat_prompt_ids(&ex.history, &ex.prompt)
                .map_err(|e| Error::Invalid(format!("example {:?}: {e}", ex.id)))?;
            let (max_length, max_prompt_length) = lengths(cfg, tok);
            let (prompt, real, generated) = truncate(
                prompt,
                tok.response_ids(&ex.response)?,
                tok.response_ids(generated)?,
                max_length,
                max_prompt_length,
            );
            Ok(TrainPair {
                id: ex.id.clone(),
                prompt,
                real,
                generated,
            })
        })
        .collect()
}

/// Tokenizes SFT examples (prompt through the chat template, response + eos), truncated as SPIN
/// truncates pairs.
pub fn tokenize_sft(
    tok: &ChatTokenizer,
    examples: &[SftExample],
    cfg: &TrainConfig,
) -> Result<Vec<TokenizedPair>> {
    let (max_length, max_prompt_length) = lengths(cfg, tok);
    examples
        .iter()
        .map(|e| {
            let p = TokenizedPair::chat(tok, &e.history, &e.prompt, &e.response)
                .map_err(|err| Error::Invalid(format!("example {:?}: {err}", e.id)))?;
            let (prompt, response, _) =
                truncate(p.prompt, p.response, vec![], max_length, max_prompt_length);
            Ok(TokenizedPair { prompt, response })
        })
        .collect()
}

/// log π(y|x) of the real and generated response of every pair.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PairLogps {
    pub real: Vec<f64>,
    pub generated: Vec<f64>,
}

/// Scores every pair's two responses with `model` (no gradients), batched by length.
pub fn pair_logps(
    model: &Transformer,
    pairs: &[TrainPair],
    pad_id: u32,
    batch_size: usize,
    max_logits: usize,
    progress: impl FnMut(usize),
) -> Result<PairLogps> {
    let seqs: Vec<TokenizedPair> = pairs
        .iter()
        .map(TrainPair::real_pair)
        .chain(pairs.iter().map(TrainPair::generated_pair))
        .collect();
    let opts = ScoreOptions {
        batch_size,
        max_logits,
    };
    let lps = score_all(model, &seqs, pad_id, opts, progress)?;
    let sums: Vec<f64> = lps
        .iter()
        .map(|l| l.iter().map(|&x| x as f64).sum())
        .collect();
    let n = pairs.len();
    Ok(PairLogps {
        real: sums[..n].to_vec(),
        generated: sums[n..].to_vec(),
    })
}

/// Reward statistics of pairs under a policy and a reference (metrics and evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RewardStats {
    pub loss: f64,
    pub rewards_real: f64,
    pub rewards_generated: f64,
    pub margins: f64,
    pub accuracies: f64,
    pub logps_real: f64,
    pub logps_generated: f64,
}

/// Each pair's margin β[(log π(y) − log π_ref(y)) − (log π(y') − log π_ref(y'))], in pair order.
pub fn pair_margins(policy: &PairLogps, reference: &PairLogps, beta: f64) -> Vec<f64> {
    (0..policy.real.len())
        .map(|i| {
            beta * (policy.real[i] - reference.real[i])
                - beta * (policy.generated[i] - reference.generated[i])
        })
        .collect()
}

pub fn reward_stats(
    policy: &PairLogps,
    reference: &PairLogps,
    kind: LossKind,
    beta: f64,
) -> RewardStats {
    let n = policy.real.len().max(1) as f64;
    let mut s = RewardStats::default();
    for i in 0..policy.real.len() {
        let rr = beta * (policy.real[i] - reference.real[i]);
        let rg = beta * (policy.generated[i] - reference.generated[i]);
        s.loss += pair_loss_host(kind, (rr - rg) / beta, beta) / n;
        s.rewards_real += rr / n;
        s.rewards_generated += rg / n;
        s.margins += (rr - rg) / n;
        s.accuracies += if rr > rg { 1.0 / n } else { 0.0 };
        s.logps_real += policy.real[i] / n;
        s.logps_generated += policy.generated[i] / n;
    }
    s
}

//! Supervised fine-tuning: next-token loss on response tokens (prompt masked, eos appended), the
//! mean over the response tokens of each step. Makes the SFT model SPIN starts from, and is the
//! baseline SPIN is compared with (continued SFT on the same data).
//!
//! Shares the optimizers, schedules, clipping, data order and checkpoint format of SPIN training
//! ([`crate::train`]); the pairwise-loss settings of [`TrainConfig`] are unused here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde_json::json;

use crate::data::SftExample;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::hf::bundle::ModelBundle;
use crate::hf::checkpoint;
use crate::model::Transformer;
use crate::train::job::{CHECKPOINT, METRICS_FILE};
use crate::train::score::{TokenizedPair, response_token_logprobs};
use crate::train::state::{param_grads, read_f32};
use crate::train::{TrainConfig, TrainState, truncate};

/// Metrics of one SFT step.
#[derive(Debug, Clone, PartialEq)]
pub struct SftMetrics {
    pub step: usize,
    pub epoch: f64,
    /// Mean negative log-likelihood per response token.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

pub struct SftTrainer {
    pub state: TrainState,
    pub seqs: Vec<TokenizedPair>,
}

impl SftTrainer {
    pub fn new(
        model: Transformer,
        cfg: TrainConfig,
        seqs: Vec<TokenizedPair>,
        pad_id: u32,
    ) -> Result<Self> {
        let state = TrainState::new(model, cfg, seqs.len(), "SFT examples", pad_id)?;
        Ok(Self { state, seqs })
    }

    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }

    pub fn train_step(&mut self) -> Result<SftMetrics> {
        let start = Instant::now();
        let step = self.state.step;
        let micro = self.state.micro_batches(self.seqs.len());
        let n_tokens: usize = micro
            .iter()
            .flatten()
            .map(|&i| self.seqs[i].response.len())
            .sum();
        let mut grads: Option<Vec<burn::tensor::Tensor<1>>> = None;
        let mut nll = 0.0;
        let mut fed = 0;
        for (k, idx) in micro.iter().enumerate() {
            self.state.seed_dropout(k);
            let batch: Vec<TokenizedPair> = idx.iter().map(|&i| self.seqs[i].clone()).collect();
            fed += batch
                .iter()
                .map(|p| p.prompt.len() + p.response.len())
                .sum::<usize>();
            let lp = response_token_logprobs(
                &self.state.model,
                &batch,
                self.state.pad_id,
                self.state.cfg.max_logits,
            );
            let loss = lp.clone().sum().neg().div_scalar(n_tokens as f64);
            let g = param_grads(&self.state.model, &loss.backward())?;
            grads = Some(match grads {
                None => g,
                Some(acc) => acc.into_iter().zip(g).map(|(a, b)| a + b).collect(),
            });
            nll -= read_f32(lp.inner(), "log-probs")?
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>();
        }
        let loss = nll / n_tokens.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::Invalid(format!(
                "step {}: the loss is {loss}; stopping. {}",
                step + 1,
                if step == 0 {
                    "Before any update: the starting weights, the config or the data are broken"
                } else {
                    "Training diverged: try a lower --lr or a --max-grad-norm"
                }
            )));
        }
        let (lr, norm) = self.state.update(grads.unwrap_or_default())?;
        Ok(SftMetrics {
            step: self.state.step,
            epoch: self.state.step as f64 / self.state.plan.steps_per_epoch as f64,
            loss,
            lr,
            grad_norm: norm,
            tokens_per_s: fed as f64 / start.elapsed().as_secs_f64().max(1e-9),
        })
    }
}

/// Tokenizes SFT examples (prompt through the chat template, response + eos), truncated as SPIN
/// truncates pairs.
pub fn tokenize_sft(
    tok: &crate::hf::tokenizer::ChatTokenizer,
    examples: &[SftExample],
    cfg: &TrainConfig,
) -> Result<Vec<TokenizedPair>> {
    examples
        .iter()
        .map(|e| {
            let p = TokenizedPair::new(tok, &e.prompt, &e.response)?;
            let (max_length, max_prompt_length) = crate::train::lengths(cfg, tok);
            let (prompt, response, _) =
                truncate(p.prompt, p.response, vec![], max_length, max_prompt_length);
            Ok(TokenizedPair { prompt, response })
        })
        .collect()
}

/// Fine-tunes the model at `model_path` on `examples`; writes `out/checkpoint` (Hugging Face
/// layout, the input's dtype; a PEFT adapter folder with LoRA) and `out/metrics.jsonl`.
pub fn run_sft(
    model_path: &Path,
    examples: &[SftExample],
    out: &Path,
    cfg: &TrainConfig,
    device: &Device,
    mut report: impl FnMut(&SftMetrics, usize),
) -> Result<PathBuf> {
    let _lock = crate::manifest::lock_dir(out)?;
    let train_device = cfg.train_device(device);
    let bundle =
        ModelBundle::load_for_training(model_path, &train_device, &cfg.lora, cfg.data_seed)?;
    let base_name = bundle.adapter_base_name(model_path);
    let tok = &bundle.tokenizer;
    let pad = tok.pad_id();
    let seqs = tokenize_sft(tok, examples, cfg)?;
    let (dtype, source) = (bundle.stored_dtype, bundle.dir.clone());
    let mut t = SftTrainer::new(bundle.model, cfg.clone(), seqs, pad)?;
    let metrics_path = out.join(METRICS_FILE);
    fsutil::write_atomic(&metrics_path, b"")?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    while !t.is_done() {
        let m = t.train_step()?;
        if m.step % cfg.logging_steps.max(1) == 0 || t.is_done() {
            let row = json!({"step": m.step, "epoch": m.epoch, "loss": m.loss, "lr": m.lr,
                "grad_norm": m.grad_norm, "tokens/s": m.tokens_per_s});
            writeln!(file, "{row}")
                .and_then(|_| file.flush())
                .map_err(|e| Error::io(&metrics_path, e))?;
        }
        report(&m, t.state.plan.total_steps);
    }
    let ckpt = out.join(CHECKPOINT);
    if cfg.lora.enabled() {
        crate::hf::adapter::save(&t.state.model, &cfg.lora, &base_name, &ckpt, &[])?;
    } else {
        checkpoint::save(&t.state.model, &source, &ckpt, dtype, &[])?;
    }
    Ok(ckpt)
}

//! Subcommands of the `wgspin` binary that run the SPIN stages, one file per command; flags shared
//! between commands (generation, training) live here so `spin` takes exactly the same ones.

pub mod bench;
pub mod config;
pub mod demo;
pub mod generate;
pub mod sft;
pub mod spin;
pub mod train;

use std::io::IsTerminal;

use clap::Args;

use wgspin::config::ModelConfig;
use wgspin::device::{self, ComputeDevice, DeviceSpec};
use wgspin::generate::GenOptions;
use wgspin::kernels::sample::SamplingParams;
use wgspin::progress::Progress;
use wgspin::train::TrainConfig;
use wgspin::train::job::TrainEvent;
use wgspin::train::loss::LossKind;
use wgspin::train::optim::{OptimizerKind, Schedule};

/// The device `spec` names, announced on stderr (every command says where it runs, and why
/// when `auto` passed an adapter over), with where cubecl's autotune cache for it lives.
pub fn select_device(spec: DeviceSpec) -> anyhow::Result<ComputeDevice> {
    let dev = device::select(spec)?;
    match &dev.note {
        Some(why) => eprintln!("device: {} ({why})", dev.description),
        None => eprintln!("device: {}", dev.description),
    }
    if let Some(c) = &dev.cache {
        let state = if c.reused {
            "reused: autotune results of earlier runs"
        } else {
            "new: this run autotunes and fills it"
        };
        eprintln!("kernel cache: {} ({state})", c.path.display());
    }
    Ok(dev)
}

/// `--batch-size` of generation: the given value, or the device's default (printed).
pub fn decode_batch(
    given: Option<usize>,
    dev: &ComputeDevice,
    cfg: &ModelConfig,
    max_new_tokens: usize,
) -> anyhow::Result<usize> {
    match given {
        Some(0) => anyhow::bail!("--batch-size must be at least 1"),
        Some(n) => Ok(n),
        None => {
            let n = wgspin::generate::batch::default_batch_size(dev, cfg, max_new_tokens);
            eprintln!("decode batch: {n} rows (pass --batch-size to change it)");
            Ok(n)
        }
    }
}

/// Sampling flags of the opponent's generation.
#[derive(Args, Debug, Clone)]
pub struct GenFlags {
    /// Token limit per generated response.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling mass; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Keep tokens with probability ≥ min-p × the top probability; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Random seed; the same seed gives the same responses whatever the batch size.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl GenFlags {
    pub fn options(&self, batch_size: usize, stop_ids: Vec<u32>, pad_id: u32) -> GenOptions {
        GenOptions {
            batch_size,
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                seed: self.seed,
            },
            stop_ids,
            pad_id,
        }
    }
}

/// Training flags (`wgspin train` and `wgspin spin`); defaults are [`TrainConfig::default`].
#[derive(Args, Debug, Clone)]
pub struct TrainFlags {
    /// Pairwise loss: sigmoid (SPIN's logistic loss), hinge or ipo.
    #[arg(long, default_value_t = TrainConfig::default().loss)]
    pub loss: LossKind,
    /// β: scale of the log-prob margin inside the loss.
    #[arg(long, default_value_t = TrainConfig::default().beta)]
    pub beta: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f64,
    /// rmsprop (as the SPIN recipes) or adamw.
    #[arg(long, default_value_t = TrainConfig::default().optimizer)]
    pub optimizer: OptimizerKind,
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Passes over the pairs.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Pairs per forward pass (their real and generated responses go through together).
    #[arg(long = "batch-size", default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    #[arg(long, default_value_t = TrainConfig::default().grad_accum)]
    pub grad_accum: usize,
    /// Longest prompt + response in tokens; longer pairs are truncated as SPIN does.
    #[arg(long, default_value_t = TrainConfig::default().max_length)]
    pub max_length: usize,
    /// Longest prompt kept (its end) when a pair is too long.
    #[arg(long, default_value_t = TrainConfig::default().max_prompt_length)]
    pub max_prompt_length: usize,
    /// Fraction of the steps with linear learning-rate warmup.
    #[arg(long, default_value_t = TrainConfig::default().warmup_ratio)]
    pub warmup_ratio: f64,
    /// Learning-rate schedule after warmup: linear, cosine or constant.
    #[arg(long, default_value_t = TrainConfig::default().schedule)]
    pub schedule: Schedule,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = TrainConfig::default().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Save a resumable checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = TrainConfig::default().save_every)]
    pub save_every: usize,
    /// Write a metrics row every N steps.
    #[arg(long, default_value_t = TrainConfig::default().logging_steps)]
    pub logging_steps: usize,
}

impl TrainFlags {
    /// The settings, with `seed` for the data order.
    pub fn config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            loss: self.loss,
            beta: self.beta,
            lr: self.lr,
            optimizer: self.optimizer,
            weight_decay: self.weight_decay,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            warmup_ratio: self.warmup_ratio,
            schedule: self.schedule,
            max_grad_norm: self.max_grad_norm,
            save_every: self.save_every,
            logging_steps: self.logging_steps,
            ..TrainConfig::default()
        }
    }
}

/// Prints training events: a bar for reference scoring and steps, a line per logged step.
pub struct TrainReporter {
    bar: Option<Progress>,
    logging_steps: usize,
}

impl TrainReporter {
    pub fn new(logging_steps: usize) -> Self {
        Self {
            bar: None,
            logging_steps: logging_steps.max(1),
        }
    }

    pub fn event(&mut self, e: TrainEvent) {
        match e {
            TrainEvent::Reference { done, total } => {
                let bar = self
                    .bar
                    .get_or_insert_with(|| Progress::new("reference log-probs", total));
                bar.update(done, "sequences");
                if done == total {
                    bar.finish();
                    self.bar = None;
                }
            }
            TrainEvent::ReferenceCached => eprintln!("reference log-probs: cached"),
            TrainEvent::Resumed { step } => eprintln!("resuming at step {step}"),
            TrainEvent::Step {
                metrics: m,
                total_steps,
            } => {
                if !std::io::stderr().is_terminal() {
                    if m.step % self.logging_steps == 0 || m.step == total_steps {
                        eprintln!(
                            "step {}/{total_steps} loss {:.4} rewards/margins {:.4} rewards/accuracies {:.2} lr {:.3e} grad_norm {:.3} {:.0} tok/s",
                            m.step,
                            m.stats.loss,
                            m.stats.margins,
                            m.stats.accuracies,
                            m.lr,
                            m.grad_norm,
                            m.tokens_per_s
                        );
                    }
                    return;
                }
                let bar = self
                    .bar
                    .get_or_insert_with(|| Progress::new("train", total_steps));
                bar.update(
                    m.step,
                    &format!(
                        "steps, loss {:.4}, acc {:.2}, {:.0} tok/s",
                        m.stats.loss, m.stats.accuracies, m.tokens_per_s
                    ),
                );
                if m.step == total_steps {
                    bar.finish();
                    self.bar = None;
                }
            }
            TrainEvent::Saved { step, path } => {
                if let Some(b) = self.bar.as_mut() {
                    b.finish();
                }
                eprintln!("saved step {step} to {}", path.display());
            }
        }
    }
}

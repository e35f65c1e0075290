//! The peak memory of a training step, estimated from the model's config and the settings before
//! anything is loaded (`wgspin plan`, `--max-memory`), so settings that cannot fit are refused
//! with the lever that would make them fit.
//!
//! Peak = parameters as stored + optimizer state + gradients + f16 weight copies (full fine-tuning
//! in f16 casts every weight once per step and keeps the copy for the backward pass) + the
//! activations kept for the backward pass + the lm_head chunk, or the f32 weights as loaded when
//! that is more (a LoRA base is stored in f16 only after loading). Activations per token and layer
//! follow what the forward keeps (see [`layer_bytes_per_token`]); with per-layer checkpointing,
//! every layer's input plus one layer's activations. Checked against the measured peaks of the
//! memory table in docs/training-that-fits.md.

use std::path::Path;

use burn::tensor::{DType, Device};
use serde::Serialize;

use super::TrainConfig;
use super::optim::OptimizerKind;
use crate::error::{Error, Result};
use crate::hf::config::ModelConfig;
use crate::model::lora::Target;

/// A training step's estimated peak, by part, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub optimizer: u64,
    pub gradients: u64,
    pub weight_copies: u64,
    pub activations: u64,
    pub logits: u64,
    /// The weights as loaded, in f32, before a frozen base is stored in f16: the peak at start-up.
    pub loading: u64,
}

impl MemoryEstimate {
    /// The step's peak, or loading's when that is higher.
    pub fn total(&self) -> u64 {
        let step = [
            self.optimizer,
            self.gradients,
            self.weight_copies,
            self.activations,
            self.logits,
        ]
        .into_iter()
        .fold(self.weights, u64::saturating_add);
        step.max(self.loading)
    }

    /// The largest part and the setting that shrinks it, for a refusal.
    pub fn lever(&self, cfg: &TrainConfig, compute: DType) -> String {
        let mut levers = vec![];
        if self.activations >= self.weights.max(self.optimizer) {
            if !cfg.gradient_checkpointing {
                levers.push("--gradient-checkpointing".to_string());
            }
            if cfg.batch_size > 1 {
                levers.push(format!(
                    "--batch-size {} --grad-accum {} (the same effective batch)",
                    cfg.batch_size / 2,
                    cfg.grad_accum * 2
                ));
            }
            levers.push("a smaller --max-length".into());
        }
        if 4 * (self.optimizer + self.gradients) >= self.total() {
            levers.push(if cfg.lora.enabled() {
                // With LoRA, gradients and optimizer state are the adapters' alone.
                format!("a smaller --lora-rank than {}", cfg.lora.rank)
            } else {
                "--lora-rank 16 (no gradients or optimizer state for the base)".into()
            });
        }
        if compute == DType::F32 {
            levers.push("--dtype f16 on a GPU that has it".into());
        }
        levers.join(", or ")
    }
}

/// Parameters of `m`: (all, one layer's, embedding + head).
pub fn parameter_count(m: &ModelConfig) -> (u64, u64) {
    let h = m.hidden_size as u64;
    // Every tensor a layer holds, from the one name table (norms, biases and q/k norms included).
    let layer: u64 = crate::hf::names::layer_tensors(m)
        .into_iter()
        .map(|t| {
            crate::hf::names::layer_shape(m, t)
                .iter()
                .product::<usize>() as u64
        })
        .sum();
    let embed = m.vocab_size as u64 * h;
    let head = if m.tie_word_embeddings { 0 } else { embed };
    let total = embed + head + h + m.num_layers as u64 * layer;
    (total, layer)
}

/// `(in, out)` features of the projection `t` wraps in `m`.
fn projection_dims(m: &ModelConfig, t: Target) -> (usize, usize) {
    let (h, i) = (m.hidden_size, m.intermediate_size);
    let (q, kv) = (m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim);
    match t {
        Target::Q => (h, q),
        Target::K | Target::V => (h, kv),
        Target::O => (q, h),
        Target::Gate | Target::Up => (h, i),
        Target::Down => (i, h),
    }
}

/// LoRA parameters of `m` under `cfg`'s rank and targets.
pub fn adapter_count(m: &ModelConfig, cfg: &TrainConfig) -> u64 {
    if !cfg.lora.enabled() {
        return 0;
    }
    let per_layer: usize = cfg
        .lora
        .targets
        .iter()
        .map(|&t| {
            let (inp, out) = projection_dims(m, t);
            cfg.lora.rank.saturating_mul(inp + out)
        })
        .sum();
    per_layer.saturating_mul(m.num_layers) as u64
}

/// Refuses settings that `m`'s shapes make meaningless before anything is allocated: a LoRA rank
/// above the smaller side of a projection it adapts (`B·A` cannot have a higher rank than that,
/// and the adapter would be larger than the weight it adapts).
pub fn check_shapes(m: &ModelConfig, cfg: &TrainConfig) -> Result<()> {
    if !cfg.lora.enabled() {
        return Ok(());
    }
    let Some((t, side)) = cfg
        .lora
        .targets
        .iter()
        .map(|&t| {
            let (inp, out) = projection_dims(m, t);
            (t, inp.min(out))
        })
        .min_by_key(|&(_, side)| side)
    else {
        return Ok(());
    };
    if cfg.lora.rank > side {
        return Err(Error::Invalid(format!(
            "--lora-rank {}: {} of this model is a [{}, {}] projection, so a LoRA rank above {side} \
             adds nothing; pass --lora-rank {side} or less (8 to 64 is usual)",
            cfg.lora.rank,
            t.module_name(),
            projection_dims(m, t).1,
            projection_dims(m, t).0,
        )));
    }
    Ok(())
}

/// Bytes one layer keeps for its backward pass per token, activations in `e`-byte floats: each
/// RMSNorm's input (the fused norm keeps it and one f32 per row); the shared input of q/k/v and
/// of gate/up; the per-head q/k norms' inputs; the rotated q and k and the v that the attention
/// op keeps (RoPE keeps only the angles, shared by the layers), its output, the copy of it in
/// token-major layout that the o projection keeps, and one f32 log-sum-exp per head; the MLP's
/// gate and up (what the SwiGLU op keeps) and their product. Nothing grows with the sequence:
/// the attention op recomputes its probabilities in the backward pass.
pub fn layer_bytes_per_token(m: &ModelConfig, e: u64) -> u64 {
    let (h, i) = (m.hidden_size as u64, m.intermediate_size as u64);
    let (q, kv) = (
        (m.num_heads * m.head_dim) as u64,
        (m.num_kv_heads * m.head_dim) as u64,
    );
    // Two norms a layer (four with sandwich norms), plus the per-head q/k norms.
    let norm_count = if m.sandwich_norms { 4 } else { 2 };
    let head_norms = if m.qk_norm { q + kv } else { 0 };
    let norms = e * (norm_count * h + head_norms) + 4 * norm_count;
    let inputs = 2 * e * h;
    let attention = e * (q + 2 * kv) + 2 * e * q + 4 * m.num_heads as u64;
    let mlp = 3 * e * i;
    norms + inputs + attention + mlp
}

/// Bytes per token that one layer's backward pass holds beyond what its forward kept: the
/// attention op's backward on the CPU backend works on dense f32 copies of q, k, v, its output
/// and the output's gradient, and returns dq, dk and dv in f32 and then in the activations'
/// dtype; the MLP's gradients of gate, up and their product.
fn layer_backward_per_token(m: &ModelConfig, e: u64) -> u64 {
    let i = m.intermediate_size as u64;
    let (q, kv) = (
        (m.num_heads * m.head_dim) as u64,
        (m.num_kv_heads * m.head_dim) as u64,
    );
    4 * (3 * q + 2 * kv) + (4 + e) * (q + 2 * kv) + 3 * e * i
}

/// The estimated peak of one optimizer step: `rows` sequences of `seq` tokens per forward pass
/// (a SPIN pair is two rows), `max_logits` lm_head logits at once, activations in `compute`.
pub fn estimate(
    m: &ModelConfig,
    cfg: &TrainConfig,
    compute: DType,
    rows: usize,
    seq: usize,
    max_logits: usize,
) -> MemoryEstimate {
    let e: u64 = if compute == DType::F16 { 2 } else { 4 };
    let (params, _) = parameter_count(m);
    let adapters = adapter_count(m, cfg);
    let lora = cfg.lora.enabled();
    let trainable = if lora { adapters } else { params };
    // A LoRA base is stored in the compute dtype; trained weights are f32 masters.
    let weights = if lora {
        (params * e).saturating_add(adapters.saturating_mul(4))
    } else {
        params * 4
    };
    let states = match cfg.optimizer {
        OptimizerKind::Rmsprop => 1,
        OptimizerKind::Adamw => 2,
    };
    // Two copies of the gradients at once: the per-parameter ones as the backward pass leaves
    // them and the optimizer's flat groups they are packed into (accumulating micro-batches
    // holds the running sum beside the newest instead).
    let grad_copies = 2;
    let weight_copies = if !lora && e == 2 { params * 2 } else { 0 };
    // Settings as large as a user can type (`--batch-size 10^17`) saturate instead of wrapping,
    // so the estimate stays an upper bound that `--max-memory` refuses.
    let mul = |a: u64, b: u64| a.saturating_mul(b);
    let tokens = mul(rows as u64, seq as u64);
    let layer = mul(layer_bytes_per_token(m, e), tokens);
    let layers = m.num_layers as u64;
    let hidden = m.hidden_size as u64 * e;
    // One layer's backward pass at a time also holds its temporaries.
    let backward = mul(layer_backward_per_token(m, e), tokens);
    let activations = backward.saturating_add(if cfg.gradient_checkpointing {
        // Every layer's input, one layer's activations and the gradient between layers.
        mul(mul(layers + 2, tokens), hidden).saturating_add(layer)
    } else {
        mul(layers, layer)
    });
    // The chunk's logits, their gradient and the softmax's exponentials, f32.
    let logits = 3 * 4 * (max_logits as u64).min(mul(tokens, m.vocab_size as u64));
    MemoryEstimate {
        weights,
        optimizer: trainable.saturating_mul(states * 4),
        gradients: trainable.saturating_mul(grad_copies * 4),
        weight_copies,
        activations,
        logits,
        loading: params * 4,
    }
}

/// The estimate for training `m` with `cfg` on `device`, at the longest row the settings allow
/// (`--max-length`, within the model's context).
pub fn plan(
    m: &ModelConfig,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<(MemoryEstimate, DType)> {
    let compute = cfg.dtype.resolve(device)?;
    let seq = cfg.max_length.min(m.max_position_embeddings);
    let chunk = match cfg.max_logits {
        0 => crate::device::logits_budget(device),
        n => n,
    };
    Ok((
        estimate(m, cfg, compute, rows_per_pass(cfg), seq, chunk),
        compute,
    ))
}

/// Refuses `cfg` when the model's shapes make it meaningless ([`check_shapes`]) or its estimated
/// peak exceeds `--max-memory`, naming the lever to pull.
pub fn check_budget(
    model: &crate::load::ModelSource,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<()> {
    let m = crate::load::bundle::read_source_config(model)?;
    check_shapes(&m, cfg)?;
    if cfg.max_memory.is_none() {
        return Ok(());
    }
    let (est, compute) = plan(&m, cfg, device)?;
    refuse_over_budget(model.path(), cfg, &est, compute)
}

/// The refusal of [`check_budget`] for an estimate already made.
pub fn refuse_over_budget(
    model_path: &Path,
    cfg: &TrainConfig,
    est: &MemoryEstimate,
    compute: DType,
) -> Result<()> {
    let Some(limit) = cfg.max_memory else {
        return Ok(());
    };
    if est.total() <= limit {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--max-memory {}: a training step of {} at --batch-size {} × --max-length {} is \
         estimated to peak at {} (activations {}, weights {}, optimizer state {}, gradients {}); \
         try {} (`wgspin plan` prints the estimate)",
        human(limit),
        model_path.display(),
        cfg.batch_size,
        cfg.max_length,
        human(est.total()),
        human(est.activations),
        human(est.weights + est.weight_copies),
        human(est.optimizer),
        human(est.gradients),
        est.lever(cfg, compute)
    )))
}

/// Rows per forward pass: a SPIN pair puts its real and generated response through together.
pub fn rows_per_pass(cfg: &TrainConfig) -> usize {
    cfg.objective.rows_per_example() * cfg.batch_size
}

/// Parses a memory size: `8GB`, `8GiB`, `512MB`, `1.5G` (binary units: 1G = 2³⁰ bytes, as
/// device memory is counted), or plain bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; use e.g. 8GB or 512MB"
            ));
        }
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use e.g. 8GB or 512MB"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?}: the size must be positive"));
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// `bytes` in MiB or GiB for messages.
pub fn human(bytes: u64) -> String {
    let mib = bytes as f64 / 1048576.0;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8GB"), Ok(8 << 30));
        assert_eq!(parse_size("8 GiB"), Ok(8 << 30));
        assert_eq!(parse_size("512mb"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(
            parse_size("8 bananas")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("-1GB").is_err());
    }
}

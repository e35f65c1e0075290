//! `wgspin plan`: the estimated peak memory of a training step, before anything runs.

use anyhow::Result;
use clap::Args;

use wgspin::train::memory::{
    adapter_count, check_shapes, human, parameter_count, plan, refuse_over_budget, rows_per_pass,
};
use wgspin::train::{ObjectiveKind, TrainConfig};

use super::args::{DeviceArgs, ModelArgs};

/// Estimate the peak memory of a training step (`train`, `sft`, `spin`) with these settings.
///
/// Reads only the model's config: weights, optimizer state, gradients, f16 weight copies,
/// activations at --max-length and the lm_head chunk, by part. With --max-memory, exits with an
/// error naming the setting to change when the estimate does not fit.
#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Plan SFT (one row per example) instead of SPIN training (two rows per pair).
    #[arg(long)]
    sft: bool,
    #[command(flatten)]
    train: TrainConfig,
}

impl PlanArgs {
    pub fn run(self) -> Result<()> {
        let dev = self.device.select()?;
        let cfg = TrainConfig {
            objective: if self.sft {
                ObjectiveKind::Sft
            } else {
                ObjectiveKind::Spin
            },
            ..self.train
        };
        cfg.validate()?;
        let m = wgspin::load::bundle::read_config(&self.model.model)?;
        check_shapes(&m, &cfg)?;
        let (est, compute) = plan(&m, &cfg, &dev.device)?;
        let (params, _) = parameter_count(&m);
        let what = if cfg.lora.enabled() {
            format!(
                "LoRA r={} ({:.2}M adapter parameters)",
                cfg.lora.rank,
                adapter_count(&m, &cfg) as f64 / 1e6
            )
        } else {
            "full fine-tuning".into()
        };
        println!(
            "{}: {:.1}M parameters, {what}, {:?} activations{}",
            self.model.model.display(),
            params as f64 / 1e6,
            compute,
            if cfg.gradient_checkpointing {
                ", per-layer checkpointing"
            } else {
                ""
            }
        );
        println!(
            "step: {} rows × {} tokens per forward pass, {} optimizer",
            rows_per_pass(&cfg),
            cfg.max_length.min(m.max_position_embeddings),
            cfg.optimizer
        );
        for (part, bytes) in [
            ("weights", est.weights),
            ("optimizer state", est.optimizer),
            ("gradients", est.gradients),
            ("f16 weight copies", est.weight_copies),
            ("activations", est.activations),
            ("lm_head chunk", est.logits),
        ] {
            println!("  {part:<18} {:>10}", human(bytes));
        }
        println!("  {:<18} {:>10}", "estimated peak", human(est.total()));
        refuse_over_budget(&self.model.model, &cfg, &est, compute)?;
        Ok(())
    }
}

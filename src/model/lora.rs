//! LoRA (Hu et al. 2021) as PEFT computes it: a frozen projection `W [out, in]` plus a trained
//! low-rank update, `y = x Wᵀ + (α / r) · dropout(x) Aᵀ Bᵀ` with `A [r, in]`, `B [out, r]`.
//!
//! Training keeps the base weights frozen (no gradient, no optimizer state) and only `A`, `B` in
//! f32; everything that only runs the model (generation, scoring, export) folds the update into
//! the weights first ([`merge`]), so the decode kernels never see an adapter. The PEFT file layout
//! lives in [`crate::load::adapter`]; this file owns the settings and the math.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::Transformer;
pub use super::layers::Lora;
use super::named::leaf_like;
pub use super::targets::{Target, has_adapters, targets_mut};
use crate::error::{Error, Result};
use crate::kernels::like;

/// `q_proj,v_proj`: targets as the flag and PEFT name them.
pub fn target_list(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.module_name())
        .collect::<Vec<_>>()
        .join(",")
}

/// The LoRA settings (flags of `train`, `sft` and `spin`; recorded in `train_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// LoRA rank: train low-rank adapters on frozen base weights and save a PEFT adapter (0 = full fine-tuning of every weight).
    #[arg(long = "lora-rank", default_value_t = 0)]
    pub rank: usize,
    /// LoRA alpha: the adapter's output is scaled by alpha / rank [default: 2 × rank].
    #[arg(long = "lora-alpha")]
    pub alpha: Option<f64>,
    /// Dropout on the adapters' input while training (PEFT's lora_dropout).
    #[arg(long = "lora-dropout", default_value_t = 0.0)]
    pub dropout: f64,
    /// Projections that get an adapter, comma-separated.
    #[arg(
        long = "lora-targets",
        value_delimiter = ',',
        default_value = "q,k,v,o,gate,up,down"
    )]
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 0,
            alpha: None,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn enabled(&self) -> bool {
        self.rank > 0
    }

    /// `lora_alpha`, resolved: 2 × rank unless given.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * self.rank as f64)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if let Some(a) = self.alpha
            && !(a > 0.0 && a.is_finite())
        {
            return bad(format!("--lora-alpha {a}: must be > 0"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "--lora-dropout {}: must be in [0, 1)",
                self.dropout
            ));
        }
        if self.enabled() && self.targets.is_empty() {
            return bad("--lora-targets is empty; name at least one projection".into());
        }
        Ok(())
    }
}

/// A trainable `[rows, cols]` matrix beside `like` (its device and autodiff context).
pub fn upload(data: Vec<f32>, shape: [usize; 2], like: &Tensor<2>) -> Param<Tensor<2>> {
    let t = Tensor::<2>::from_data(TensorData::new(data, shape), &like.device());
    Param::from_tensor(leaf_like(t, like))
}

/// New adapters on `cfg.targets`, initialised as PEFT does by default: `A` uniform in
/// ±1/√in (kaiming-uniform with a = √5), `B` zero, so the model starts as the base. `A` is drawn
/// from `seed` on the host, so the start is the same on every backend.
pub fn attach(m: &mut Transformer, cfg: &LoraConfig, seed: u64) {
    let mut rng = crate::rng::SplitMix64(seed ^ 0x4C6F_5241_0000_0001);
    let scale = cfg.alpha() / cfg.rank as f64;
    for (_, target, lin) in targets_mut(m) {
        if !cfg.targets.contains(&target) {
            continue;
        }
        let like = lin.weight.val();
        let [out, inp] = like.dims();
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..cfg.rank * inp)
            .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
            .collect();
        lin.lora = Some(Lora {
            a: upload(a, [cfg.rank, inp], &like),
            b: upload(vec![0.0; out * cfg.rank], [out, cfg.rank], &like),
            scale,
            dropout: cfg.dropout,
        });
    }
}

/// Sets the training-time dropout of every adapter (loaded adapters start without it).
pub fn set_dropout(m: &mut Transformer, p: f64) {
    for (_, _, lin) in targets_mut(m) {
        if let Some(l) = lin.lora.as_mut() {
            l.dropout = p;
        }
    }
}

/// Marks every base weight as frozen: autodiff keeps no gradient for it, so the backward pass
/// computes and stores only the adapters' (and the activations' on the way).
pub fn freeze_base(m: &mut Transformer) {
    for (_, mut p) in super::named::params_mut(m) {
        p.freeze();
    }
}

/// Folds every adapter into its weight (`W += scale · B A`) and removes it: the model then runs
/// on the kernels that know nothing of adapters.
pub fn merge(m: &mut Transformer) {
    for (_, _, lin) in targets_mut(m) {
        if let Some(l) = lin.lora.take() {
            let old = lin.weight.val();
            let w = old.clone().inner() + like(l.delta(), old.dtype());
            lin.weight = Param::from_tensor(leaf_like(w, &old));
        }
    }
}

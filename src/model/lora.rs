//! LoRA (Hu et al. 2021) as PEFT computes it: a frozen projection `W [out, in]` plus a trained
//! low-rank update, `y = x Wᵀ + (α / r) · dropout(x) Aᵀ Bᵀ` with `A [r, in]`, `B [out, r]`.
//!
//! Training keeps the base weights frozen (no gradient, no optimizer state) and only `A`, `B` in
//! f32; everything that only runs the model (generation, scoring, export) folds the update into
//! the weights first ([`merge`]), so the decode kernels never see an adapter. The PEFT file layout
//! lives in [`crate::hf::adapter`]; this file owns the settings and the math.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::Transformer;
use super::layers::Linear;
use super::named::leaf_like;
use super::precision::like;
use crate::error::{Error, Result};
use crate::hf::names::{self as hf_names, LayerTensor};

/// A projection an adapter can wrap, by its Hugging Face module name (PEFT's `target_modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The Hugging Face module name (`q_proj`, …, `down_proj`).
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The weight tensor this target's adapter sits on.
    pub fn weight(self) -> LayerTensor {
        match self {
            Target::Q => LayerTensor::Q,
            Target::K => LayerTensor::K,
            Target::V => LayerTensor::V,
            Target::O => LayerTensor::O,
            Target::Gate => LayerTensor::Gate,
            Target::Up => LayerTensor::Up,
            Target::Down => LayerTensor::Down,
        }
    }

    /// `model.layers.L.self_attn.q_proj` and the like: the module path PEFT keys extend.
    pub fn module_path(self, layer: usize) -> String {
        let w = hf_names::layer(layer, self.weight());
        w.strip_suffix(".weight").unwrap_or(&w).to_string()
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let key = s.trim().strip_suffix("_proj").unwrap_or(s.trim());
        Target::ALL
            .into_iter()
            .find(|t| t.module_name().strip_suffix("_proj") == Some(key))
            .ok_or_else(|| {
                format!(
                    "unknown LoRA target {s:?}; choose from q,k,v,o,gate,up,down (or q_proj, …)"
                )
            })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name())
    }
}

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

/// One adapter: `A [r, in]`, `B [out, r]` and the scale α / r.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[rank, in]`
    pub a: Param<Tensor<2>>,
    /// `[out, rank]`
    pub b: Param<Tensor<2>>,
    pub scale: f64,
    /// Dropout probability on the input; applied only on an autodiff device (training).
    pub dropout: f64,
}

impl Lora {
    /// The update for `x [rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x = if self.dropout > 0.0 && x.is_autodiff() {
            let keep = 1.0 - self.dropout;
            let mask = Tensor::<2>::random(x.dims(), Distribution::Bernoulli(keep), &x.device());
            x * like(mask.div_scalar(keep), dtype)
        } else {
            x
        };
        // The f32 adapters cast to the activations' dtype, as PEFT under autocast.
        x.matmul(like(self.a.val(), dtype).transpose())
            .matmul(like(self.b.val(), dtype).transpose())
            .mul_scalar(self.scale)
    }

    /// `scale · B A` `[out, in]`: the update folded into the weight.
    pub fn delta(&self) -> Tensor<2> {
        self.b
            .val()
            .inner()
            .matmul(self.a.val().inner())
            .mul_scalar(self.scale)
    }
}

/// The wrapped projections of a model, with their target kind and layer.
pub fn targets_mut(m: &mut Transformer) -> Vec<(usize, Target, &mut Linear)> {
    let mut out = vec![];
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let (a, f) = (&mut layer.attn, &mut layer.mlp);
        out.push((l, Target::Q, &mut a.q));
        out.push((l, Target::K, &mut a.k));
        out.push((l, Target::V, &mut a.v));
        out.push((l, Target::O, &mut a.o));
        out.push((l, Target::Gate, &mut f.gate));
        out.push((l, Target::Up, &mut f.up));
        out.push((l, Target::Down, &mut f.down));
    }
    out
}

/// Whether any projection of `m` carries an adapter.
pub fn has_adapters(m: &Transformer) -> bool {
    m.layers.iter().any(|l| {
        let (a, f) = (&l.attn, &l.mlp);
        [&a.q, &a.k, &a.v, &a.o, &f.gate, &f.up, &f.down]
            .iter()
            .any(|lin| lin.lora.is_some())
    })
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

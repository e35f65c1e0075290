//! The SPIN reference fixture (`tests/fixtures/spin_reference.json`, written by
//! `make_spin_reference.py` with PyTorch) and a trainer on its three pairs.

use serde_json::Value;
use wgspin::ModelBundle;
use wgspin::data::SftExample;
use wgspin::device::cpu_device;
use wgspin::train::loss::PairLoss;
use wgspin::train::optim::{OptimizerKind, Schedule};
use wgspin::train::{Objective, PairLogps, TrainConfig, Trainer, tokenize_pairs};

use super::fixture;

/// The largest relative difference between two sets of pair log-probs, real and generated;
/// NaN when any pair's is (so a bound on it fails).
pub fn max_rel_logps(a: &PairLogps, b: &PairLogps) -> f64 {
    assert_eq!(a.real.len(), b.real.len(), "pair counts");
    a.real
        .iter()
        .chain(&a.generated)
        .zip(b.real.iter().chain(&b.generated))
        .map(|(x, y)| super::rel(*x, *y))
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

pub fn spin_reference() -> Value {
    let text = std::fs::read_to_string(fixture("spin_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn config(optimizer: OptimizerKind, weight_decay: f64) -> TrainConfig {
    TrainConfig {
        loss: PairLoss {
            beta: 1.0,
            ..Default::default()
        },
        lr: 1e-3,
        optimizer,
        weight_decay,
        epochs: 1,
        batch_size: 3,
        warmup_ratio: 0.0,
        schedule: Schedule::Constant,
        max_grad_norm: 0.0,
        ..Default::default()
    }
}

/// A trainer of fixture model `name` on the fixture's pairs and PyTorch's reference log-probs
/// (the policy's own plus make_spin_reference.py's offsets), on the CPU backend.
pub fn trainer(name: &str, r: &Value, cfg: TrainConfig) -> Trainer {
    let dev = cpu_device();
    let bundle = ModelBundle::load(&fixture(name), &cfg.train_device(&dev.device)).unwrap();
    let pairs_ref = r["pairs"].as_array().unwrap();
    let examples: Vec<SftExample> = pairs_ref
        .iter()
        .enumerate()
        .map(|(i, p)| SftExample {
            id: format!("{i}"),
            history: vec![],
            prompt: p["prompt"].as_str().unwrap().into(),
            response: p["real"].as_str().unwrap().into(),
            generated: Some(p["generated"].as_str().unwrap().into()),
        })
        .collect();
    let pairs = tokenize_pairs(&bundle.tokenizer, &examples, &cfg).unwrap();
    for (p, want) in pairs.iter().zip(pairs_ref) {
        assert_eq!(p.prompt, ids(&want["prompt_ids"]), "{name} prompt ids");
        assert_eq!(p.real, ids(&want["real_ids"]), "{name} real ids");
        assert_eq!(
            p.generated,
            ids(&want["generated_ids"]),
            "{name} generated ids"
        );
    }
    let reference = PairLogps {
        real: pairs_ref
            .iter()
            .map(|p| p["ref_real"].as_f64().unwrap())
            .collect(),
        generated: pairs_ref
            .iter()
            .map(|p| p["ref_generated"].as_f64().unwrap())
            .collect(),
    };
    let pad = bundle.tokenizer.eos_token_id;
    Trainer::new(bundle.model, cfg, Objective::Spin { pairs, reference }, pad).unwrap()
}

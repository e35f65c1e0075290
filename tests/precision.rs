//! f16 activations (`--dtype f16`): forward log-probs within 1e-2 relative of f32 on the
//! fixtures (each tiny model on the CPU backend, the GPU model on a wgpu adapter), gradients
//! close to f32's, a LoRA base stored in f16 while the adapters stay f32, and the loss scaler
//! skipping a step whose gradients overflow and recovering.

mod common;

use burn::tensor::DType;
use common::spin_fixture::*;
use common::*;
use wgspin::ModelBundle;
use wgspin::model::lora::{self, LoraConfig};
use wgspin::model::named::{params_mut, trainable_mut};
use wgspin::model::precision::set_compute;
use wgspin::train::optim::OptimizerKind;
use wgspin::train::score::TokenizedPair;
use wgspin::train::state::LossScaler;
use wgspin::train::{Objective, TrainConfig, Trainer, pair_logps};

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// |a − b| / |b| over whole gradient lists.
fn rel_diff(a: &[burn::tensor::Tensor<1>], b: &[burn::tensor::Tensor<1>]) -> f64 {
    let (mut d, mut n) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (floats(x.clone()), floats(y.clone()));
        let diff: Vec<f32> = x.iter().zip(&y).map(|(p, q)| p - q).collect();
        d += norm(&diff).powi(2);
        n += norm(&y).powi(2);
    }
    (d / n).sqrt()
}

#[test]
fn f16_log_probs_are_within_1e_2_of_f32() {
    let all = spin_reference();
    for dev in devices() {
        for name in ["tiny-llama-bf16", "tiny-qwen2-f32", "tiny-mistral-f16"] {
            if !runs_on(&dev, name) || all.get(name).is_none() {
                continue;
            }
            let mut b = ModelBundle::load(&fixture(name), &dev.device).unwrap();
            let pairs = trainer(name, &all[name], config(OptimizerKind::Rmsprop, 0.0)).objective;
            let Objective::Spin { pairs, .. } = pairs else {
                unreachable!("a SPIN trainer")
            };
            let pad = b.tokenizer.pad_id();
            let f32s = pair_logps(&b.model, &pairs, pad, 8, 0, |_| {}).unwrap();
            set_compute(&mut b.model, DType::F16);
            assert_eq!(
                b.model.embed.val().dtype(),
                DType::F16,
                "a scoring model is stored in f16"
            );
            let f16s = pair_logps(&b.model, &pairs, pad, 8, 0, |_| {}).unwrap();
            let worst = max_rel_logps(&f16s, &f32s);
            eprintln!(
                "{} {name}: f16 log-probs within {worst:.1e} of f32",
                dev.description
            );
            assert!(worst < 1e-2, "{} {name}: {worst}", dev.description);
        }
    }
}

/// A trainer of `name` with activations in `dtype` (LoRA rank 4 when `lora`).
fn trainer_in(name: &str, dtype: DType, lora_rank: usize) -> Trainer {
    let all = spin_reference();
    let cfg = TrainConfig {
        lora: LoraConfig {
            rank: lora_rank,
            ..Default::default()
        },
        epochs: 30,
        ..config(OptimizerKind::Adamw, 0.0)
    };
    let mut t = trainer(name, &all[name], cfg.clone());
    if lora_rank > 0 {
        lora::attach(&mut t.state.model, &cfg.lora, 7);
        lora::freeze_base(&mut t.state.model);
        // B starts at zero; a non-zero B gives A a gradient too.
        for (n, mut p) in trainable_mut(&mut t.state.model) {
            if n.contains("lora_B") {
                let v = p.value_flat();
                let k = v.dims()[0];
                let vals: Vec<f32> = (0..k)
                    .map(|i| ((i * 7919) % 13) as f32 * 0.01 - 0.06)
                    .collect();
                p.set_flat(burn::tensor::Tensor::from_data(
                    burn::tensor::TensorData::new(vals, [k]),
                    &v.device(),
                ));
            }
        }
    }
    set_compute(&mut t.state.model, dtype);
    let Trainer { state, objective } = t;
    Trainer::new(state.model, cfg, objective, state.pad_id).unwrap()
}

#[test]
fn f16_gradients_follow_f32_with_f32_masters() {
    for name in ["tiny-llama-bf16", "tiny-qwen2-f32"] {
        for lora_rank in [0, 4] {
            let a = trainer_in(name, DType::F32, lora_rank);
            let mut b = trainer_in(name, DType::F16, lora_rank);
            assert!(a.state.scaler.is_none() && b.state.scaler.is_some());
            // β = 1 on three pairs: at GradScaler's initial 2¹⁶ the lm_head's weight gradient
            // overflows f16 (the next test), so compare where it does not.
            let scale = 1024.0;
            b.state.scaler = Some(LossScaler {
                scale,
                ..Default::default()
            });
            // Trained parameters stay f32; under LoRA the frozen base is stored in f16.
            for (n, p) in trainable_mut(&mut b.state.model) {
                assert_eq!(p.value_flat().dtype(), DType::F32, "{n}");
            }
            let base = params_mut(&mut b.state.model)[1].1.value_flat().dtype();
            let want = if lora_rank > 0 {
                DType::F16
            } else {
                DType::F32
            };
            assert_eq!(base, want, "{name} rank {lora_rank}: base storage");
            let ga = a.gradients(&[vec![0, 1, 2]]).unwrap();
            let gb = b.gradients(&[vec![0, 1, 2]]).unwrap();
            // The f16 gradients are of the loss times the scale.
            let unscaled: Vec<_> = gb
                .grads
                .iter()
                .map(|g| g.clone().div_scalar(scale))
                .collect();
            let d = rel_diff(&unscaled, &ga.grads);
            eprintln!(
                "{name} rank {lora_rank}: f16 gradients within {d:.1e} of f32 (relative norm)"
            );
            assert!(d < 3e-2, "{name} rank {lora_rank}: {d}");
            let m = b.train_step().unwrap();
            assert_eq!(m.loss_scale, Some((scale, false)));
        }
    }
}

#[test]
fn the_loss_scaler_skips_an_overflowing_step_and_recovers() {
    let mut t = trainer_in("tiny-llama-bf16", DType::F16, 0);
    // dlogp = 2²⁴ / 3 per pair overflows f16 (65504) in the log-prob kernel's backward.
    let start = 16_777_216.0;
    t.state.scaler = Some(LossScaler {
        scale: start,
        ..Default::default()
    });
    let values = |t: &Trainer| -> Vec<Vec<f32>> {
        let mut m = t.state.model.clone();
        params_mut(&mut m)
            .into_iter()
            .map(|(_, p)| floats(p.value_flat()))
            .collect()
    };
    let before = values(&t);
    let m = t.train_step().unwrap();
    assert_eq!(m.loss_scale, Some((start / 2.0, true)), "{m:?}");
    assert!(!m.grad_norm.is_finite());
    assert_eq!(values(&t), before, "a skipped step changed the weights");
    assert_eq!(t.state.optimizer.steps, 0);
    assert_eq!(t.state.step, 1, "a skipped step still consumes its data");
    let mut applied = None;
    for _ in 0..20 {
        let m = t.train_step().unwrap();
        eprintln!(
            "step {}: loss scale {:?}, grad norm {}",
            m.step, m.loss_scale, m.grad_norm
        );
        if m.loss_scale.is_some_and(|(_, skipped)| !skipped) {
            applied = Some(m);
            break;
        }
    }
    let m = applied.expect("the scale came down to where the gradients are finite");
    assert!(
        m.grad_norm.is_finite() && m.loss_scale.unwrap().0 < start,
        "{m:?}"
    );
    assert_eq!(t.state.optimizer.steps, 1);
    let after = values(&t);
    assert_ne!(after, before);
    assert!(after.iter().flatten().all(|x| x.is_finite()));
}

/// `TokenizedPair` is what the SFT objective trains on; f16 SFT lowers the loss as f32 does.
#[test]
fn f16_sft_steps_lower_the_loss() {
    let t = trainer_in("tiny-qwen2-f32", DType::F16, 0);
    let Objective::Spin { pairs, .. } = &t.objective else {
        unreachable!("a SPIN trainer")
    };
    let seqs: Vec<TokenizedPair> = pairs.iter().map(|p| p.real_pair()).collect();
    let mut sft = Trainer::new(
        t.state.model.clone(),
        TrainConfig {
            epochs: 4,
            ..t.state.cfg.clone()
        },
        Objective::Sft { seqs },
        t.state.pad_id,
    )
    .unwrap();
    let first = sft.train_step().unwrap().stats.loss();
    let mut last = first;
    while !sft.is_done() {
        last = sft.train_step().unwrap().stats.loss();
    }
    assert!(last < first, "{first} → {last}");
}

//! The optimizer step decided on the device: gradient-norm clipping and the f16 loss scaler's
//! skip behave as the host decided them before (references computed here on the host in f64 from
//! the step's gradients: torch's `clip_grad_norm_` rule `max / (norm + 1e-6)` when the norm is
//! above `max`, RMSprop's square average), and a training step reads the device exactly once,
//! whatever its number of micro-batches.
//!
//! On the CPU backend, with the SPIN fixture of `tests/train.rs`; the probe the device decides on
//! (the squared norm, NaN where a loss is not finite) on every device. Tolerances: the norm 1e-6
//! relative (f32 sum of squares against f64), the square average 1e-5 of its largest element,
//! the weights 1e-5 · max(1, |w|).

mod common;

use common::spin_fixture::*;
use common::*;
use wgspin::hf::weights::WeightFiles;
use wgspin::model::named::params_mut;
use wgspin::train::optim::OptimizerKind;
use wgspin::train::state::LossScaler;
use wgspin::train::{TrainConfig, Trainer};

const MODEL: &str = "tiny-llama-bf16";

fn named_values(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut m = t.state.model.clone();
    params_mut(&mut m)
        .into_iter()
        .map(|(n, p)| (n, floats(p.value_flat())))
        .collect()
}

/// Per parameter, the optimizer's first state tensor as `save` writes it.
fn saved_state(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    t.state.optimizer.save(&path, &t.state.model).unwrap();
    let files = WeightFiles::open_files(&[path]).unwrap();
    named_values(t)
        .into_iter()
        .map(|(n, _)| {
            let name = format!("{n}.state0");
            (n, files.read(&name).unwrap().data)
        })
        .collect()
}

#[test]
fn clipping_scales_the_gradient_as_the_host_rule_did() {
    let all = spin_reference();
    let r = &all[MODEL];
    let base = config(OptimizerKind::Rmsprop, 0.0);
    // The unclipped gradients and their norm, in f64 on the host.
    let grads: Vec<Vec<f32>> = trainer(MODEL, r, base.clone())
        .gradients(&[vec![0, 1, 2]])
        .unwrap()
        .grads
        .into_iter()
        .map(floats)
        .collect();
    let norm = grads
        .iter()
        .flatten()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(norm > 0.0 && norm.is_finite());
    // Clipped hard, barely, and not at all (above the norm; and 0: no clipping).
    for max in [0.01 * norm, 0.9 * norm, 2.0 * norm, 0.0] {
        let clip = if max > 0.0 && norm > max {
            max / (norm + 1e-6)
        } else {
            1.0
        };
        let mut t = trainer(
            MODEL,
            r,
            TrainConfig {
                max_grad_norm: max,
                ..base.clone()
            },
        );
        let before = named_values(&t);
        let m = t.train_step().unwrap();
        assert!(
            rel(m.grad_norm, norm) < 1e-6,
            "max {max}: grad_norm {} vs host {norm}",
            m.grad_norm
        );
        let (lr, a, eps) = (base.lr, 0.99, 1e-8);
        let after = named_values(&t);
        for (i, (name, v)) in saved_state(&t).iter().enumerate() {
            let g: Vec<f64> = grads[i].iter().map(|&x| x as f64 * clip).collect();
            let want_v: Vec<f64> = g.iter().map(|x| (1.0 - a) * x * x).collect();
            let peak = want_v.iter().fold(0f64, |p, x| p.max(x.abs())).max(1e-30);
            for (got, want) in v.iter().zip(&want_v) {
                assert!(
                    (*got as f64 - want).abs() <= 1e-5 * peak,
                    "max {max} {name}: square average {got} vs host {want}"
                );
            }
            // Where |g| is within a few hundred ε the update lr·g/(0.1|g| + ε) turns on the last
            // bits of a gradient that cancels out (summation order): only the square average
            // above speaks for those elements.
            for (j, ((&w, g), v)) in before[i].1.iter().zip(&g).zip(&want_v).enumerate() {
                if g.abs() < 1e3 * eps {
                    continue;
                }
                let want = w as f64 - lr * g / (v.sqrt() + eps);
                let got = after[i].1[j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "max {max} {name} w[{j}]: {got} vs host {want}"
                );
            }
        }
    }
}

#[test]
fn an_overflowing_f16_step_is_skipped_and_the_next_one_is_the_first_update() {
    let all = spin_reference();
    let r = &all[MODEL];
    let cfg = TrainConfig {
        epochs: 2,
        ..config(OptimizerKind::Adamw, 0.01)
    };
    // What one unscaled step gives (AdamW: the bias correction of step 1).
    let mut plain = trainer(MODEL, r, cfg.clone());
    let start = named_values(&plain);
    plain.train_step().unwrap();
    let want = named_values(&plain);

    let mut t = trainer(MODEL, r, cfg);
    // A scale no f32 loss survives: the scaled loss and its gradients overflow.
    t.state.scaler = Some(LossScaler {
        scale: 1e300,
        ..Default::default()
    });
    let m = t.train_step().unwrap();
    assert_eq!(m.loss_scale, Some((5e299, true)), "halved, skipped");
    assert!(!m.grad_norm.is_finite(), "grad_norm {}", m.grad_norm);
    assert!(m.stats.loss().is_finite(), "the loss itself is finite");
    assert_eq!((t.state.step, t.state.optimizer.steps), (1, 0));
    for ((n, a), (_, b)) in start.iter().zip(named_values(&t)) {
        assert_eq!(*a, b, "{n} changed in a skipped step");
    }
    let s = t.state.scaler.unwrap();
    assert_eq!((s.good_steps, s.skipped), (0, 1));

    // A scale that fits: the update is the unscaled step's, as the first AdamW step.
    t.state.scaler = Some(LossScaler { scale: 1024.0, ..s });
    let m = t.train_step().unwrap();
    assert_eq!(m.loss_scale, Some((1024.0, false)));
    assert!(m.grad_norm.is_finite());
    assert_eq!((t.state.step, t.state.optimizer.steps), (2, 1));
    let s = t.state.scaler.unwrap();
    assert_eq!((s.good_steps, s.skipped), (1, 1));
    for ((n, got), (_, w)) in named_values(&t).iter().zip(&want) {
        let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        assert_close(&format!("{n} after the skip"), got, &w, 1e-5);
    }
}

#[test]
fn a_step_reads_the_device_once_whatever_its_micro_batches() {
    let all = spin_reference();
    let r = &all[MODEL];
    for (batch_size, grad_accum) in [(3, 1), (1, 3)] {
        let mut t = trainer(
            MODEL,
            r,
            TrainConfig {
                batch_size,
                grad_accum,
                epochs: 2,
                max_grad_norm: 1.0,
                ..config(OptimizerKind::Rmsprop, 0.0)
            },
        );
        for step in 1..=2 {
            t.train_step().unwrap();
            assert_eq!(
                t.state.blocking_reads(),
                step,
                "{batch_size} x {grad_accum}: reads after step {step}"
            );
        }
    }
}

#[test]
fn the_probe_is_the_norm_unless_a_loss_is_not_finite_on_every_device() {
    use burn::tensor::{Tensor, TensorData};
    use wgspin::train::optim::probe;
    for dev in devices() {
        let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &dev.device);
        for (losses, norm2, want_finite) in [
            (vec![1.5, -2.0], 9.0, true),
            (vec![], 9.0, true),
            (vec![1.5, f32::INFINITY], 9.0, false),
            (vec![f32::NAN], 9.0, false),
            (vec![0.5], f32::INFINITY, false),
            (vec![0.5], f32::NAN, false),
        ] {
            let p = floats(probe(t(norm2), losses.iter().map(|&l| t(l)).collect()).probe)[0];
            let label = format!("{}: losses {losses:?}, norm² {norm2}", dev.description);
            assert_eq!(p.is_finite(), want_finite, "{label}: probe {p}");
            if want_finite {
                assert_eq!(p, norm2, "{label}");
            }
        }
    }
}

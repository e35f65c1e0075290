//! The token log-prob op (WGSL kernel on wgpu, burn-ops twin elsewhere) against independent
//! references: the forward against `log_softmax` in f64 on the host, gradients against
//! `log_softmax(logits).gather(targets)` written with plain burn tensor ops and its autodiff.
//!
//! Tolerances (f32): forward |Δ| ≤ 1e-5 · max(1, |lse|) (logp = x_t − lse cancels, so the error
//! scales with the log-sum-exp); gradients |Δ| ≤ 1e-6 + 1e-5 · |ref|; finite differences (h = 1e-2,
//! central) |Δ| ≤ 2e-3. f16 logits: the forward is held to the f64 values of the f16-rounded
//! logits with the f32 tolerance; the f16 gradient to the f64 gradient rounded to f16, within one
//! f16 rounding, |Δ| ≤ 1e-7 + 1e-3 · |exact|.

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{Rng, devices, floats};
use wgspin::kernels::common::{f16_kernel_available, is_wgpu, set_poison_outputs};
use wgspin::kernels::logprobs::{head_logprobs, token_logprobs};

/// Random logits `[n, v]` with scale `scale` and a fraction of −inf entries (never the target).
fn case(rng: &mut Rng, n: usize, v: usize, scale: f32, masked: f32) -> (Vec<f32>, Vec<i32>) {
    let targets: Vec<i32> = (0..n).map(|_| rng.below(v) as i32).collect();
    let mut logits: Vec<f32> = (0..n * v).map(|_| rng.normal() * scale).collect();
    for (row, &t) in targets.iter().enumerate() {
        for c in 0..v {
            if c as i32 != t && rng.uniform() < masked {
                logits[row * v + c] = f32::NEG_INFINITY;
            }
        }
    }
    (logits, targets)
}

fn reference(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let n = targets.dims()[0];
    log_softmax(logits, 1)
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
}

/// `log_softmax(row)[target]` per row, in f64 on the host: the forward reference (burn's own
/// f32 `log_softmax` on the CPU sums 152k terms with a 2e-4 error, above these tolerances).
fn exact_logprobs(logits: &[f32], targets: &[i32], v: usize) -> Vec<f64> {
    logits
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
            row[t as usize] as f64 - m - s.ln()
        })
        .collect()
}

fn tensors(
    logits: &[f32],
    targets: &[i32],
    n: usize,
    v: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<1, Int>) {
    (
        Tensor::from_data(TensorData::new(logits.to_vec(), [n, v]), device),
        Tensor::from_data(TensorData::new(targets.to_vec(), [n]), device),
    )
}

#[test]
fn forward_matches_reference_on_random_shapes() {
    set_poison_outputs(true);
    let mut rng = Rng(7);
    let shapes = [
        (1, 1),
        (1, 7),
        (3, 255),
        (5, 257),
        (64, 1000),
        (512, 33),
        (2, 4099),
        (3, 152_064),
    ];
    for dev in devices() {
        for &(n, v) in &shapes {
            for &(scale, masked) in &[(1.0, 0.0), (30.0, 0.1), (1000.0, 0.5)] {
                let (l, t) = case(&mut rng, n, v, scale, masked);
                let (logits, targets) = tensors(&l, &t, n, v, &dev.device);
                let (logp, lse) = token_logprobs(logits.clone(), targets.clone());
                let got = floats(logp);
                let lse = floats(lse);
                let want = exact_logprobs(&l, &t, v);
                for i in 0..n {
                    let tol = 1e-5 * lse[i].abs().max(1.0) as f64;
                    assert!(
                        (got[i] as f64 - want[i]).abs() <= tol && got[i].is_finite(),
                        "{} n={n} v={v} scale={scale}: row {i}: {} vs {}",
                        dev.description,
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

/// A peaked row as a real model makes: the target at 0, every other logit at −22, whose
/// `exp` (2.8e-10) is below half an f32 ulp of 1. The exact log-prob is `−ln(1 + (V−1)·e^−22)`
/// (f64); a running f32 sum onto the target's 1 drops the whole tail (1.4e-5 at V = 49152, 4.2e-5 at
/// Qwen2's 152064). Tolerance 2e-6, a seventh of the smaller tail.
#[test]
fn peaked_rows_keep_their_small_terms() {
    for dev in devices() {
        for v in [49_152, 152_064] {
            let t = [3usize, v - 1];
            let mut l = vec![-22.0f32; 2 * v];
            l[t[0]] = 0.0;
            l[v + t[1]] = 0.0;
            let targets: Vec<i32> = t.iter().map(|&x| x as i32).collect();
            let (logits, targets) = tensors(&l, &targets, 2, v, &dev.device);
            let got = floats(token_logprobs(logits, targets).0);
            let want = -((v - 1) as f64 * (-22f64).exp()).ln_1p();
            for g in got {
                assert!(
                    (g as f64 - want).abs() <= 2e-6,
                    "{} v={v}: log-prob {g} vs exact {want}",
                    dev.description
                );
            }
        }
    }
}

#[test]
fn gradient_matches_reference() {
    set_poison_outputs(true);
    let mut rng = Rng(11);
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        for &(n, v) in &[(1, 5), (7, 300), (33, 2049)] {
            let (l, t) = case(&mut rng, n, v, 3.0, 0.2);
            let w_host: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let weights = Tensor::<1>::from_data(TensorData::new(w_host.clone(), [n]), &device);
            let grad_of = |use_kernel: bool| {
                let (logits, targets) = tensors(&l, &t, n, v, &device);
                let logits = logits.require_grad();
                let logp = if use_kernel {
                    token_logprobs(logits.clone(), targets).0
                } else {
                    reference(logits.clone(), targets)
                };
                let grads = (logp * weights.clone()).sum().backward();
                floats(logits.grad(&grads).unwrap())
            };
            let (got, want) = (grad_of(true), grad_of(false));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                    "{} n={n} v={v}: dlogits[{i}] {a} vs {b}",
                    dev.description
                );
            }
        }
    }
}

#[test]
fn f16_logits_match_exact_forward_and_backward() {
    use burn::tensor::DType;
    set_poison_outputs(true);
    let mut rng = Rng(13);
    for dev in devices() {
        if std::env::var("WGSPIN_REQUIRE_GPU").is_ok_and(|v| v == "1") && is_wgpu(&dev.device) {
            // lavapipe and every desktop GPU wgpu reaches have WGSL f16: CI must test that path.
            assert!(
                f16_kernel_available(&dev.device),
                "{}: no f16 shader path",
                dev.description
            );
        }
        let device = dev.device.clone().autodiff();
        for &(n, v) in &[(1, 7), (5, 257), (33, 2049), (2, 152_064)] {
            let (l, t) = case(&mut rng, n, v, 4.0, 0.1);
            let w_host: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let weights = Tensor::<1>::from_data(TensorData::new(w_host.clone(), [n]), &device);
            let got = {
                let (logits, targets) = tensors(&l, &t, n, v, &device);
                let half = logits.cast(DType::F16).require_grad();
                let (logp, lse) = token_logprobs(half.clone(), targets);
                let grads = (logp.clone() * weights.clone()).sum().backward();
                let g = half.grad(&grads).unwrap();
                assert_eq!(g.dtype(), DType::F16, "{}: dlogits dtype", dev.description);
                (floats(logp), floats(lse), floats(g.cast(DType::F32)))
            };
            let rounded: Vec<f32> = l.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
            let exact = exact_logprobs(&rounded, &t, v);
            for (i, (&lp, &lse)) in got.0.iter().zip(&got.1).enumerate() {
                let tol = 1e-5 * lse.abs().max(1.0) as f64;
                assert!(
                    (lp as f64 - exact[i]).abs() <= tol,
                    "{} n={n} v={v}: f16 logp[{i}] {lp} vs {}",
                    dev.description,
                    exact[i]
                );
            }
            // dlogits in f64 from the f16-rounded logits, rounded to f16 as the output is:
            // w·(1[j = target] − exp(x_j − lse)).
            let exact_grad: Vec<f64> = rounded
                .chunks(v)
                .enumerate()
                .flat_map(|(row, xs)| {
                    let lse = xs[t[row] as usize] as f64 - exact[row];
                    let (wr, tr) = (w_host[row] as f64, t[row] as usize);
                    xs.iter().enumerate().map(move |(j, &x)| {
                        let g = wr * (f64::from(u8::from(j == tr)) - (x as f64 - lse).exp());
                        half::f16::from_f64(g).to_f64()
                    })
                })
                .collect();
            // Against the exact values, not burn's own log_softmax: on lavapipe its f32 backward
            // over 152k columns is 16% off on small gradients (3.10e-6 for an exact 2.62e-6).
            for (i, (a, b)) in got.2.iter().zip(&exact_grad).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 1e-7 + 1e-3 * b.abs(),
                    "{} n={n} v={v}: f16 dlogits[{i}] {a} vs exact {b}",
                    dev.description
                );
            }
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let mut rng = Rng(3);
    for dev in devices() {
        let (n, v) = (2, 9);
        let (l, t) = case(&mut rng, n, v, 1.0, 0.0);
        let device = dev.device.clone().autodiff();
        let (logits, targets) = tensors(&l, &t, n, v, &device);
        let logits = logits.require_grad();
        let grads = token_logprobs(logits.clone(), targets).0.sum().backward();
        let analytic = floats(logits.grad(&grads).unwrap());
        let f = |x: &[f32]| -> f32 {
            let (lg, tg) = tensors(x, &t, n, v, &dev.device);
            floats(token_logprobs(lg, tg).0).iter().sum()
        };
        let h = 1e-2;
        for i in 0..n * v {
            let (mut up, mut down) = (l.clone(), l.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (f(&up) - f(&down)) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() <= 2e-3,
                "{}: d/dx[{i}] {numeric} vs {}",
                dev.description,
                analytic[i]
            );
        }
    }
}

#[test]
fn fused_head_matches_reference_forward_and_backward() {
    set_poison_outputs(true);
    let mut rng = Rng(5);
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        let (n, h, v) = (13, 16, 301);
        let hid: Vec<f32> = (0..n * h).map(|_| rng.normal()).collect();
        let wts: Vec<f32> = (0..v * h).map(|_| rng.normal() * 0.5).collect();
        let tg: Vec<i32> = (0..n).map(|_| rng.below(v) as i32).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let run = |chunk: Option<usize>| {
            let hidden = Tensor::<2>::from_data(TensorData::new(hid.clone(), [n, h]), &device)
                .require_grad();
            let weight = Tensor::<2>::from_data(TensorData::new(wts.clone(), [v, h]), &device)
                .require_grad();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(tg.clone(), [n]), &device);
            let logp = match chunk {
                Some(c) => head_logprobs(hidden.clone(), weight.clone(), targets, c),
                None => reference(hidden.clone().matmul(weight.clone().transpose()), targets),
            };
            let scale = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &device);
            let grads = (logp.clone() * scale).sum().backward();
            (
                floats(logp),
                floats(hidden.grad(&grads).unwrap()),
                floats(weight.grad(&grads).unwrap()),
            )
        };
        let want = run(None);
        for chunk in [1, 4, n, 1000] {
            let got = run(Some(chunk));
            for (name, a, b) in [
                ("logp", &got.0, &want.0),
                ("dhidden", &got.1, &want.1),
                ("dweight", &got.2, &want.2),
            ] {
                for (x, y) in a.iter().zip(b.iter()) {
                    assert!(
                        (x - y).abs() <= 1e-4 + 1e-4 * y.abs(),
                        "{} chunk {chunk}: {name} {x} vs {y}",
                        dev.description
                    );
                }
            }
        }
    }
}

/// The lm_head's chunk comes from the device: an eighth of the adapter's largest bindable buffer
/// (at most 2²⁶ logits) on a GPU, with or without autodiff; the CPU backend's fixed 2²³.
#[test]
fn logits_budget_follows_the_device_limits() {
    use wgspin::device::{list_adapters, logits_budget};
    for dev in devices() {
        let got = logits_budget(&dev.device);
        assert_eq!(logits_budget(&dev.device.clone().autodiff()), got);
        if !dev.is_gpu {
            assert_eq!(got, 1 << 23);
            continue;
        }
        let allowed: Vec<usize> = list_adapters()
            .iter()
            .map(|a| ((a.max_buffer / 8) as usize).clamp(1 << 20, 1 << 26))
            .collect();
        assert!(
            allowed.contains(&got),
            "{}: {got} not in {allowed:?}",
            dev.description
        );
        eprintln!("{}: {got} logits at once", dev.description);
    }
}

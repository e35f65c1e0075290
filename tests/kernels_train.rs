//! The training step's fused element-wise ops (Rust loops on the CPU backend, burn-ops twins
//! elsewhere; SwiGLU's and the optimizers' twins are also run on every device) against
//! references written here on the host in f64 from their definitions:
//! - SwiGLU `silu(g) · u` and its two gradients, and the op's autodiff against burn's own
//!   autodiff of `silu(g) * u`;
//! - attention's scaled, masked softmax and its gradient (masks shared by the batch and per
//!   row, fully masked keys), and its autodiff against burn's autodiff of the ops it replaces;
//! - RMSprop and AdamW updates over several steps (torch's formulas, weight decay, a gradient
//!   scale), and the sum of squares of the gradient norm; the device's probe of an update (the
//!   clip of the norm it carries, and the skip of a probe that is not finite, which keeps
//!   weights and state exactly even when the gradient holds NaN and inf), and the probe itself
//!   (the norm where the step's loss is finite, NaN where not); an update in place
//!   leaves tensors held elsewhere as they were.
//!
//! Tolerances (f32 against f64): |Δ| ≤ 1e-5 · max(1, |ref|) for values; the optimizer's weights
//! after 3 steps ≤ 1e-5 · max(1, |ref|) (the update divides by √v + ε: relative error of f32).

mod common;

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Tensor, TensorData};
use common::{Rng, assert_close, devices, floats};
use wgspin::kernels::optim_step::{
    AdamwCoefs, RmspropCoefs, StepControl, adamw_step, adamw_step_ctl, adamw_step_ctl_twin,
    adamw_step_twin, rmsprop_step, rmsprop_step_ctl, rmsprop_step_ctl_twin, rmsprop_step_twin,
    step_probe, step_probe_twin, sum_squares,
};
use wgspin::kernels::softmax::{masked_softmax, masked_softmax_grad};
use wgspin::kernels::swiglu::{swiglu, swiglu_grad, swiglu_grad_twin, swiglu_twin};

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn swiglu_matches_its_definition() {
    let mut rng = Rng(21);
    for dev in devices() {
        // 70001 elements: more than one parallel chunk, not a multiple of it.
        for &(rows, cols) in &[(1, 1), (3, 17), (7, 10001)] {
            let n = rows * cols;
            let (g, u, dy) = (
                randn(&mut rng, n, 4.0),
                randn(&mut rng, n, 1.0),
                randn(&mut rng, n, 1.0),
            );
            let t = |v: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), &dev.device)
            };
            let want_y: Vec<f64> = (0..n)
                .map(|i| g[i] as f64 * sigmoid(g[i] as f64) * u[i] as f64)
                .collect();
            let want_dg: Vec<f64> = (0..n)
                .map(|i| {
                    let (x, s) = (g[i] as f64, sigmoid(g[i] as f64));
                    dy[i] as f64 * u[i] as f64 * (s + x * s * (1.0 - s))
                })
                .collect();
            let want_du: Vec<f64> = (0..n)
                .map(|i| dy[i] as f64 * g[i] as f64 * sigmoid(g[i] as f64))
                .collect();
            // The op as this device runs it, and the burn-ops twin other backends run.
            type Fwd = fn(Tensor<2>, Tensor<2>) -> Tensor<2>;
            type Bwd = fn(Tensor<2>, Tensor<2>, Tensor<2>) -> (Tensor<2>, Tensor<2>);
            let ops: [(&str, Fwd, Bwd); 2] = [
                ("op", swiglu, swiglu_grad),
                ("twin", swiglu_twin, swiglu_grad_twin),
            ];
            for (which, fwd, bwd) in ops {
                let y = floats(fwd(t(&g), t(&u)));
                let (dg, du) = bwd(t(&g), t(&u), t(&dy));
                let label = format!("{} {which} [{rows}, {cols}]", dev.description);
                assert_close(&format!("{label} y"), &y, &want_y, 1e-5);
                assert_close(&format!("{label} dgate"), &floats(dg), &want_dg, 1e-5);
                assert_close(&format!("{label} dup"), &floats(du), &want_du, 1e-5);
            }
        }
    }
}

#[test]
fn swiglu_autodiff_matches_burns_autodiff() {
    let mut rng = Rng(22);
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        let (rows, cols) = (5, 333);
        let n = rows * cols;
        let (g, u, w) = (
            randn(&mut rng, n, 3.0),
            randn(&mut rng, n, 1.0),
            randn(&mut rng, n, 1.0),
        );
        let t =
            |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), &device);
        let grads_of = |fused: bool| {
            let (gate, up) = (t(&g).require_grad(), t(&u).require_grad());
            let y = if fused {
                swiglu(gate.clone(), up.clone())
            } else {
                silu(gate.clone()) * up.clone()
            };
            let grads = (y * t(&w)).sum().backward();
            (
                floats(gate.grad(&grads).unwrap()),
                floats(up.grad(&grads).unwrap()),
            )
        };
        let ((a_g, a_u), (b_g, b_u)) = (grads_of(true), grads_of(false));
        let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        assert_close(
            &format!("{} dgate", dev.description),
            &a_g,
            &wide(b_g),
            1e-5,
        );
        assert_close(&format!("{} dup", dev.description), &a_u, &wide(b_u), 1e-5);
    }
}

/// torch.optim.RMSprop (alpha, eps, weight_decay; no momentum) in f64, `steps` updates.
fn rmsprop_host(w: &[f32], grads: &[Vec<f32>], c: RmspropCoefs) -> (Vec<f64>, Vec<f64>) {
    let mut w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let mut v = vec![0f64; w.len()];
    let (lr, a, eps, wd, s) = (
        c.lr as f64,
        c.alpha as f64,
        c.eps as f64,
        c.weight_decay as f64,
        c.grad_scale as f64,
    );
    for g in grads {
        for i in 0..w.len() {
            let gi = g[i] as f64 * s + wd * w[i];
            v[i] = a * v[i] + (1.0 - a) * gi * gi;
            w[i] -= lr * gi / (v[i].sqrt() + eps);
        }
    }
    (w, v)
}

/// torch.optim.AdamW in f64.
fn adamw_host(w: &[f32], grads: &[Vec<f32>], c: AdamwCoefs) -> Vec<f64> {
    let mut w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0f64; w.len()], vec![0f64; w.len()]);
    let (lr, b1, b2, eps, wd, s) = (
        c.lr as f64,
        c.beta1 as f64,
        c.beta2 as f64,
        c.eps as f64,
        c.weight_decay as f64,
        c.grad_scale as f64,
    );
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..w.len() {
            let gi = g[i] as f64 * s;
            w[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
            w[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
    w
}

#[test]
fn optimizer_steps_match_torch_formulas() {
    let mut rng = Rng(23);
    let n = 70_001;
    for dev in devices() {
        let w0 = randn(&mut rng, n, 0.5);
        let grads: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, n, 2.0)).collect();
        let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &dev.device);
        let rc = RmspropCoefs {
            lr: 1e-3,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_scale: 0.25,
            max_grad_norm: 0.0,
        };
        let (want_w, want_v) = rmsprop_host(&w0, &grads, rc);
        type Rms = fn(Tensor<1>, Tensor<1>, Tensor<1>, RmspropCoefs) -> (Tensor<1>, Tensor<1>);
        for (which, step) in [("op", rmsprop_step as Rms), ("twin", rmsprop_step_twin)] {
            let (mut w, mut v) = (t(&w0), t(&vec![0.0; n]));
            for g in &grads {
                (w, v) = step(w, t(g), v, rc);
            }
            let label = format!("{} {which} rmsprop", dev.description);
            assert_close(&format!("{label} w"), &floats(w), &want_w, 1e-5);
            assert_close(&format!("{label} v"), &floats(v), &want_v, 1e-5);
        }

        let ac = |t: i32| AdamwCoefs {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            bias1: 1.0 - 0.9f32.powi(t),
            bias2: 1.0 - 0.999f32.powi(t),
            grad_scale: 0.5,
            max_grad_norm: 0.0,
        };
        let want = adamw_host(&w0, &grads, ac(1));
        type Adam = fn(
            Tensor<1>,
            Tensor<1>,
            Tensor<1>,
            Tensor<1>,
            AdamwCoefs,
        ) -> (Tensor<1>, Tensor<1>, Tensor<1>);
        for (which, step) in [("op", adamw_step as Adam), ("twin", adamw_step_twin)] {
            let (mut w, mut m, mut v) = (t(&w0), t(&vec![0.0; n]), t(&vec![0.0; n]));
            for (i, g) in grads.iter().enumerate() {
                (w, m, v) = step(w, t(g), m, v, ac(i as i32 + 1));
            }
            let label = format!("{} {which} adamw w", dev.description);
            assert_close(&label, &floats(w), &want, 1e-5);
        }

        let sq = floats(sum_squares(t(&grads[0]), 0.125))[0] as f64;
        let want: f64 = grads[0].iter().map(|&x| (x as f64 * 0.125).powi(2)).sum();
        assert!(
            (sq - want).abs() <= 1e-5 * want,
            "{} sum of squares {sq} vs {want}",
            dev.description
        );
    }
}

#[test]
fn device_probe_clips_or_skips_the_update() {
    let mut rng = Rng(25);
    let n = 40_003;
    for dev in devices() {
        let w0 = randn(&mut rng, n, 0.5);
        let v0: Vec<f32> = randn(&mut rng, n, 1.0).iter().map(|x| x * x).collect();
        let g = randn(&mut rng, n, 2.0);
        let mut bad = g.clone();
        (bad[3], bad[n - 1]) = (f32::NAN, f32::INFINITY);
        let t =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev.device);
        let ctl = |p: f32| StepControl { probe: t(&[p]) };
        let rc = |max_grad_norm: f32| RmspropCoefs {
            lr: 1e-3,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_scale: 0.5,
            max_grad_norm,
        };
        // torch's RMSprop in f64 on `g · s`.
        let want = |s: f64| {
            let (mut w, mut v): (Vec<f64>, Vec<f64>) = (
                w0.iter().map(|&x| x as f64).collect(),
                v0.iter().map(|&x| x as f64).collect(),
            );
            for i in 0..n {
                let gi = g[i] as f64 * s + 0.01 * w[i];
                v[i] = 0.99 * v[i] + 0.01 * gi * gi;
                w[i] -= 1e-3 * gi / (v[i].sqrt() + 1e-8);
            }
            (w, v)
        };
        type Rms = fn([Tensor<1>; 3], &StepControl, RmspropCoefs) -> (Tensor<1>, Tensor<1>);
        type Adam =
            fn([Tensor<1>; 4], &StepControl, AdamwCoefs) -> (Tensor<1>, Tensor<1>, Tensor<1>);
        let ac = AdamwCoefs {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            bias1: 0.1,
            bias2: 0.001,
            grad_scale: 1.0,
            max_grad_norm: 1.0,
        };
        for (which, rms, adam) in [
            ("op", rmsprop_step_ctl as Rms, adamw_step_ctl as Adam),
            ("twin", rmsprop_step_ctl_twin, adamw_step_ctl_twin),
        ] {
            let label = format!("{} {which}", dev.description);
            // Probe 16: norm 4. Clipped to 1: the factor 0.5 · 1 / (4 + 1e-6); to 5 or none: 0.5.
            for (max, s) in [(1.0, 0.5 / (4.0 + 1e-6)), (5.0, 0.5), (0.0, 0.5)] {
                let (want_w, want_v) = want(s);
                let (w, v) = rms([t(&w0), t(&g), t(&v0)], &ctl(16.0), rc(max));
                assert_close(&format!("{label} max {max} w"), &floats(w), &want_w, 1e-5);
                assert_close(&format!("{label} max {max} v"), &floats(v), &want_v, 1e-5);
            }
            for p in [f32::NAN, f32::INFINITY] {
                let (w, v) = rms([t(&w0), t(&bad), t(&v0)], &ctl(p), rc(1.0));
                assert_eq!(floats(w), w0, "{label}: a skipped RMSprop step changed w");
                assert_eq!(floats(v), v0, "{label}: a skipped RMSprop step changed v");
                let (w, m, v) = adam([t(&w0), t(&bad), t(&g), t(&v0)], &ctl(p), ac);
                assert_eq!(floats(w), w0, "{label}: a skipped AdamW step changed w");
                assert_eq!(floats(m), g, "{label}: a skipped AdamW step changed m");
                assert_eq!(floats(v), v0, "{label}: a skipped AdamW step changed v");
            }
        }
    }
}

/// `step_probe`: the squared norm where the step's summed loss is finite (whatever the norm
/// holds, NaN and inf included, bit for bit), NaN where the loss is inf, −inf or NaN.
#[test]
fn step_probe_carries_the_norm_of_a_finite_loss_and_nan_otherwise() {
    let norms = [0.0, 16.0, 3.0e38, f32::NAN, f32::INFINITY, 1e-30];
    let losses = [
        0.0,
        -2.5,
        1e30,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    for dev in devices() {
        let t = |x: f32| Tensor::<1>::from_data(TensorData::new(vec![x], [1]), &dev.device);
        type Probe = fn(Tensor<1>, Tensor<1>) -> Tensor<1>;
        for (which, op) in [("op", step_probe as Probe), ("twin", step_probe_twin)] {
            for n in norms {
                for l in losses {
                    let got = floats(op(t(n), t(l)))[0];
                    let label = format!("{} {which}: norm² {n}, loss {l}", dev.description);
                    if l.is_finite() {
                        assert_eq!(got.to_bits(), n.to_bits(), "{label}: got {got}");
                    } else {
                        assert!(got.is_nan(), "{label}: got {got}, not NaN");
                    }
                }
            }
        }
    }
}

/// The update writes over the weights and state where nothing else holds them (the optimizer's
/// own flat buffers) and beside them where something does: a tensor the caller kept still holds
/// the old values afterwards, and both ways give the same update.
#[test]
fn an_update_leaves_the_tensors_others_hold_as_they_were() {
    let mut rng = Rng(29);
    let n = 5_003;
    for dev in devices() {
        let w0 = randn(&mut rng, n, 0.5);
        let v0: Vec<f32> = randn(&mut rng, n, 1.0).iter().map(|x| x * x).collect();
        let g = randn(&mut rng, n, 2.0);
        let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &dev.device);
        let c = RmspropCoefs {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_scale: 1.0,
            max_grad_norm: 0.0,
        };
        let (w, v) = (t(&w0), t(&v0));
        let (kept_w, kept_v) = (w.clone(), v.clone());
        let (shared_w, shared_v) = rmsprop_step(w, t(&g), v, c);
        let (own_w, own_v) = rmsprop_step(t(&w0), t(&g), t(&v0), c);
        let label = &dev.description;
        assert_eq!(
            floats(kept_w),
            w0,
            "{label}: the update wrote a weight held elsewhere"
        );
        assert_eq!(
            floats(kept_v),
            v0,
            "{label}: the update wrote a state held elsewhere"
        );
        assert_eq!(
            floats(shared_w.clone()),
            floats(own_w),
            "{label}: w in place"
        );
        assert_eq!(floats(shared_v), floats(own_v), "{label}: v in place");
        assert_ne!(floats(shared_w), w0, "{label}: the update changed nothing");
    }
}

/// Scores `[b, h, g, s, k]` and a mask `[mb, 1, 1, s, k]`: causal, plus random hidden keys in
/// per-row masks (never the diagonal, so no row is fully hidden).
fn softmax_case(rng: &mut Rng, dims: [usize; 5], mb: usize) -> (Vec<f32>, Vec<f32>) {
    let [b, h, g, s, k] = dims;
    let scores = randn(rng, b * h * g * s * k, 6.0);
    let mut mask = vec![0f32; mb * s * k];
    for r in 0..mb {
        for q in 0..s {
            for j in 0..k {
                let hidden = j > q + (k - s) || (mb > 1 && j != q + (k - s) && rng.uniform() < 0.3);
                if hidden {
                    mask[(r * s + q) * k + j] = -1.0e9;
                }
            }
        }
    }
    (scores, mask)
}

#[test]
fn masked_softmax_matches_its_definition() {
    let mut rng = Rng(24);
    let scale = 0.125f32;
    for dev in devices() {
        for &(dims, mb) in &[
            ([1, 1, 1, 1, 1], 1),
            ([2, 3, 2, 5, 5], 1),
            ([3, 2, 1, 4, 9], 3),
            ([2, 1, 3, 40, 300], 2),
        ] {
            let [b, h, g, s, k] = dims;
            let (x, mask) = softmax_case(&mut rng, dims, mb);
            let dy = randn(&mut rng, x.len(), 1.0);
            let t = |v: &[f32], d: [usize; 5]| {
                Tensor::<5>::from_data(TensorData::new(v.to_vec(), d), &dev.device)
            };
            let p = floats(masked_softmax(
                t(&x, dims),
                t(&mask, [mb, 1, 1, s, k]),
                scale,
            ));
            let d = floats(masked_softmax_grad(t(&p, dims), t(&dy, dims), scale));
            let (mut want_p, mut want_d) = (vec![0f64; x.len()], vec![0f64; x.len()]);
            for row in 0..b * h * g * s {
                let mrow = if mb == 1 { 0 } else { row / (h * g * s) } * s + row % s;
                let z: Vec<f64> = (0..k)
                    .map(|j| x[row * k + j] as f64 * scale as f64 + mask[mrow * k + j] as f64)
                    .collect();
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
                let pr: Vec<f64> = z.iter().map(|v| (v - m).exp() / sum).collect();
                // The backward from the kernel's own probabilities: it is held to its formula.
                let dot: f64 = (0..k)
                    .map(|j| p[row * k + j] as f64 * dy[row * k + j] as f64)
                    .sum();
                for j in 0..k {
                    want_p[row * k + j] = pr[j];
                    let pj = p[row * k + j] as f64;
                    want_d[row * k + j] = scale as f64 * pj * (dy[row * k + j] as f64 - dot);
                }
            }
            let label = format!("{} {dims:?} mask rows {mb}", dev.description);
            assert_close(&format!("{label} probs"), &p, &want_p, 1e-5);
            assert_close(&format!("{label} dscores"), &d, &want_d, 1e-5);
        }
    }
}

#[test]
fn masked_softmax_autodiff_matches_burns_autodiff() {
    let mut rng = Rng(25);
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        let dims = [2, 2, 2, 6, 6];
        let (x, mask) = softmax_case(&mut rng, dims, 2);
        let w = randn(&mut rng, x.len(), 1.0);
        let t = |v: &[f32], d: [usize; 5]| {
            Tensor::<5>::from_data(TensorData::new(v.to_vec(), d), &device)
        };
        let grad_of = |fused: bool| {
            let scores = t(&x, dims).require_grad();
            let mask = t(&mask, [2, 1, 1, 6, 6]);
            let p = if fused {
                masked_softmax(scores.clone(), mask, 0.3)
            } else {
                softmax(scores.clone().mul_scalar(0.3) + mask, 4)
            };
            let grads = (p * t(&w, dims)).sum().backward();
            floats(scores.grad(&grads).unwrap())
        };
        let want: Vec<f64> = grad_of(false).into_iter().map(f64::from).collect();
        assert_close(
            &format!("{} dscores", dev.description),
            &grad_of(true),
            &want,
            1e-5,
        );
    }
}

//! Flash attention (`kernels::flash_attention`: the CPU backend's blocked kernel, the burn-ops
//! twin elsewhere) against a naive float64 attention written here from the op's contract, against
//! its twin, and its autodiff against burn's autodiff of the naive ops (mask from positions,
//! softmax, matmuls).
//!
//! Cases: causal; right padding; left padding (position −1 before the row's tokens); GQA ratios
//! 1, 2 and 3; a sliding window; more keys than queries (cached keys before the new queries);
//! queries that see no key (a padding row, a query whose only earlier key is padding); f16
//! inputs; 300-token rows (not a multiple of the kernel's blocks; several blocks skipped).
//!
//! Tolerances, |Δ| ≤ tol · max(1, |ref|): f32 against f64, 2e-5 for out and lse, 1e-4 for the
//! gradients (sums over up to 300 keys and 3 heads); kernel against twin, the same; f16 inputs
//! (outputs and gradients rounded to f16, 2⁻¹¹ relative), 4e-3; autodiff against burn's autodiff
//! of the naive ops, 1e-4.

mod common;

use burn::tensor::activation::softmax;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use common::{Rng, assert_close, devices, floats};
use wgspin::kernels::flash_attention::{
    FlashSaved, flash_attention, flash_attention_grad, flash_attention_twin,
};

/// One attention problem: shapes, positions (−1 for padding) and window.
#[derive(Clone)]
struct Case {
    name: &'static str,
    b: usize,
    h: usize,
    hkv: usize,
    s: usize,
    kl: usize,
    d: usize,
    qpos: Vec<i32>,
    kpos: Vec<i32>,
    window: u32,
    /// Small enough for lavapipe.
    small: bool,
}

/// Positions `0..n` after `pad` padding slots (left padding) or before them (`right`).
fn row(n: usize, pad: usize, right: bool) -> Vec<i32> {
    let real = (0..n as i32).collect::<Vec<_>>();
    let pads = vec![-1; pad];
    if right {
        [real, pads].concat()
    } else {
        [pads, real].concat()
    }
}

fn case(
    name: &'static str,
    [b, h, hkv, s, kl, d]: [usize; 6],
    qpos: Vec<i32>,
    kpos: Vec<i32>,
    window: u32,
) -> Case {
    assert_eq!((qpos.len(), kpos.len()), (b * s, b * kl), "{name}");
    Case {
        name,
        b,
        h,
        hkv,
        s,
        kl,
        d,
        qpos,
        kpos,
        window,
        small: s * kl <= 1600,
    }
}

fn cases() -> Vec<Case> {
    let causal = row(20, 0, true);
    // Cached slots 0..30 (the first 4 of row 1 padding), the 10 new queries at 30..40.
    let cache_k = [row(40, 0, true), [vec![-1; 4], (0..36).collect()].concat()].concat();
    let cache_q = [(30..40).collect::<Vec<_>>(), (26..36).collect()].concat();
    // Row 0's only key at position 0 is padding: query 0 sees nothing; row 1 is all padding.
    let mut blind_k = row(12, 0, true);
    blind_k[0] = -1;
    let long_r = [row(300, 0, true), row(250, 50, true)].concat();
    let long_l = [row(300, 0, true), row(263, 37, false)].concat();
    vec![
        case("causal g1", [1, 2, 2, 20, 20, 8], causal.clone(), causal, 0),
        case(
            "right padding g2",
            [2, 4, 2, 20, 20, 8],
            [row(20, 0, true), row(13, 7, true)].concat(),
            [row(20, 0, true), row(13, 7, true)].concat(),
            0,
        ),
        case(
            "left padding g3",
            [2, 6, 2, 16, 16, 8],
            [row(16, 0, true), row(11, 5, false)].concat(),
            [row(16, 0, true), row(11, 5, false)].concat(),
            0,
        ),
        case(
            "window 5 g2",
            [1, 4, 2, 40, 40, 8],
            row(40, 0, true),
            row(40, 0, true),
            5,
        ),
        case(
            "cached keys s<k g3",
            [2, 3, 1, 10, 40, 8],
            cache_q,
            cache_k,
            0,
        ),
        case(
            "no visible key",
            [2, 2, 1, 12, 12, 8],
            [row(12, 0, true), vec![-1; 12]].concat(),
            [blind_k, vec![-1; 12]].concat(),
            0,
        ),
        case(
            "long right padding g3",
            [2, 3, 1, 300, 300, 16],
            long_r.clone(),
            long_r,
            0,
        ),
        case(
            "long left padding window 100 g2",
            [2, 4, 2, 300, 300, 16],
            long_l.clone(),
            long_l,
            100,
        ),
    ]
}

fn visible(c: &Case, r: usize, i: usize, j: usize) -> bool {
    let (q, k) = (c.qpos[r * c.s + i], c.kpos[r * c.kl + j]);
    q >= 0 && k >= 0 && k <= q && (c.window == 0 || q - k < c.window as i32)
}

/// The inputs of a case: `q [B, H, S, D]`, `k, v [B, HKV, K, D]`, `dout [B, H, S, D]`.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn inputs(c: &Case, rng: &mut Rng, f16: bool) -> Inputs {
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let x = rng.normal();
                // The reference sees what an f16 kernel reads.
                if f16 {
                    half::f16::from_f32(x).to_f32()
                } else {
                    x
                }
            })
            .collect()
    };
    let (nq, nk) = (c.b * c.h * c.s * c.d, c.b * c.hkv * c.kl * c.d);
    Inputs {
        q: draw(nq),
        k: draw(nk),
        v: draw(nk),
        dout: draw(nq),
    }
}

/// `(out, lse, dq, dk, dv)` in f64 from the contract: per query head, its kv head `h / G`.
#[allow(clippy::type_complexity)]
fn reference(
    c: &Case,
    x: &Inputs,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (g, d) = (c.h / c.hkv, c.d);
    let mut out = vec![0f64; x.q.len()];
    let mut lse = vec![0f64; c.b * c.h * c.s];
    let (mut dq, mut dk, mut dv) = (
        vec![0f64; x.q.len()],
        vec![0f64; x.k.len()],
        vec![0f64; x.v.len()],
    );
    for r in 0..c.b {
        for hh in 0..c.h {
            let kvh = hh / g;
            for i in 0..c.s {
                let qr = ((r * c.h + hh) * c.s + i) * d;
                let krow = |j: usize| ((r * c.hkv + kvh) * c.kl + j) * d;
                let dot = |a: &[f32], ao: usize, b: &[f32], bo: usize| -> f64 {
                    (0..d).map(|t| a[ao + t] as f64 * b[bo + t] as f64).sum()
                };
                let vis: Vec<usize> = (0..c.kl).filter(|&j| visible(c, r, i, j)).collect();
                if vis.is_empty() {
                    continue;
                }
                let sc: Vec<f64> = vis
                    .iter()
                    .map(|&j| scale * dot(&x.q, qr, &x.k, krow(j)))
                    .collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let l = m + sc.iter().map(|s| (s - m).exp()).sum::<f64>().ln();
                lse[(r * c.h + hh) * c.s + i] = l;
                let p: Vec<f64> = sc.iter().map(|s| (s - l).exp()).collect();
                for (&j, &pj) in vis.iter().zip(&p) {
                    for t in 0..d {
                        out[qr + t] += pj * x.v[krow(j) + t] as f64;
                    }
                }
                let delta: f64 = (0..d).map(|t| x.dout[qr + t] as f64 * out[qr + t]).sum();
                for (&j, &pj) in vis.iter().zip(&p) {
                    let ds = pj * (dot(&x.dout, qr, &x.v, krow(j)) - delta);
                    for t in 0..d {
                        dv[krow(j) + t] += pj * x.dout[qr + t] as f64;
                        dq[qr + t] += scale * ds * x.k[krow(j) + t] as f64;
                        dk[krow(j) + t] += scale * ds * x.q[qr + t] as f64;
                    }
                }
            }
        }
    }
    (out, lse, dq, dk, dv)
}

struct Device<'a> {
    device: &'a burn::tensor::Device,
    f16: bool,
}

impl Device<'_> {
    fn t4(&self, v: &[f32], dims: [usize; 4]) -> Tensor<4> {
        let t = Tensor::<4>::from_data(TensorData::new(v.to_vec(), dims), self.device);
        if self.f16 { t.cast(FloatDType::F16) } else { t }
    }
    fn pos(&self, v: &[i32], dims: [usize; 2]) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), dims), self.device)
    }
}

/// Forward and backward of the op (`twin`: the burn-ops twins) → `(out, lse, dq, dk, dv)`.
#[allow(clippy::type_complexity)]
fn run(
    c: &Case,
    dev: &Device,
    x: &Inputs,
    scale: f32,
    twin: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qd, kd) = ([c.b, c.h, c.s, c.d], [c.b, c.hkv, c.kl, c.d]);
    let (q, k, v) = (dev.t4(&x.q, qd), dev.t4(&x.k, kd), dev.t4(&x.v, kd));
    let (qp, kp) = (dev.pos(&c.qpos, [c.b, c.s]), dev.pos(&c.kpos, [c.b, c.kl]));
    let fwd = if twin {
        flash_attention_twin
    } else {
        flash_attention
    };
    let (out, lse) = fwd(
        q.clone(),
        k.clone(),
        v.clone(),
        qp.clone(),
        kp.clone(),
        c.window,
        scale,
    );
    assert_eq!(out.dtype(), q.dtype(), "{}: out in q's dtype", c.name);
    let saved = FlashSaved {
        out: out.clone(),
        lse: lse.clone(),
        dout: dev.t4(&x.dout, qd),
        qpos: qp,
        kpos: kp,
        window: c.window,
        scale,
    };
    let (dq, dk, dv) = flash_attention_grad(q, k, v, saved, twin);
    (floats(out), floats(lse), floats(dq), floats(dk), floats(dv))
}

#[test]
fn flash_attention_matches_f64_reference_and_its_twin() {
    let mut rng = Rng(34);
    for compute in devices() {
        for f16 in [false, true] {
            let dev = Device {
                device: &compute.device,
                f16,
            };
            for c in cases().iter().filter(|c| c.small || !compute.is_gpu) {
                let x = inputs(c, &mut rng, f16);
                let scale = 1.0 / (c.d as f32).sqrt();
                let (out, lse, dq, dk, dv) = reference(c, &x, scale as f64);
                let label = format!("{} {} f16 {f16}", compute.description, c.name);
                let (tol, grad_tol) = if f16 { (4e-3, 4e-3) } else { (2e-5, 1e-4) };
                let got = run(c, &dev, &x, scale, false);
                assert_close(&format!("{label} out"), &got.0, &out, tol);
                assert_close(&format!("{label} lse"), &got.1, &lse, 2e-5);
                assert_close(&format!("{label} dq"), &got.2, &dq, grad_tol);
                assert_close(&format!("{label} dk"), &got.3, &dk, grad_tol);
                assert_close(&format!("{label} dv"), &got.4, &dv, grad_tol);
                let twin = run(c, &dev, &x, scale, true);
                let parts = [got.0, got.1, got.2, got.3, got.4];
                let twin_parts = [twin.0, twin.1, twin.2, twin.3, twin.4];
                for (name, (a, b)) in ["out", "lse", "dq", "dk", "dv"]
                    .iter()
                    .zip(parts.iter().zip(&twin_parts))
                {
                    let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
                    assert_close(&format!("{label} {name} vs twin"), a, &b, grad_tol);
                }
            }
        }
    }
}

/// The op's gradients against burn's autodiff of the naive ops: key heads repeated, scores,
/// additive mask built from the positions, softmax, matmul.
#[test]
fn flash_attention_autodiff_matches_burns_autodiff() {
    let mut rng = Rng(35);
    for compute in devices() {
        let device = compute.device.clone().autodiff();
        let dev = Device {
            device: &device,
            f16: false,
        };
        for c in cases().iter().filter(|c| c.small || !compute.is_gpu) {
            let x = inputs(c, &mut rng, false);
            let scale = 0.3f32;
            let (qd, kd) = ([c.b, c.h, c.s, c.d], [c.b, c.hkv, c.kl, c.d]);
            // Queries that see no key are left out of the loss: the naive softmax spreads them
            // over every key, the op gives them 0.
            let mut w = x.dout.clone();
            for r in 0..c.b {
                for i in (0..c.s).filter(|&i| (0..c.kl).all(|j| !visible(c, r, i, j))) {
                    for hh in 0..c.h {
                        w[((r * c.h + hh) * c.s + i) * c.d..][..c.d].fill(0.0);
                    }
                }
            }
            let mut mask = vec![-1.0e9f32; c.b * c.s * c.kl];
            for r in 0..c.b {
                for i in 0..c.s {
                    for j in (0..c.kl).filter(|&j| visible(c, r, i, j)) {
                        mask[(r * c.s + i) * c.kl + j] = 0.0;
                    }
                }
            }
            let grads_of = |fused: bool| {
                let (q, k, v) = (
                    dev.t4(&x.q, qd).require_grad(),
                    dev.t4(&x.k, kd).require_grad(),
                    dev.t4(&x.v, kd).require_grad(),
                );
                let out = if fused {
                    let (qp, kp) = (dev.pos(&c.qpos, [c.b, c.s]), dev.pos(&c.kpos, [c.b, c.kl]));
                    flash_attention(q.clone(), k.clone(), v.clone(), qp, kp, c.window, scale).0
                } else {
                    let g = c.h / c.hkv;
                    let rep = |t: Tensor<4>| {
                        t.reshape([c.b, c.hkv, 1, c.kl, c.d])
                            .expand([c.b, c.hkv, g, c.kl, c.d])
                            .reshape([c.b, c.h, c.kl, c.d])
                    };
                    let m = dev.t4(&mask, [c.b, 1, c.s, c.kl]);
                    let scores = q
                        .clone()
                        .matmul(rep(k.clone()).swap_dims(2, 3))
                        .mul_scalar(scale)
                        + m;
                    softmax(scores, 3).matmul(rep(v.clone()))
                };
                let grads = (out * dev.t4(&w, qd)).sum().backward();
                [q.grad(&grads), k.grad(&grads), v.grad(&grads)]
                    .map(|g| floats(g.expect("a gradient")))
            };
            let want = grads_of(false);
            let got = grads_of(true);
            for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
                assert_close(
                    &format!("{} {} {name}", compute.description, c.name),
                    a,
                    &b,
                    1e-4,
                );
            }
        }
    }
}

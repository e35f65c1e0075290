//! The training step's element-wise hot paths on the CPU backend, as Rust loops over rows on all
//! cores: token log-probs, attention's masked softmax and SwiGLU with their gradients, and the
//! optimizer updates.
//!
//! burn's CPU backend runs each element-wise op on one thread, one pass over memory per op: a
//! training step spent more wall time there than in its (multi-threaded) matmuls. Each function
//! here is one parallel pass computing in f32, next to the burn-ops twin its module keeps
//! (`reference_*` in `logprobs`, `softmax`, `swiglu` and `optim_step`); `tests/kernels_train.rs`
//! and `tests/kernels_logprobs.rs` hold both to references computed in f64.

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::tensor::{FloatTensor, IntTensor};
use rayon::prelude::*;

use super::cpu;
use super::logprobs::LogprobBackend;
use super::optim_step::{AdamwCoefs, OptimStepBackend, RmspropCoefs};
use super::softmax::MaskedSoftmaxBackend;
use super::swiglu::SwigluBackend;

/// Elements per parallel task of the flat loops: large enough that a task outweighs its
/// scheduling, small enough to split a layer's weight over the cores.
const FLAT_CHUNK: usize = 1 << 15;

/// `(max, Σ exp(x − max))` of a row, the sum accumulated in f64 so the tens of thousands of tiny
/// terms of a peaked distribution are not rounded away against the one near 1.
fn max_and_sum(row: &[f32]) -> (f32, f64) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = row.iter().map(|&x| (x - m).exp() as f64).sum::<f64>();
    (m, s)
}

impl LogprobBackend for Flex {
    fn token_logprobs(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [n, v] = logits.shape().dims::<2>();
        let logits = cpu::f32_dense(logits);
        let targets = cpu::positions(targets);
        let mut out = vec![[0f32; 2]; n];
        if v > 0 {
            cpu::read(&logits)
                .par_chunks(v)
                .zip(&targets)
                .zip(out.par_iter_mut())
                .for_each(|((row, &t), o)| {
                    let (m, s) = max_and_sum(row);
                    let lse = m + (s.ln() as f32);
                    // An id outside the vocabulary has no log-prob: NaN, which the trainer's
                    // finiteness checks report, rather than a panic in a worker thread.
                    let picked = usize::try_from(t)
                        .ok()
                        .and_then(|t| row.get(t))
                        .map_or(f32::NAN, |&x| x);
                    *o = [picked - lse, lse];
                });
        }
        let logp = out.iter().map(|o| o[0]).collect();
        let lse = out.iter().map(|o| o[1]).collect();
        (cpu::from_f32(logp, [n]), cpu::from_f32(lse, [n]))
    }

    fn token_logprobs_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let dtype = logits.dtype();
        let [n, v] = logits.shape().dims::<2>();
        let (logits, lse, grad) = (
            cpu::f32_dense(logits),
            cpu::f32_dense(lse),
            cpu::f32_dense(grad),
        );
        let targets = cpu::positions(targets);
        let (lse, grad) = (cpu::read(&lse), cpu::read(&grad));
        let mut d = vec![0f32; n * v];
        if v > 0 {
            d.par_chunks_mut(v)
                .zip(cpu::read(&logits).par_chunks(v))
                .enumerate()
                .for_each(|(i, (drow, row))| {
                    let (l, g) = (lse[i], grad[i]);
                    for (o, &x) in drow.iter_mut().zip(row) {
                        *o = -g * (x - l).exp();
                    }
                    if let Some(o) = usize::try_from(targets[i])
                        .ok()
                        .and_then(|t| drow.get_mut(t))
                    {
                        *o += g;
                    }
                });
        }
        cpu::cast_back(cpu::from_f32(d, [n, v]), dtype)
    }
}

impl SwigluBackend for Flex {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let dtype = gate.dtype();
        let shape = gate.shape();
        let (gate, up) = (cpu::f32_dense(gate), cpu::f32_dense(up));
        let mut y = vec![0f32; shape.num_elements()];
        y.par_chunks_mut(FLAT_CHUNK)
            .zip(cpu::read(&gate).par_chunks(FLAT_CHUNK))
            .zip(cpu::read(&up).par_chunks(FLAT_CHUNK))
            .for_each(|((y, g), u)| {
                for ((o, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *o = cpu::silu_sigmoid(g).0 * u;
                }
            });
        cpu::cast_back(cpu::from_f32(y, shape), dtype)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dtype = gate.dtype();
        let shape = gate.shape();
        let (gate, up, grad) = (
            cpu::f32_dense(gate),
            cpu::f32_dense(up),
            cpu::f32_dense(grad),
        );
        let len = shape.num_elements();
        let (mut dg, mut du) = (vec![0f32; len], vec![0f32; len]);
        dg.par_chunks_mut(FLAT_CHUNK)
            .zip(du.par_chunks_mut(FLAT_CHUNK))
            .zip(cpu::read(&gate).par_chunks(FLAT_CHUNK))
            .zip(cpu::read(&up).par_chunks(FLAT_CHUNK))
            .zip(cpu::read(&grad).par_chunks(FLAT_CHUNK))
            .for_each(|((((dg, du), g), u), dy)| {
                for i in 0..g.len() {
                    let (silu, s) = cpu::silu_sigmoid(g[i]);
                    // d silu / dg = s · (1 + g · (1 − s))
                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    du[i] = dy[i] * silu;
                }
            });
        (
            cpu::cast_back(cpu::from_f32(dg, shape.clone()), dtype),
            cpu::cast_back(cpu::from_f32(du, shape), dtype),
        )
    }
}

/// Rows of the last dimension per parallel task: about [`FLAT_CHUNK`] elements.
fn rows_per_task(width: usize) -> usize {
    (FLAT_CHUNK / width.max(1)).max(1)
}

impl MaskedSoftmaxBackend for Flex {
    fn masked_softmax(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let dtype = scores.dtype();
        let shape = scores.shape();
        let [b, h, g, s, k] = shape.dims::<5>();
        let mask_rows = mask.shape()[0];
        assert!(
            mask.shape().dims::<5>() == [mask_rows, 1, 1, s, k]
                && (mask_rows == 1 || mask_rows == b),
            "mask {:?} does not fit scores {:?}",
            mask.shape(),
            shape
        );
        let (scores, mask) = (cpu::f32_dense(scores), cpu::f32_dense(mask));
        let mask = cpu::read(&mask);
        let mut p = vec![0f32; shape.num_elements()];
        if k > 0 {
            let per = rows_per_task(k);
            p.par_chunks_mut(per * k)
                .zip(cpu::read(&scores).par_chunks(per * k))
                .enumerate()
                .for_each(|(task, (prows, xrows))| {
                    for (i, (pr, xr)) in prows.chunks_mut(k).zip(xrows.chunks(k)).enumerate() {
                        let row = task * per + i;
                        // Row = ((batch · h + head) · g + group) · s + query.
                        let batch = if mask_rows == 1 { 0 } else { row / (h * g * s) };
                        let mr = &mask[(batch * s + row % s) * k..][..k];
                        let mut m = f32::NEG_INFINITY;
                        for ((o, &x), &a) in pr.iter_mut().zip(xr).zip(mr) {
                            *o = x * scale + a;
                            m = m.max(*o);
                        }
                        let mut sum = 0f32;
                        for o in pr.iter_mut() {
                            *o = (*o - m).exp();
                            sum += *o;
                        }
                        let inv = 1.0 / sum;
                        pr.iter_mut().for_each(|o| *o *= inv);
                    }
                });
        }
        cpu::cast_back(cpu::from_f32(p, shape), dtype)
    }

    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let dtype = probs.dtype();
        let shape = probs.shape();
        let k = shape[shape.num_dims() - 1];
        let (probs, grad) = (cpu::f32_dense(probs), cpu::f32_dense(grad));
        let mut d = vec![0f32; shape.num_elements()];
        if k > 0 {
            let per = rows_per_task(k) * k;
            d.par_chunks_mut(per)
                .zip(cpu::read(&probs).par_chunks(per))
                .zip(cpu::read(&grad).par_chunks(per))
                .for_each(|((drows, prows), grows)| {
                    for ((dr, pr), gr) in drows
                        .chunks_mut(k)
                        .zip(prows.chunks(k))
                        .zip(grows.chunks(k))
                    {
                        let dot: f32 = pr.iter().zip(gr).map(|(p, g)| p * g).sum();
                        for ((o, &p), &g) in dr.iter_mut().zip(pr).zip(gr) {
                            *o = scale * p * (g - dot);
                        }
                    }
                });
        }
        cpu::cast_back(cpu::from_f32(d, shape), dtype)
    }
}

/// The value of a `[1]` control tensor (on the CPU backend: no device to wait for).
fn scalar(t: FloatTensor<Flex>) -> f32 {
    cpu::read(&cpu::f32_dense(t))
        .first()
        .copied()
        .unwrap_or(0.0)
}

/// The gradient's factor of an update under `probe` (see [`super::optim_step`]'s header), or
/// `None` when the probe is not finite and the update is skipped.
fn factor(probe: FloatTensor<Flex>, grad_scale: f32, max_grad_norm: f32) -> Option<f32> {
    let p = scalar(probe);
    if !p.is_finite() {
        return None;
    }
    let norm = p.sqrt();
    Some(if max_grad_norm > 0.0 && norm > max_grad_norm {
        grad_scale * (max_grad_norm / (norm + 1e-6))
    } else {
        grad_scale
    })
}

impl OptimStepBackend for Flex {
    fn step_probe(norm2: FloatTensor<Self>, total: FloatTensor<Self>) -> FloatTensor<Self> {
        super::optim_step::reference_probe::<Self>(norm2, total)
    }

    fn rmsprop_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probe: FloatTensor<Self>,
        c: RmspropCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // A skipped update keeps both as they are.
        let Some(s) = factor(probe, c.grad_scale, c.max_grad_norm) else {
            return (w, v);
        };
        // In place where the buffers are not shared (the optimizer owns its state; the weight's
        // buffer is still the parameter's, so it is copied once, as burn's own ops would).
        let (mut w, g, mut v) = (cpu::f32_dense(w), cpu::f32_dense(g), cpu::f32_dense(v));
        cpu::write(&mut w)
            .par_chunks_mut(FLAT_CHUNK)
            .zip(cpu::write(&mut v).par_chunks_mut(FLAT_CHUNK))
            .zip(cpu::read(&g).par_chunks(FLAT_CHUNK))
            .for_each(|((w, v), g)| {
                for i in 0..w.len() {
                    let g = g[i] * s + c.weight_decay * w[i];
                    v[i] = c.alpha * v[i] + (1.0 - c.alpha) * g * g;
                    w[i] -= c.lr * g / (v[i].sqrt() + c.eps);
                }
            });
        (w, v)
    }

    fn adamw_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probe: FloatTensor<Self>,
        c: AdamwCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let Some(s) = factor(probe, c.grad_scale, c.max_grad_norm) else {
            return (w, m, v);
        };
        let (mut w, g) = (cpu::f32_dense(w), cpu::f32_dense(g));
        let (mut m, mut v) = (cpu::f32_dense(m), cpu::f32_dense(v));
        cpu::write(&mut w)
            .par_chunks_mut(FLAT_CHUNK)
            .zip(cpu::write(&mut m).par_chunks_mut(FLAT_CHUNK))
            .zip(cpu::write(&mut v).par_chunks_mut(FLAT_CHUNK))
            .zip(cpu::read(&g).par_chunks(FLAT_CHUNK))
            .for_each(|(((w, m), v), g)| {
                for i in 0..w.len() {
                    let g = g[i] * s;
                    m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
                    v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
                    let decayed = w[i] * (1.0 - c.lr * c.weight_decay);
                    w[i] = decayed - c.lr * (m[i] / c.bias1) / ((v[i] / c.bias2).sqrt() + c.eps);
                }
            });
        (w, m, v)
    }

    fn sum_squares(g: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let g = cpu::f32_dense(g);
        let total: f64 = cpu::read(&g)
            .par_chunks(FLAT_CHUNK)
            .map(|c| {
                c.iter()
                    .map(|&x| {
                        let x = (x * scale) as f64;
                        x * x
                    })
                    .sum::<f64>()
            })
            .sum();
        cpu::from_f32(vec![total as f32], [1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sum_keeps_tiny_terms() {
        // One term 1, 49151 terms e^-20 each: their sum (~1e-4) is below f32's ulp at 1 only
        // when added one by one to 1 in f32.
        let mut row = vec![-20f32; 49152];
        row[7] = 0.0;
        let (m, s) = max_and_sum(&row);
        assert_eq!(m, 0.0);
        let want = 1.0 + 49151.0 * (-20f64).exp();
        assert!((s - want).abs() < 1e-9, "{s} vs {want}");
    }
}

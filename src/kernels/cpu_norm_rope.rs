//! The training step's RMSNorm and RoPE on the CPU backend, forward and backward, as Rust loops
//! over rows on all cores: the CPU half of [`super::norm_train`] and [`super::rope_train`] (whose
//! burn-ops twins define them; `tests/kernels_norm_rope.rs` holds both to f64 references).
//!
//! burn's CPU backend runs each op of the naive norm and rotation on one thread, one pass over
//! memory per op; each function here is one parallel pass computing in f32, with the roundings to
//! x's dtype the model's ops make (see `norm_train`'s header).

use burn::backend::tensor::FloatTensor;
use burn::backend::{DType, Flex, TensorMetadata};
use rayon::prelude::*;

use super::cpu::{self, dot_f32};
use super::norm_train::{RmsNormTrainBackend, rows_and_width};
use super::rope_train::{HeadsLayout, RopeTrainBackend};

/// Elements per parallel task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 15;

/// Rows of `width` per parallel task: about [`CHUNK`] elements.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// Rounding of an f32 value to `dtype` (the casts of the model's ops), identity for f32.
fn rounder(dtype: DType) -> fn(f32) -> f32 {
    match dtype {
        DType::F16 => |v| half::f16::from_f32(v).to_f32(),
        DType::BF16 => |v| half::bf16::from_f32(v).to_f32(),
        _ => |v| v,
    }
}

/// The factor each normalised column is multiplied by: `offset + w` in f32, or `w` rounded to
/// x's dtype (Llama casts the weight to the activations' dtype).
fn factors(w: &[f32], offset: f32, round: fn(f32) -> f32) -> Vec<f32> {
    if offset != 0.0 {
        w.iter().map(|&v| offset + v).collect()
    } else {
        w.iter().map(|&v| round(v)).collect()
    }
}

impl RmsNormTrainBackend for Flex {
    fn rms_norm_train(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
        offset: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dtype, shape) = (x.dtype(), x.shape());
        let (rows, n) = rows_and_width(&shape);
        let round = rounder(dtype);
        let (x, w) = (cpu::f32_dense(x), cpu::f32_dense(w));
        let f = factors(cpu::read(&w), offset, round);
        let mut y = vec![0f32; rows * n];
        let mut inv = vec![0f32; rows];
        if n > 0 {
            let per = rows_per_task(n);
            y.par_chunks_mut(per * n)
                .zip(inv.par_chunks_mut(per))
                .zip(cpu::read(&x).par_chunks(per * n))
                .for_each(|((ys, invs), xs)| {
                    for ((yr, xr), iv) in ys.chunks_mut(n).zip(xs.chunks(n)).zip(invs) {
                        *iv = 1.0 / (dot_f32(xr, xr) / n as f32 + eps).sqrt();
                        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(&f) {
                            *o = if offset != 0.0 {
                                v * *iv * g
                            } else {
                                round(round(v * *iv) * g)
                            };
                        }
                    }
                });
        }
        (
            cpu::cast_back(cpu::from_f32(y, shape), dtype),
            cpu::from_f32(inv, [rows]),
        )
    }

    fn rms_norm_train_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        inv: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        offset: f32,
        weight_grad: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dtype, wdtype, shape) = (x.dtype(), w.dtype(), x.shape());
        let (rows, n) = rows_and_width(&shape);
        let round = rounder(dtype);
        let (x, w) = (cpu::f32_dense(x), cpu::f32_dense(w));
        let (inv, grad) = (cpu::f32_dense(inv), cpu::f32_dense(grad));
        let f = factors(cpu::read(&w), offset, round);
        let mut dx = vec![0f32; rows * n];
        let mut dw = vec![0f32; n];
        if n > 0 {
            let per = rows_per_task(n);
            // Each task's share of dw, summed below in task order (no shared accumulator).
            let parts: Vec<Vec<f32>> = dx
                .par_chunks_mut(per * n)
                .zip(cpu::read(&x).par_chunks(per * n))
                .zip(cpu::read(&grad).par_chunks(per * n))
                .zip(cpu::read(&inv).par_chunks(per))
                .map(|(((dxs, xs), gs), invs)| {
                    let mut part = vec![0f32; if weight_grad { n } else { 0 }];
                    for (((dr, xr), gr), &iv) in dxs
                        .chunks_mut(n)
                        .zip(xs.chunks(n))
                        .zip(gs.chunks(n))
                        .zip(invs)
                    {
                        let mut dot = 0f32;
                        for ((&v, &g), &c) in xr.iter().zip(gr).zip(&f) {
                            dot += g * c * v * iv;
                        }
                        let mean = dot / n as f32;
                        for i in 0..n {
                            let normed = xr[i] * iv;
                            dr[i] = iv * (gr[i] * f[i] - normed * mean);
                            if !weight_grad {
                                continue;
                            }
                            let multiplied = if offset != 0.0 { normed } else { round(normed) };
                            part[i] += gr[i] * multiplied;
                        }
                    }
                    part
                })
                .collect();
            for part in parts {
                dw.iter_mut().zip(part).for_each(|(d, p)| *d += p);
            }
        }
        (
            cpu::cast_back(cpu::from_f32(dx, shape), dtype),
            cpu::cast_back(cpu::from_f32(dw, [n]), wdtype),
        )
    }
}

impl RopeTrainBackend for Flex {
    fn rope_train(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        inverse: bool,
        x_layout: HeadsLayout,
        y_layout: HeadsLayout,
    ) -> FloatTensor<Self> {
        let (dtype, x_shape) = (x.dtype(), x.shape());
        // Logical dims (b, h, s, d); `[n1, n2]` are x's dims 1 and 2, `[m1, m2]` y's.
        let [b, n1, n2, d] = x_shape.dims::<4>();
        let x_seq_first = x_layout == HeadsLayout::Bshd;
        let y_seq_first = y_layout == HeadsLayout::Bshd;
        let (h, s) = if x_seq_first { (n2, n1) } else { (n1, n2) };
        let (m1, m2) = if y_seq_first { (s, h) } else { (h, s) };
        let half = d / 2;
        let angle_rows = cos.shape()[0];
        assert!(
            cos.shape().dims::<4>() == [angle_rows, 1, s, half]
                && sin.shape() == cos.shape()
                && (angle_rows == 1 || angle_rows == b),
            "rope angles {:?} do not fit x {:?}",
            cos.shape(),
            x_shape
        );
        // The model's angles are in x's dtype already; read as f32 like every operand here. x is
        // dense in its own layout (a projection's heads are), so the only copy is of a view.
        let (x, cos, sin) = (cpu::f32_dense(x), cpu::f32_dense(cos), cpu::f32_dense(sin));
        let (xs, cos, sin) = (cpu::read(&x), cpu::read(&cos), cpu::read(&sin));
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x_shape.num_elements()];
        if d > 0 {
            let per = rows_per_task(d);
            y.par_chunks_mut(per * d)
                .enumerate()
                .for_each(|(task, ys)| {
                    for (i, yr) in ys.chunks_mut(d).enumerate() {
                        // y's row = (batch · m1 + a1) · m2 + a2, in y's layout.
                        let row = task * per + i;
                        let (a2, a1, batch) = (row % m2, (row / m2) % m1, row / (m1 * m2));
                        let (hi, si) = if y_seq_first { (a2, a1) } else { (a1, a2) };
                        let (r1, r2) = if x_seq_first { (si, hi) } else { (hi, si) };
                        let xr = &xs[((batch * n1 + r1) * n2 + r2) * d..][..d];
                        let ab = if angle_rows == 1 { 0 } else { batch };
                        let at = (ab * s + si) * half;
                        let (c, sn) = (&cos[at..at + half], &sin[at..at + half]);
                        let (x1, x2) = xr.split_at(half);
                        let (y1, y2) = yr.split_at_mut(half);
                        for k in 0..half {
                            let sk = sign * sn[k];
                            y1[k] = x1[k] * c[k] - x2[k] * sk;
                            y2[k] = x2[k] * c[k] + x1[k] * sk;
                        }
                    }
                });
        }
        cpu::cast_back(cpu::from_f32(y, [b, m1, m2, d]), dtype)
    }
}

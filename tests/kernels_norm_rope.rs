//! The training step's fused RMSNorm (`rms_norm_train`) and RoPE (`rope_train`), forward and
//! backward — Rust loops on the CPU backend, WGSL on wgpu (lavapipe here), and the burn-ops twins
//! every other backend runs — against references written here on the host in f64 from their
//! definitions, and their autodiff against burn's autodiff of the naive ops the model used to run.
//! Kernel outputs start as NaN (`set_poison_outputs`), so an element a kernel skips fails.
//!
//! Shapes: widths below, at and not multiples of the kernels' workgroups (17, 96, 1000 for the
//! norm; 7104 rotated pairs for RoPE), more rows than the norm backward's 256 workgroups, batch-
//! shared and per-row angles, a transposed (strided) RoPE input, and RoPE between the layouts
//! (`rope_heads`: a projection's `[B, S, H, D]` heads in, `[B, H, S, D]` out, and the gradient
//! back in `[B, S, H, D]`), through the op and through autodiff from a leaf as the model has it.
//! Tolerances, |Δ| ≤ tol · max(1, |ref|): f32 values 2e-5, the weight gradient (a sum over up to
//! 600 rows) 1e-4; f16 outputs 4e-3 against f64 (a few f16 roundings), 2e-3 against the twin.

mod common;

use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use common::{Rng, assert_close, devices, floats};
use wgspin::kernels::common::set_poison_outputs;
use wgspin::kernels::norm_train::{
    rms_norm_train, rms_norm_train_grad, rms_norm_train_grad_twin, rms_norm_train_twin,
};
use wgspin::kernels::rope_train::{
    HeadsLayout, rope_heads, rope_heads_grad, rope_layout_twin, rope_train, rope_train_grad,
    rope_train_twin,
};

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// RMSNorm and its gradients in f64 from the definition: `(y, inv, dx, dw)` for rows `x [R, N]`,
/// weight `w`, offset and upstream `g`.
fn norm_ref(x: &[f32], w: &[f32], g: &[f32], n: usize, eps: f64, offset: f64) -> [Vec<f64>; 4] {
    let rows = x.len() / n;
    let (mut y, mut inv, mut dx, mut dw) = (vec![], vec![], vec![], vec![0f64; n]);
    for r in 0..rows {
        let xr = &x[r * n..][..n];
        let gr = &g[r * n..][..n];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let iv = 1.0 / (ms + eps).sqrt();
        inv.push(iv);
        let f = |i: usize| offset + w[i] as f64;
        let normed = |i: usize| xr[i] as f64 * iv;
        let mean = (0..n).map(|i| gr[i] as f64 * f(i) * normed(i)).sum::<f64>() / n as f64;
        for i in 0..n {
            y.push(normed(i) * f(i));
            dx.push(iv * (gr[i] as f64 * f(i) - normed(i) * mean));
            dw[i] += gr[i] as f64 * normed(i);
        }
    }
    [y, inv, dx, dw]
}

#[test]
fn rms_norm_train_matches_its_definition_and_twin() {
    set_poison_outputs(true);
    let mut rng = Rng(61);
    let eps = 1e-6;
    for dev in devices() {
        // [rows, n]: one element; a width under the smallest workgroup; a width below a power of
        // two; a wide row; more rows than the backward's workgroups (each takes several).
        for &(rows, n) in &[(1, 1), (3, 17), (5, 96), (7, 1000), (600, 64)] {
            for offset in [0.0f32, 1.0] {
                let (x, w, g) = (
                    randn(&mut rng, rows * n, 2.0),
                    randn(&mut rng, n, 0.5),
                    randn(&mut rng, rows * n, 1.0),
                );
                let [y, inv, dx, dw] = norm_ref(&x, &w, &g, n, eps, offset as f64);
                // 3-D input: the op norms the last dimension of any rank.
                let t = |v: &[f32]| {
                    Tensor::<3>::from_data(TensorData::new(v.to_vec(), [1, rows, n]), &dev.device)
                };
                let tw = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &dev.device);
                type Fwd = fn(Tensor<3>, Tensor<1>, f64, f32) -> (Tensor<3>, Tensor<1>);
                type Bwd =
                    fn(Tensor<3>, Tensor<1>, Tensor<1>, Tensor<3>, f32) -> (Tensor<3>, Tensor<1>);
                let ops: [(&str, Fwd, Bwd); 2] = [
                    ("op", rms_norm_train, rms_norm_train_grad),
                    ("twin", rms_norm_train_twin, rms_norm_train_grad_twin),
                ];
                for (which, fwd, bwd) in ops {
                    let label =
                        format!("{} {which} [{rows}, {n}] offset {offset}", dev.description);
                    let (got_y, got_inv) = fwd(t(&x), tw.clone(), eps, offset);
                    assert_close(&format!("{label} y"), &floats(got_y), &y, 2e-5);
                    assert_close(
                        &format!("{label} inv"),
                        &floats(got_inv.clone()),
                        &inv,
                        2e-5,
                    );
                    let (got_dx, got_dw) = bwd(t(&x), tw.clone(), got_inv, t(&g), offset);
                    assert_close(&format!("{label} dx"), &floats(got_dx), &dx, 2e-5);
                    assert_close(&format!("{label} dw"), &floats(got_dw), &dw, 1e-4);
                }
            }
        }
    }
    set_poison_outputs(false);
}

/// The model's RmsNorm::forward before this op, in burn ops.
fn naive_norm(x: Tensor<3>, w: Tensor<1>, eps: f64, offset: f32) -> Tensor<3> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let inv = x
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt()
        .recip();
    if offset != 0.0 {
        let w = w.cast(FloatDType::F32).add_scalar(offset);
        return (x * inv * w.unsqueeze::<3>()).cast(FloatDType::from(dtype));
    }
    (x * inv).cast(FloatDType::from(dtype)) * w.cast(FloatDType::from(dtype)).unsqueeze::<3>()
}

#[test]
fn rms_norm_train_autodiff_matches_burns_autodiff() {
    let mut rng = Rng(62);
    let (b, s, n, eps) = (2, 9, 333, 1e-5);
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        for offset in [0.0f32, 1.0] {
            let (x, w, r) = (
                randn(&mut rng, b * s * n, 1.5),
                randn(&mut rng, n, 0.5),
                randn(&mut rng, b * s * n, 1.0),
            );
            let t3 =
                |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [b, s, n]), &device);
            // A frozen weight (LoRA) takes the backward that skips its gradient.
            let grads_of = |fused: bool, train_w: bool| {
                let xt = t3(&x).require_grad();
                let wt = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &device);
                let wt = if train_w { wt.require_grad() } else { wt };
                let y = if fused {
                    rms_norm_train(xt.clone(), wt.clone(), eps, offset).0
                } else {
                    naive_norm(xt.clone(), wt.clone(), eps, offset)
                };
                let grads = (y * t3(&r)).sum().backward();
                let dw = wt.grad(&grads).map(floats);
                (floats(xt.grad(&grads).unwrap()), dw)
            };
            let ((a_x, a_w), (b_x, b_w)) = (grads_of(true, true), grads_of(false, true));
            let (a_w, b_w) = (a_w.unwrap(), b_w.unwrap());
            let (frozen_x, frozen_w) = grads_of(true, false);
            assert!(frozen_w.is_none(), "a frozen weight got a gradient");
            let label = format!("{} offset {offset}", dev.description);
            assert_close(&format!("{label} dx"), &a_x, &wide(&b_x), 2e-5);
            assert_close(&format!("{label} dw"), &a_w, &wide(&b_w), 1e-4);
            assert_close(
                &format!("{label} frozen w dx"),
                &frozen_x,
                &wide(&b_x),
                2e-5,
            );
        }
    }
}

#[test]
fn rms_norm_train_in_f16() {
    set_poison_outputs(true);
    let mut rng = Rng(63);
    let (rows, n, eps) = (37, 200, 1e-6);
    for dev in devices() {
        // f16 activations with an f16 weight, and with f32 master weights (mixed precision).
        for (w_dtype, offset) in [(DType::F16, 0.0f32), (DType::F32, 0.0), (DType::F32, 1.0)] {
            let x = to_f16(&randn(&mut rng, rows * n, 2.0));
            let g = to_f16(&randn(&mut rng, rows * n, 1.0));
            let mut w = randn(&mut rng, n, 0.5);
            if w_dtype == DType::F16 || offset == 0.0 {
                // Llama scales by the weight cast to x's dtype: the reference takes it rounded.
                w = to_f16(&w);
            }
            let [y, _, dx, dw] = norm_ref(&x, &w, &g, n, eps, offset as f64);
            let t = |v: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, n]), &dev.device)
                    .cast(FloatDType::F16)
            };
            let tw = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &dev.device)
                .cast(FloatDType::from(w_dtype));
            let label = format!("{} f16 w {w_dtype:?} offset {offset}", dev.description);
            let (oy, oinv) = rms_norm_train(t(&x), tw.clone(), eps, offset);
            let (ty, tinv) = rms_norm_train_twin(t(&x), tw.clone(), eps, offset);
            assert_eq!(oy.dtype(), DType::F16, "{label}: y dtype");
            let (odx, odw) = rms_norm_train_grad(t(&x), tw.clone(), oinv, t(&g), offset);
            let (tdx, tdw) = rms_norm_train_grad_twin(t(&x), tw.clone(), tinv, t(&g), offset);
            assert_eq!(odw.dtype(), w_dtype, "{label}: dw dtype");
            let (oy, ody, odw) = (floats(oy), floats(odx), floats(odw));
            assert_close(&format!("{label} y"), &oy, &y, 4e-3);
            assert_close(&format!("{label} dx"), &ody, &dx, 4e-3);
            assert_close(&format!("{label} dw"), &odw, &dw, 4e-3);
            assert_close(&format!("{label} y vs twin"), &oy, &wide(&floats(ty)), 2e-3);
            assert_close(
                &format!("{label} dx vs twin"),
                &ody,
                &wide(&floats(tdx)),
                2e-3,
            );
            assert_close(
                &format!("{label} dw vs twin"),
                &odw,
                &wide(&floats(tdw)),
                2e-3,
            );
        }
    }
    set_poison_outputs(false);
}

/// RoPE in f64 from the definition for contiguous `x [B, H, S, D]` and angles `[AB, S, D/2]`;
/// `sign` −1 rotates by the opposite angle.
fn rope_ref(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    [b, h, s, d]: [usize; 4],
    ab: usize,
    sign: f64,
) -> Vec<f64> {
    let half = d / 2;
    let mut y = vec![0f64; x.len()];
    for (bi, hi, si) in
        (0..b).flat_map(|bi| (0..h).flat_map(move |hi| (0..s).map(move |si| (bi, hi, si))))
    {
        let row = ((bi * h + hi) * s + si) * d;
        let a = ((if ab == 1 { 0 } else { bi }) * s + si) * half;
        for i in 0..half {
            let (c, sn) = (cos[a + i] as f64, sign * sin[a + i] as f64);
            let (x1, x2) = (x[row + i] as f64, x[row + half + i] as f64);
            y[row + i] = x1 * c - x2 * sn;
            y[row + half + i] = x2 * c + x1 * sn;
        }
    }
    y
}

fn angles(rng: &mut Rng, ab: usize, s: usize, half: usize) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..ab * s * half)
        .map(|_| rng.uniform() * 20.0 - 10.0)
        .collect();
    (
        a.iter().map(|v| v.cos()).collect(),
        a.iter().map(|v| v.sin()).collect(),
    )
}

#[test]
fn rope_train_matches_its_definition_and_twin() {
    set_poison_outputs(true);
    let mut rng = Rng(64);
    for dev in devices() {
        // 7104 pairs: not a multiple of the 256-invocation workgroup.
        for &([b, h, s, d], ab) in &[([1, 1, 1, 2], 1), ([2, 3, 5, 8], 2), ([2, 3, 37, 64], 1)] {
            let len = b * h * s * d;
            let x = randn(&mut rng, len, 1.0);
            let (cos, sin) = angles(&mut rng, ab, s, d / 2);
            let ta = |v: &[f32]| {
                Tensor::<4>::from_data(TensorData::new(v.to_vec(), [ab, 1, s, d / 2]), &dev.device)
            };
            // x arrives as the model makes it: [B, S, H, D] with heads swapped to [B, H, S, D].
            let mut bshd = vec![0f32; len];
            for (bi, hi, si) in
                (0..b).flat_map(|bi| (0..h).flat_map(move |hi| (0..s).map(move |si| (bi, hi, si))))
            {
                let (from, to) = (((bi * h + hi) * s + si) * d, ((bi * s + si) * h + hi) * d);
                bshd[to..to + d].copy_from_slice(&x[from..from + d]);
            }
            let strided = || {
                Tensor::<4>::from_data(TensorData::new(bshd.clone(), [b, s, h, d]), &dev.device)
                    .swap_dims(1, 2)
            };
            let want = rope_ref(&x, &cos, &sin, [b, h, s, d], ab, 1.0);
            let want_back = rope_ref(&x, &cos, &sin, [b, h, s, d], ab, -1.0);
            let label = format!("{} [{b}, {h}, {s}, {d}] angles {ab}", dev.description);
            let got = floats(rope_train(strided(), ta(&cos), ta(&sin)));
            assert_close(&format!("{label} op"), &got, &want, 2e-5);
            let got = floats(rope_train_grad(strided(), ta(&cos), ta(&sin)));
            assert_close(&format!("{label} op backward"), &got, &want_back, 2e-5);
            let got = floats(rope_train_twin(strided(), ta(&cos), ta(&sin), false));
            assert_close(&format!("{label} twin"), &got, &want, 2e-5);
            let got = floats(rope_train_twin(strided(), ta(&cos), ta(&sin), true));
            assert_close(&format!("{label} twin backward"), &got, &want_back, 2e-5);

            // f16 (x and angles, as the model's compute dtype makes them).
            let (x16, c16, s16) = (to_f16(&x), to_f16(&cos), to_f16(&sin));
            let want = rope_ref(&x16, &c16, &s16, [b, h, s, d], ab, 1.0);
            let h16 = |t: Tensor<4>| t.cast(FloatDType::F16);
            let xt =
                Tensor::<4>::from_data(TensorData::new(x16.clone(), [b, h, s, d]), &dev.device);
            let got = rope_train(h16(xt), h16(ta(&c16)), h16(ta(&s16)));
            assert_eq!(got.dtype(), DType::F16, "{label}: f16 output");
            assert_close(&format!("{label} f16"), &floats(got), &want, 4e-3);
        }
    }
    set_poison_outputs(false);
}

/// The model's rope::apply before this op, in burn ops.
fn naive_rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let x2 = x.slice([0..b, 0..h, 0..s, d / 2..d]);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    Tensor::cat(vec![r1, r2], 3)
}

#[test]
fn rope_train_autodiff_matches_burns_autodiff() {
    let mut rng = Rng(65);
    let [b, h, s, d] = [2, 4, 11, 16];
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        let x = randn(&mut rng, b * h * s * d, 1.0);
        let r = randn(&mut rng, b * h * s * d, 1.0);
        let (cos, sin) = angles(&mut rng, b, s, d / 2);
        let t4 = |v: &[f32], shape: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), &device)
        };
        let grads_of = |fused: bool| {
            let xt = t4(&x, [b, h, s, d]).require_grad();
            let (c, sn) = (t4(&cos, [b, 1, s, d / 2]), t4(&sin, [b, 1, s, d / 2]));
            // Twice, as attention rotates q and k: gradients through both accumulate.
            let y = if fused {
                rope_train(xt.clone(), c.clone(), sn.clone()) * 2.0 + rope_train(xt.clone(), c, sn)
            } else {
                naive_rope(xt.clone(), c.clone(), sn.clone()) * 2.0 + naive_rope(xt.clone(), c, sn)
            };
            let grads = (y * t4(&r, [b, h, s, d])).sum().backward();
            floats(xt.grad(&grads).unwrap())
        };
        let (a, n) = (grads_of(true), grads_of(false));
        assert_close(&format!("{} rope dx", dev.description), &a, &wide(&n), 2e-5);
    }
}

/// `v` `[B, N1, N2, D]` with dims 1 and 2 swapped (a `[B, H, S, D]` tensor as `[B, S, H, D]` and
/// back), on the host.
fn swap12<T: Copy + Default>(v: &[T], [b, n1, n2, d]: [usize; 4]) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for (bi, i1, i2) in
        (0..b).flat_map(|bi| (0..n1).flat_map(move |i1| (0..n2).map(move |i2| (bi, i1, i2))))
    {
        let (from, to) = (
            ((bi * n1 + i1) * n2 + i2) * d,
            ((bi * n2 + i2) * n1 + i1) * d,
        );
        out[to..to + d].copy_from_slice(&v[from..from + d]);
    }
    out
}

#[test]
fn rope_heads_reads_and_writes_the_projection_layout() {
    use HeadsLayout::{Bhsd, Bshd};
    set_poison_outputs(true);
    let mut rng = Rng(66);
    for dev in devices() {
        for &([b, h, s, d], ab) in &[([1, 1, 1, 2], 1), ([2, 3, 5, 8], 2), ([2, 3, 37, 64], 1)] {
            let len = b * h * s * d;
            let x = randn(&mut rng, len, 1.0); // [B, H, S, D]
            let (cos, sin) = angles(&mut rng, ab, s, d / 2);
            let ta = |v: &[f32]| {
                Tensor::<4>::from_data(TensorData::new(v.to_vec(), [ab, 1, s, d / 2]), &dev.device)
            };
            let t4 = |v: Vec<f32>, shape: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(v, shape), &dev.device)
            };
            let bshd = swap12(&x, [b, h, s, d]);
            let want = rope_ref(&x, &cos, &sin, [b, h, s, d], ab, 1.0);
            // The backward written in the projection's layout, [B, S, H, D].
            let want_back = swap12(
                &rope_ref(&x, &cos, &sin, [b, h, s, d], ab, -1.0),
                [b, h, s, d],
            );
            let label = format!("{} heads [{b}, {h}, {s}, {d}] angles {ab}", dev.description);
            let angles = || [ta(&cos), ta(&sin)];

            // Contiguous [B, S, H, D] in (the model's projection), [B, H, S, D] out.
            let y = rope_heads(t4(bshd.clone(), [b, s, h, d]), ta(&cos), ta(&sin));
            assert_eq!(y.dims(), [b, h, s, d], "{label}: output dims");
            assert_close(&format!("{label} op"), &floats(y), &want, 2e-5);
            let y = rope_layout_twin(t4(bshd.clone(), [b, s, h, d]), angles(), false, Bshd, Bhsd);
            assert_close(&format!("{label} twin"), &floats(y), &want, 2e-5);
            // The same input as a strided view ([B, H, S, D] memory seen as [B, S, H, D]).
            let view = || t4(x.clone(), [b, h, s, d]).swap_dims(1, 2);
            let y = rope_heads(view(), ta(&cos), ta(&sin));
            assert_close(&format!("{label} op, strided x"), &floats(y), &want, 2e-5);

            // Backward: contiguous [B, H, S, D] gradient in, [B, S, H, D] out.
            let g = rope_heads_grad(t4(x.clone(), [b, h, s, d]), ta(&cos), ta(&sin));
            assert_eq!(g.dims(), [b, s, h, d], "{label}: backward dims");
            assert_close(
                &format!("{label} op backward"),
                &floats(g),
                &want_back,
                2e-5,
            );
            let g = rope_layout_twin(t4(x.clone(), [b, h, s, d]), angles(), true, Bhsd, Bshd);
            assert_close(
                &format!("{label} twin backward"),
                &floats(g),
                &want_back,
                2e-5,
            );
            // A strided gradient (a [B, S, H, D] tensor seen as [B, H, S, D]).
            let strided = t4(bshd.clone(), [b, s, h, d]).swap_dims(1, 2);
            let g = rope_heads_grad(strided, ta(&cos), ta(&sin));
            assert_close(
                &format!("{label} op backward, strided"),
                &floats(g),
                &want_back,
                2e-5,
            );

            // f16, as the model's compute dtype makes x and the angles.
            let (x16, c16, s16) = (to_f16(&x), to_f16(&cos), to_f16(&sin));
            let want = rope_ref(&x16, &c16, &s16, [b, h, s, d], ab, 1.0);
            let h16 = |t: Tensor<4>| t.cast(FloatDType::F16);
            let xt = h16(t4(swap12(&x16, [b, h, s, d]), [b, s, h, d]));
            let got = rope_heads(xt, h16(ta(&c16)), h16(ta(&s16)));
            assert_eq!(got.dtype(), DType::F16, "{label}: f16 output");
            assert_close(&format!("{label} f16"), &floats(got), &want, 4e-3);
        }
    }
    set_poison_outputs(false);
}

/// The gradient of `Σ (rope(x) · r)` for x a strided view of a leaf, as the model makes it: the
/// leaf `[B, S, H·D]` (a projection's output) reshaped to heads, then rotated by `rope_train` of
/// its `swap_dims(1, 2)` view, by `rope_heads` of it directly, or by burn's autodiff of the naive
/// ops; against the f64 reference (the rotation by −angle of r, in the leaf's layout).
#[test]
fn rope_gradients_through_views_of_a_leaf() {
    let mut rng = Rng(67);
    let [b, h, s, d] = [2, 3, 13, 16];
    for dev in devices() {
        let device = dev.device.clone().autodiff();
        let x = randn(&mut rng, b * s * h * d, 1.0); // [B, S, H·D]
        let r = randn(&mut rng, b * h * s * d, 1.0); // [B, H, S, D]
        let (cos, sin) = angles(&mut rng, b, s, d / 2);
        let t = |v: &[f32], shape: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), &device)
        };
        let x_bhsd = swap12(&x, [b, s, h, d]);
        let want_y = rope_ref(&x_bhsd, &cos, &sin, [b, h, s, d], b, 1.0);
        let want_dx = swap12(
            &rope_ref(&r, &cos, &sin, [b, h, s, d], b, -1.0),
            [b, h, s, d],
        );
        for which in ["rope_train of the view", "rope_heads", "naive ops"] {
            let leaf = Tensor::<3>::from_data(TensorData::new(x.clone(), [b, s, h * d]), &device)
                .require_grad();
            let heads = leaf.clone().reshape([b, s, h, d]);
            let (c, sn) = (t(&cos, [b, 1, s, d / 2]), t(&sin, [b, 1, s, d / 2]));
            let y = match which {
                "rope_heads" => rope_heads(heads, c, sn),
                "naive ops" => naive_rope(heads.swap_dims(1, 2), c, sn),
                _ => rope_train(heads.swap_dims(1, 2), c, sn),
            };
            let label = format!("{} {which}", dev.description);
            assert_close(&format!("{label} y"), &floats(y.clone()), &want_y, 2e-5);
            let grads = (y * t(&r, [b, h, s, d])).sum().backward();
            let dx = leaf.grad(&grads).expect("the leaf has a gradient");
            assert_close(&format!("{label} dx"), &floats(dx), &want_dx, 2e-5);
        }
    }
}

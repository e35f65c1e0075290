//! The decode step's other kernels against references computed here on the host in f64:
//! - RoPE + KV-cache write (WGSL on wgpu, Rust on the CPU backend) and its burn-ops twin: q
//!   rotated, k rotated and v written at exactly column pos[b] of each row, every other cache
//!   element unchanged, rows outside the cache writing nothing, a shared cache never modified;
//! - residual add + RMSNorm (WGSL, Rust) and the model's burn-ops norm as its twin, in f32 and in
//!   f16 (statistics in f32, the stream rounded to f16 before it is normed);
//! - the CPU backend's few-rows matmul `x · wᵀ` at row counts around its limits, inner sizes that
//!   are not multiples of its 8 lanes, one thread and several; the WGSL one in f32 and f16, and
//!   its f32-output form (the lm_head of an f16 decode step).

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use wgspin::kernels::common::set_poison_outputs;
use wgspin::kernels::rope_cache::{RopeInputs, rope_cache_write, rope_cache_write_twin};
use wgspin::kernels::rows_matmul::{MAX_ROWS, MIN_WEIGHT, rows_matmul};

struct Rope {
    b: usize,
    h: usize,
    hkv: usize,
    c: usize,
    d: usize,
}

/// (q, k cache, v cache) after the step, in f64, from the op's definition; `norms` are the
/// per-head q/k norms' factors and eps.
fn rope_reference(
    s: &Rope,
    x: &[f32],
    bias: &[f32],
    pos: &[i64],
    tables: (&[f32], &[f32]),
    caches: (&[f32], &[f32]),
    norms: Option<(&[f32], &[f32], f64)>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Rope { b, h, hkv, c, d } = *s;
    let row = (h + 2 * hkv) * d;
    let (cos, sin) = tables;
    let mut q = vec![0.0; b * h * d];
    let mut kc: Vec<f64> = caches.0.iter().map(|&a| a as f64).collect();
    let mut vc: Vec<f64> = caches.1.iter().map(|&a| a as f64).collect();
    for r in 0..b {
        let p = pos[r] as usize;
        let t = p.min(c - 1) * d;
        let val = |i: usize| x[r * row + i] as f64 + bias[i] as f64;
        // q and k heads normed over their d values first, when the op norms them.
        let normed = |head: usize, i: usize| match norms {
            Some((qn, kn, eps)) => {
                let ms = (0..d).map(|j| val(head * d + j).powi(2)).sum::<f64>() / d as f64;
                let w = if head < h { qn[i] } else { kn[i] } as f64;
                val(head * d + i) / (ms + eps).sqrt() * w
            }
            None => val(head * d + i),
        };
        let rotated = |head: usize, i: usize| {
            let partner = if i < d / 2 { i + d / 2 } else { i - d / 2 };
            normed(head, i) * cos[t + i] as f64 + normed(head, partner) * sin[t + i] as f64
        };
        for head in 0..h {
            for i in 0..d {
                q[(r * h + head) * d + i] = rotated(head, i);
            }
        }
        if p >= c {
            continue;
        }
        for g in 0..hkv {
            for i in 0..d {
                let at = ((r * hkv + g) * c + p) * d + i;
                kc[at] = rotated(h + g, i);
                vc[at] = val((h + hkv + g) * d + i);
            }
        }
    }
    (q, kc, vc)
}

#[test]
fn rope_cache_write_matches_reference_and_twin() {
    set_poison_outputs(true);
    let mut rng = Rng(41);
    let cases = [
        Rope {
            b: 3,
            h: 4,
            hkv: 4,
            c: 256,
            d: 16,
        },
        Rope {
            b: 5,
            h: 9,
            hkv: 3,
            c: 256,
            d: 64,
        },
        Rope {
            b: 2,
            h: 14,
            hkv: 2,
            c: 512,
            d: 128,
        },
        // Gemma 3's head_dim: the norm's workgroup strides over four values per invocation.
        Rope {
            b: 2,
            h: 4,
            hkv: 1,
            c: 256,
            d: 256,
        },
    ];
    for dev in devices() {
        let device = &dev.device;
        for (case, normed) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
            let Rope { b, h, hkv, c, d } = *case;
            let row = (h + 2 * hkv) * d;
            let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal()).collect() };
            let (x, bias) = (normal(b * row), normal(row));
            let (cos, sin) = (normal(c * d), normal(c * d));
            let (k0, v0) = (normal(b * hkv * c * d), normal(b * hkv * c * d));
            // Ragged positions: 0, the last column, and (where there are rows) one past it.
            let pos: Vec<i64> = (0..b)
                .map(|i| match i {
                    0 => 0,
                    1 => c as i64 - 1,
                    2 if b > 3 => c as i64,
                    _ => (rng.next() % c as u64) as i64,
                })
                .collect();
            // Norm factors around 1 (as trained norms are), eps as Qwen3's.
            let (qn, kn): (Vec<f32>, Vec<f32>) = (0..d)
                .map(|_| (1.0 + 0.3 * rng.normal(), 1.0 + 0.3 * rng.normal()))
                .unzip();
            let eps = 1e-6;
            let norms = normed.then_some((qn.as_slice(), kn.as_slice(), eps));
            let (q_want, k_want, v_want) =
                rope_reference(case, &x, &bias, &pos, (&cos, &sin), (&k0, &v0), norms);
            let inputs = || RopeInputs {
                qkv: Tensor::from_data(TensorData::new(x.clone(), [b, row]), device),
                bias: Tensor::from_data(TensorData::new(bias.clone(), [row]), device),
                pos: Tensor::<1, Int>::from_data(TensorData::new(pos.clone(), [b]), device),
                cos: Tensor::from_data(TensorData::new(cos.clone(), [c, d]), device),
                sin: Tensor::from_data(TensorData::new(sin.clone(), [c, d]), device),
                heads: h,
                qk_norm: normed.then(|| {
                    (
                        Tensor::from_data(TensorData::new(qn.clone(), [d]), device),
                        Tensor::from_data(TensorData::new(kn.clone(), [d]), device),
                        eps,
                    )
                }),
            };
            let cache = |v: &[f32]| {
                Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, hkv, c, d]), device)
            };
            let label = format!(
                "{} b={b} h={h} hkv={hkv} c={c} d={d} qk_norm={normed}",
                dev.description
            );

            // The kernel on caches it owns.
            let (q, k, v) = rope_cache_write(inputs(), cache(&k0), cache(&v0));
            assert_close(&format!("{label} q"), &floats(q), &q_want, 1e-5);
            assert_close(&format!("{label} k cache"), &floats(k), &k_want, 1e-5);
            assert_close(&format!("{label} v cache"), &floats(v), &v_want, 1e-6);

            // A cache someone else still holds is left as it was.
            let (k_held, v_held) = (cache(&k0), cache(&v0));
            let (_, k, _) = rope_cache_write(inputs(), k_held.clone(), v_held.clone());
            assert_close(
                &format!("{label} k cache (shared)"),
                &floats(k),
                &k_want,
                1e-5,
            );
            let unchanged: Vec<f64> = k0.iter().map(|&a| a as f64).collect();
            assert_close(&format!("{label} held k"), &floats(k_held), &unchanged, 0.0);
            let unchanged: Vec<f64> = v0.iter().map(|&a| a as f64).collect();
            assert_close(&format!("{label} held v"), &floats(v_held), &unchanged, 0.0);

            // The twin clamps positions into the cache, so it is compared on in-cache rows only.
            if pos.iter().all(|&p| (p as usize) < c) {
                let (q, k, v) = rope_cache_write_twin(inputs(), cache(&k0), cache(&v0));
                assert_close(&format!("{label} twin q"), &floats(q), &q_want, 1e-5);
                assert_close(&format!("{label} twin k"), &floats(k), &k_want, 1e-5);
                assert_close(&format!("{label} twin v"), &floats(v), &v_want, 1e-6);
            }
        }
    }
    set_poison_outputs(false);
}

/// `x [m, k] · w [n, k]ᵀ` in f64.
fn matmul_reference(x: &[f32], w: &[f32], [m, k, n]: [usize; 3]) -> Vec<f64> {
    (0..m * n)
        .map(|i| {
            let (r, j) = (i / n, i % n);
            (0..k)
                .map(|t| x[r * k + t] as f64 * w[j * k + t] as f64)
                .sum()
        })
        .collect()
}

#[test]
fn rows_matmul_matches_host_reference_and_twin() {
    use burn::tensor::DType;
    use wgspin::kernels::common::f16_kernel_available;
    use wgspin::kernels::rows_matmul::{
        COLS, RowsPath, rows_gated, rows_gated_twin, rows_matmul_f32, rows_matmul_twin, rows_path,
    };
    let mut rng = Rng(43);
    set_poison_outputs(true);
    for dev in devices() {
        let device = &dev.device;
        // The CPU kernel runs for weights of at least MIN_WEIGHT elements, the WGSL one for k a
        // multiple of 4; both up to MAX_ROWS rows. n is often not a multiple of COLS (a partial
        // last workgroup). On wgpu only kernel shapes run: the twin's autotuning per shape
        // would only slow the software device down.
        let cases: &[(usize, usize, usize)] = if dev.is_gpu {
            &[
                (1, 64, 5),
                (3, 96, 400),
                (8, 576, 243),
                (MAX_ROWS, 4, 3 * COLS + 1),
            ]
        } else {
            &[
                (1, 67, 2000),
                (3, 576, 240),
                (8, 1000, 2000),
                (MAX_ROWS, 515, 300),
                (MAX_ROWS + 1, 576, 300),
                (2, 64, 5),
            ]
        };
        for &(m, k, n) in cases {
            let x: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
            let want = matmul_reference(&x, &w, [m, k, n]);
            let round = |v: &[f32]| -> Vec<f32> {
                v.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect()
            };
            let want_f16 = matmul_reference(&round(&x), &round(&w), [m, k, n]);
            let xt = Tensor::<2>::from_data(TensorData::new(x, [m, k]), device);
            let wt = Tensor::<2>::from_data(TensorData::new(w, [n, k]), device);
            let label = format!("{} m={m} k={k} n={n}", dev.description);
            let expected = if m > MAX_ROWS {
                RowsPath::Twin
            } else if dev.is_gpu {
                RowsPath::Wgsl
            } else if n * k >= MIN_WEIGHT {
                RowsPath::Cpu
            } else {
                RowsPath::Twin
            };
            assert_eq!(rows_path(&xt, &wt), expected, "{label}");
            // Sums of k products of unit normals: absolute error scales with √k.
            let tol = 1e-5 * (k as f64).sqrt();
            let got = rows_matmul(xt.clone(), wt.clone());
            assert_eq!(got.dims(), [m, n]);
            assert_close(&label, &floats(got), &want, tol);
            let got = rows_matmul_f32(xt.clone(), wt.clone());
            assert_eq!(got.dtype(), DType::F32);
            assert_close(&format!("{label} f32 out"), &floats(got), &want, tol);
            if !dev.is_gpu {
                let twin = rows_matmul_twin(xt.clone(), wt.clone());
                assert_close(&format!("{label} twin"), &floats(twin), &want, tol);
            }
            // The gated MLP (SiLU, then GELU-tanh) over the same weight read as gate rows then
            // up rows (n even), against float64.
            for gelu in [false, true].into_iter().filter(|_| n % 2 == 0) {
                let half_n = n / 2;
                let act = |g: f64| {
                    if gelu {
                        let c = (2.0 / std::f64::consts::PI).sqrt();
                        0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh())
                    } else {
                        g / (1.0 + (-g).exp())
                    }
                };
                let gated: Vec<f64> = (0..m * half_n)
                    .map(|i| {
                        let (r, j) = (i / half_n, i % half_n);
                        act(want[r * n + j]) * want[r * n + half_n + j]
                    })
                    .collect();
                let got = rows_gated(xt.clone(), wt.clone(), gelu);
                assert_eq!(got.dims(), [m, half_n]);
                // The product of two dots: relative error of either carries over.
                let tol = 4e-5 * (k as f64).sqrt();
                let label = format!("{label} gated gelu={gelu}");
                assert_close(&label, &floats(got), &gated, tol);
                if !dev.is_gpu {
                    let twin = rows_gated_twin(xt.clone(), wt.clone(), gelu);
                    assert_close(&format!("{label} twin"), &floats(twin), &gated, tol);
                }
            }
            if dev.is_gpu && f16_kernel_available(device) {
                let (xh, wh) = (xt.cast(DType::F16), wt.cast(DType::F16));
                assert_eq!(rows_path(&xh, &wh), RowsPath::Wgsl, "{label} f16");
                let got = rows_matmul(xh.clone(), wh.clone());
                assert_eq!(got.dtype(), DType::F16, "{label}: f16 in, f16 out");
                // The same f16-rounded inputs, f32 accumulation, one rounding of the output.
                let tol = 1e-3 + 1e-5 * (k as f64).sqrt();
                assert_close(
                    &format!("{label} f16"),
                    &floats(got.cast(DType::F32)),
                    &want_f16,
                    tol,
                );
                // f32 outputs from f16 operands: no rounding of the output at all.
                let got = rows_matmul_f32(xh, wh);
                assert_eq!(got.dtype(), DType::F32, "{label}: f32 out of f16 operands");
                let tol = 1e-5 * (k as f64).sqrt();
                assert_close(&format!("{label} f16 → f32"), &floats(got), &want_f16, tol);
            }
        }
    }
    set_poison_outputs(false);
}

#[test]
fn add_rms_norm_matches_host_reference_and_twin() {
    use burn::module::Param;
    use wgspin::kernels::norm::{add_rms_norm, norm_add_rms_norm, rms_norm};
    use wgspin::model::layers::RmsNorm;
    set_poison_outputs(true);
    let mut rng = Rng(47);
    for dev in devices() {
        let device = &dev.device;
        // Rows × width: one row, widths below, at and past the kernel's 256 invocations.
        for &(b, n) in &[(1, 64), (5, 256), (3, 576), (9, 1000)] {
            let eps = 1e-5;
            let x: Vec<f32> = (0..b * n).map(|_| rng.normal()).collect();
            let r: Vec<f32> = (0..b * n).map(|_| 3.0 * rng.normal()).collect();
            let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect();
            let h: Vec<f64> = x
                .iter()
                .zip(&r)
                .map(|(&a, &b)| a as f64 + b as f64)
                .collect();
            let norm = |v: &[f64]| rms_norm_f64(v, &w, eps);
            let xs: Vec<f64> = x.iter().map(|&a| a as f64).collect();
            let t2 =
                |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [b, n]), device);
            let wt = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), device);
            let label = format!("{} b={b} n={n}", dev.description);

            let (got_h, got_y) = add_rms_norm(t2(&x), t2(&r), wt.clone(), eps);
            assert_close(&format!("{label} h"), &floats(got_h), &h, 1e-6);
            assert_close(&format!("{label} y"), &floats(got_y), &norm(&h), 1e-5);
            let got = rms_norm(t2(&x), wt.clone(), eps);
            assert_close(&format!("{label} plain y"), &floats(got), &norm(&xs), 1e-5);

            // Sandwich norms: r normed with its own weight before the add.
            let rw: Vec<f32> = (0..n).map(|_| 1.0 + 0.3 * rng.normal()).collect();
            let rws = Tensor::<1>::from_data(TensorData::new(rw.clone(), [n]), device);
            let rs: Vec<f64> = r.iter().map(|&a| a as f64).collect();
            let pre_h: Vec<f64> = rms_norm_f64(&rs, &rw, eps)
                .iter()
                .zip(&xs)
                .map(|(a, b)| a + b)
                .collect();
            let (got_h, got_y) = norm_add_rms_norm(t2(&x), t2(&r), rws.clone(), wt.clone(), eps);
            assert_close(
                &format!("{label} pre-normed h"),
                &floats(got_h),
                &pre_h,
                1e-5,
            );
            assert_close(
                &format!("{label} pre-normed y"),
                &floats(got_y),
                &norm(&pre_h),
                1e-5,
            );

            let twin = RmsNorm {
                weight: Param::from_tensor(wt),
                eps,
                offset: 0.0,
            };
            let y = twin.forward(t2(&x) + t2(&r));
            assert_close(&format!("{label} twin y"), &floats(y), &norm(&h), 1e-5);
            let pre_twin = RmsNorm {
                weight: Param::from_tensor(rws),
                eps,
                offset: 0.0,
            };
            let y = twin.forward(t2(&x) + pre_twin.forward(t2(&r)));
            assert_close(
                &format!("{label} pre-normed twin y"),
                &floats(y),
                &norm(&pre_h),
                1e-5,
            );
        }
    }
    set_poison_outputs(false);
}

/// The norm in f16: the kernels read and write f16 (no casts around them on a device with WGSL
/// f16), round the residual sum to f16 before norming it, and compute the statistics in f32.
#[test]
fn add_rms_norm_in_f16_rounds_once_per_output() {
    use burn::tensor::DType;
    use wgspin::kernels::norm::{add_rms_norm, norm_add_rms_norm, rms_norm};
    set_poison_outputs(true);
    let mut rng = Rng(53);
    let f16 = |v: f64| half::f16::from_f64(v).to_f64();
    for dev in devices() {
        let device = &dev.device;
        for &(b, n) in &[(1, 64), (3, 576), (9, 1000)] {
            let eps = 1e-5;
            // Already f16 values, as a decode step's are; the residual large enough that an f16
            // square would overflow (|h| > 256), which the f32 statistics must survive.
            let mut draw = |n: usize, scale: f32| -> Vec<f32> {
                (0..n)
                    .map(|_| half::f16::from_f32(scale * rng.normal()).to_f32())
                    .collect()
            };
            let (x, r) = (draw(b * n, 1.0), draw(b * n, 300.0));
            let w: Vec<f32> = draw(n, 0.1).iter().map(|g| 1.0 + g).collect();
            let h: Vec<f64> = x
                .iter()
                .zip(&r)
                .map(|(&a, &c)| f16(a as f64 + c as f64))
                .collect();
            let norm = |v: &[f64]| rms_norm_f64(v, &w, eps);
            let t2 = |v: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [b, n]), device).cast(DType::F16)
            };
            let wt =
                Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), device).cast(DType::F16);
            let label = format!("{} f16 b={b} n={n}", dev.description);
            let (got_h, got_y) = add_rms_norm(t2(&x), t2(&r), wt.clone(), eps);
            assert_eq!(
                (got_h.dtype(), got_y.dtype()),
                (DType::F16, DType::F16),
                "{label}"
            );
            // h is exact (the same one rounding); y is one f16 rounding (2⁻¹¹ relative) off.
            assert_close(
                &format!("{label} h"),
                &floats(got_h.cast(DType::F32)),
                &h,
                0.0,
            );
            let y = floats(got_y.cast(DType::F32));
            assert_close(&format!("{label} y"), &y, &norm(&h), 1e-3);
            let xs: Vec<f64> = x.iter().map(|&a| a as f64).collect();
            // Sandwich norms: r's norm rounded to f16 (the model's norm output), then the sum.
            let rw: Vec<f32> = draw(n, 0.3).iter().map(|g| 1.0 + g).collect();
            let rs: Vec<f64> = r.iter().map(|&a| a as f64).collect();
            let pre_h: Vec<f64> = rms_norm_f64(&rs, &rw, eps)
                .iter()
                .zip(&xs)
                .map(|(a, b)| f16(f16(*a) + b))
                .collect();
            let rwt =
                Tensor::<1>::from_data(TensorData::new(rw.clone(), [n]), device).cast(DType::F16);
            let (got_h, got_y) = norm_add_rms_norm(t2(&x), t2(&r), rwt, wt.clone(), eps);
            // The f16 rounding of r's norm may fall either side of the f64 value: one f16 step.
            let got_h = floats(got_h.cast(DType::F32));
            assert_close(&format!("{label} pre-normed h"), &got_h, &pre_h, 2e-3);
            let got_h: Vec<f64> = got_h.iter().map(|&a| a as f64).collect();
            let y = floats(got_y.cast(DType::F32));
            assert_close(&format!("{label} pre-normed y"), &y, &norm(&got_h), 1e-3);
            let got = rms_norm(t2(&x), wt, eps);
            assert_eq!(got.dtype(), DType::F16, "{label}");
            assert_close(
                &format!("{label} plain y"),
                &floats(got.cast(DType::F32)),
                &norm(&xs),
                1e-3,
            );
        }
    }
    set_poison_outputs(false);
}

/// RMSNorm of each row of `v` (rows of `w.len()`) in f64: the kernels' reference.
fn rms_norm_f64(v: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let n = w.len();
    v.chunks(n)
        .flat_map(|row| {
            let ms = row.iter().map(|a| a * a).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(a, &g)| a * inv * g as f64)
        })
        .collect()
}

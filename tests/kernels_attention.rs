//! Decode attention: the WGSL kernel against its burn-ops twin and both against a host reference
//! in f64, on random shapes with ragged row lengths, GQA ratios 1 / 3 / 7 and sliding windows;
//! every output element written (outputs poisoned with NaN first); f16 K/V where the device has it.

mod common;

use burn::tensor::{DType, Int, Tensor, TensorData};
use common::*;
use wgspin::kernels::attention::{
    decode_attention, decode_attention_twin, decode_mask, kernel_available,
};
use wgspin::kernels::common::{f16_kernel_available, set_poison_outputs};

struct Case {
    b: usize,
    h: usize,
    hkv: usize,
    c: usize,
    d: usize,
    window: u32,
}

/// out[b, h, :] in f64 over keys j ≤ pos[b] (and j > pos[b] − window).
fn host_reference(case: &Case, q: &[f32], k: &[f32], v: &[f32], pos: &[i64]) -> Vec<f64> {
    let Case {
        b,
        h,
        hkv,
        c,
        d,
        window,
    } = *case;
    let g = h / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; b * h * d];
    for row in 0..b {
        let p = pos[row] as usize;
        let lo = if window > 0 {
            (p + 1).saturating_sub(window as usize)
        } else {
            0
        };
        for head in 0..h {
            let kvh = head / g;
            let qv = &q[(row * h + head) * d..][..d];
            let at = |j: usize| (row * hkv + kvh) * c * d + j * d;
            let scores: Vec<f64> = (lo..=p)
                .map(|j| {
                    let kr = &k[at(j)..][..d];
                    scale
                        * qv.iter()
                            .zip(kr)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for (i, j) in (lo..=p).enumerate() {
                let vr = &v[at(j)..][..d];
                for (o, &x) in out[(row * h + head) * d..][..d].iter_mut().zip(vr) {
                    *o += w[i] / total * x as f64;
                }
            }
        }
    }
    out
}

#[test]
fn kernel_twin_and_host_reference_agree() {
    set_poison_outputs(true);
    let mut rng = Rng(29);
    let cases = [
        // (b, h, hkv, c, d, window): GQA ratios 1, 3 and 7, a window, a length past one tile.
        Case {
            b: 3,
            h: 4,
            hkv: 4,
            c: 256,
            d: 16,
            window: 0,
        },
        Case {
            b: 5,
            h: 9,
            hkv: 3,
            c: 256,
            d: 64,
            window: 0,
        },
        Case {
            b: 2,
            h: 14,
            hkv: 2,
            c: 512,
            d: 64,
            window: 0,
        },
        Case {
            b: 4,
            h: 6,
            hkv: 2,
            c: 512,
            d: 32,
            window: 37,
        },
        Case {
            b: 1,
            h: 7,
            hkv: 1,
            c: 256,
            d: 128,
            window: 0,
        },
    ];
    for dev in devices() {
        for case in &cases {
            let Case {
                b,
                h,
                hkv,
                c,
                d,
                window,
            } = *case;
            let device = &dev.device;
            let q: Vec<f32> = (0..b * h * d).map(|_| rng.normal()).collect();
            let k: Vec<f32> = (0..b * hkv * c * d).map(|_| rng.normal()).collect();
            let v: Vec<f32> = (0..b * hkv * c * d).map(|_| rng.normal()).collect();
            // Ragged rows: position 0, a full tile and beyond, anything up to c − 1.
            let pos: Vec<i64> = (0..b)
                .map(|i| match i {
                    0 => 0,
                    1 => (c as i64 - 1).min(200),
                    _ => (rng.next() % c as u64) as i64,
                })
                .collect();
            let want = host_reference(case, &q, &k, &v, &pos);
            let round = |x: &[f32]| -> Vec<f32> {
                x.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect()
            };
            let want_f16 = host_reference(case, &round(&q), &round(&k), &round(&v), &pos);
            let qt = Tensor::<3>::from_data(TensorData::new(q, [b, h, d]), device);
            let kt = Tensor::<4>::from_data(TensorData::new(k, [b, hkv, c, d]), device);
            let vt = Tensor::<4>::from_data(TensorData::new(v, [b, hkv, c, d]), device);
            let pt = Tensor::<1, Int>::from_data(TensorData::new(pos.clone(), [b]), device);
            let attend = (*pos.iter().max().unwrap() as usize + 1)
                .next_multiple_of(64)
                .min(c);
            let columns = Tensor::<1, Int>::arange(0..attend as i64, device)
                .reshape([1, attend])
                .expand([b, attend]);
            let mask = decode_mask(&pt, columns, window);
            let scale = 1.0 / (d as f32).sqrt();
            let twin = decode_attention_twin(qt.clone(), kt.clone(), vt.clone(), mask, scale);
            let twin = floats(twin);
            let label = format!(
                "{} b={b} h={h} hkv={hkv} c={c} d={d} w={window}",
                dev.description
            );
            assert_close(&format!("{label} twin"), &twin, &want, 1e-5);
            if !kernel_available(device, h, hkv, d) {
                assert!(!dev.is_gpu, "{label}: the kernel must run on wgpu");
                continue;
            }
            let got = decode_attention(
                qt.clone(),
                kt.clone(),
                vt.clone(),
                pt.clone(),
                window,
                scale,
            );
            assert_eq!(got.dtype(), DType::F32);
            let got = floats(got);
            assert_close(&format!("{label} kernel"), &got, &want, 1e-5);
            if f16_kernel_available(device) {
                let half = |t: Tensor<4>| t.cast(DType::F16);
                let got =
                    decode_attention(qt.cast(DType::F16), half(kt), half(vt), pt, window, scale);
                assert_eq!(got.dtype(), DType::F16, "{label}: f16 in, f16 out");
                let got = floats(got.cast(DType::F32));
                // Against the reference on the same f16-rounded inputs: f32 arithmetic, then
                // one rounding of the output to f16 (relative 4.9e-4).
                assert_close(&format!("{label} kernel f16"), &got, &want_f16, 1e-3);
            }
        }
    }
    set_poison_outputs(false);
}

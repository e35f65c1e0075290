//! The fused sampler (WGSL on wgpu; on the CPU backend the f64 host reference row by row), its
//! burn-ops twin, against the sampling definition and the host reference.
//!
//! - greedy (temperature 0) equals the argmax of each row, V up to 152k;
//! - with fixed logits, 20k draws follow the exact renormalised top-k / top-p / min-p distribution:
//!   Pearson's chi-square test at significance 0.001 (critical values for the degrees of freedom
//!   used are listed below), and no draw ever falls outside the kept set;
//! - the same (seed, request, step) gives the same token at batch sizes 1 and 8 and in any order;
//! - kernel, burn-ops twin and host reference pick the same token for the same uniform number (up
//!   to float ties), with per-row settings and −inf masks in one batch.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Rng, devices};
use wgspin::kernels::sample::{
    DrawId, SamplingParams, sample, sample_row_reference, sample_twin, uniform,
};

fn logits_tensor(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let v = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), v]), device)
}

/// Exact sampling distribution by the definition (HF warper order), in f64.
fn exact_distribution(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
    let x: Vec<f64> = logits
        .iter()
        .map(|&l| l as f64 / p.temperature as f64)
        .collect();
    let mx = x.iter().cloned().fold(f64::MIN, f64::max);
    let mut w: Vec<f64> = x.iter().map(|&v| (v - mx).exp()).collect();
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
    if p.top_k > 0 {
        for &i in &order[p.top_k as usize..] {
            w[i] = 0.0;
        }
    }
    if p.top_p < 1.0 {
        let total: f64 = w.iter().sum();
        let mut cum = 0.0;
        let mut keep = true;
        for &i in &order {
            if !keep {
                w[i] = 0.0;
            } else {
                cum += w[i] / total;
                if cum >= p.top_p as f64 {
                    keep = false;
                }
            }
        }
    }
    if p.min_p > 0.0 {
        let top = w.iter().cloned().fold(0.0, f64::max);
        for v in &mut w {
            if *v < p.min_p as f64 * top {
                *v = 0.0;
            }
        }
    }
    let total: f64 = w.iter().sum();
    w.iter().map(|v| v / total).collect()
}

/// Upper 0.001 critical values of the chi-square distribution, by degrees of freedom.
fn chi2_critical_001(df: usize) -> f64 {
    [
        f64::NAN,
        10.828,
        13.816,
        16.266,
        18.467,
        20.515,
        22.458,
        24.322,
        26.124,
        27.877,
        29.588,
        31.264,
        32.909,
    ][df]
}

#[test]
fn greedy_is_argmax() {
    let mut rng = Rng(1);
    for dev in devices() {
        for &(b, v) in &[(1, 1), (3, 7), (8, 300), (2, 152_064)] {
            let rows: Vec<Vec<f32>> = (0..b)
                .map(|_| (0..v).map(|_| rng.normal() * 4.0).collect())
                .collect();
            let params = vec![
                SamplingParams {
                    temperature: 0.0,
                    ..Default::default()
                };
                b
            ];
            let ids: Vec<DrawId> = (0..b as u32)
                .map(|r| DrawId {
                    request: r,
                    step: 0,
                })
                .collect();
            let (tokens, logprobs) =
                sample(logits_tensor(&rows, &dev.device), &params, &ids).unwrap();
            for (row, (&t, &lp)) in rows.iter().zip(tokens.iter().zip(&logprobs)) {
                let best = (0..v)
                    .max_by(|&a, &c| row[a].total_cmp(&row[c]).then(c.cmp(&a)))
                    .unwrap();
                assert_eq!(t as usize, best, "{} v={v}", dev.description);
                let m = row.iter().cloned().fold(f32::MIN, f32::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
                assert!(
                    (lp - (row[best] - lse)).abs() < 1e-4 * lse.abs().max(1.0),
                    "{lp}"
                );
            }
        }
    }
}

#[test]
fn draws_follow_the_truncated_distribution() {
    let logits: Vec<f32> = vec![
        2.0, 1.5, 1.2, 1.0, 0.5, 0.3, 0.0, -0.4, -1.0, -2.0, -3.0, -5.0,
    ];
    let settings = [
        SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.7,
            top_k: 5,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.3,
            min_p: 0.1,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.1,
            top_k: 8,
            top_p: 0.9,
            min_p: 0.05,
            ..Default::default()
        },
    ];
    let draws = 20_000;
    for dev in devices() {
        for (s, p) in settings.iter().enumerate() {
            let p = SamplingParams {
                seed: 1234 + s as u64,
                ..*p
            };
            let rows = vec![logits.clone(); draws];
            let ids: Vec<DrawId> = (0..draws as u32)
                .map(|r| DrawId {
                    request: r,
                    step: 7,
                })
                .collect();
            let (tokens, _) =
                sample(logits_tensor(&rows, &dev.device), &vec![p; draws], &ids).unwrap();
            let exact = exact_distribution(&logits, &p);
            let mut counts = vec![0usize; logits.len()];
            for t in tokens {
                counts[t as usize] += 1;
            }
            let mut chi2 = 0.0;
            let mut df = 0;
            for (c, q) in counts.iter().zip(&exact) {
                if *q == 0.0 {
                    assert_eq!(
                        *c, 0,
                        "{}: setting {s}: a token outside the kept set was drawn",
                        dev.description
                    );
                } else {
                    let e = q * draws as f64;
                    chi2 += (*c as f64 - e).powi(2) / e;
                    df += 1;
                }
            }
            let crit = chi2_critical_001(df - 1);
            assert!(
                chi2 < crit,
                "{}: setting {s}: chi2 {chi2:.2} ≥ {crit} (df {}), counts {counts:?}",
                dev.description,
                df - 1
            );
        }
    }
}

#[test]
fn same_seed_same_tokens_whatever_the_batch() {
    let mut rng = Rng(9);
    let v = 1000;
    let rows: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..v).map(|_| rng.normal() * 2.0).collect())
        .collect();
    let p = SamplingParams {
        temperature: 0.9,
        top_k: 50,
        top_p: 0.95,
        min_p: 0.01,
        seed: 42,
    };
    let ids: Vec<DrawId> = (0..8)
        .map(|r| DrawId {
            request: 100 + r,
            step: r * 3,
        })
        .collect();
    for dev in devices() {
        let (batched, _) = sample(logits_tensor(&rows, &dev.device), &[p; 8], &ids).unwrap();
        for i in 0..8 {
            let (one, _) = sample(
                logits_tensor(&rows[i..i + 1], &dev.device),
                &[p],
                &ids[i..i + 1],
            )
            .unwrap();
            assert_eq!(one[0], batched[i], "{}: row {i}", dev.description);
        }
        let rev_rows: Vec<Vec<f32>> = rows.iter().rev().cloned().collect();
        let rev_ids: Vec<DrawId> = ids.iter().rev().copied().collect();
        let (rev, _) = sample(logits_tensor(&rev_rows, &dev.device), &[p; 8], &rev_ids).unwrap();
        let rev: Vec<u32> = rev.into_iter().rev().collect();
        assert_eq!(rev, batched, "{}: reversed order", dev.description);
    }
}

#[test]
fn kernel_burn_ops_twin_and_host_reference_agree() {
    let mut rng = Rng(21);
    let (b, v) = (72, 2053);
    // Per-row settings in one batch, so the per-row masks of the twin are exercised too.
    let settings = [
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.02,
            seed: 7,
        },
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 8,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.5,
            top_k: 3,
            seed: 9,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.6,
            min_p: 0.2,
            seed: 10,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 5000, // ≥ V: no truncation
            seed: 11,
            ..Default::default()
        },
    ];
    let params: Vec<SamplingParams> = (0..b).map(|i| settings[i % settings.len()]).collect();
    let rows: Vec<Vec<f32>> = (0..b)
        .map(|r| {
            (0..v)
                .map(|c| {
                    // Some rows carry a −inf mask over part of the vocabulary.
                    if r % 4 == 3 && c % 3 == 0 {
                        f32::NEG_INFINITY
                    } else {
                        rng.normal() * 3.0
                    }
                })
                .collect()
        })
        .collect();
    let ids: Vec<DrawId> = (0..b as u32)
        .map(|r| DrawId {
            request: r,
            step: 1,
        })
        .collect();
    let host: Vec<(u32, f32)> = rows
        .iter()
        .zip(&params)
        .zip(&ids)
        .map(|((row, p), id)| sample_row_reference(row, p, uniform(p.seed, *id)))
        .collect();
    let agree = |name: &str, got: &(Vec<u32>, Vec<f32>), want: &[(u32, f32)]| {
        let same = got.0.iter().zip(want).filter(|(a, w)| **a == w.0).count();
        // Thresholds and cumulative sums in f32 against f64 may split a near-tie differently.
        assert!(same >= b - 1, "{name}: {same}/{b} rows agree");
        for (i, ((t, lp), w)) in got.0.iter().zip(&got.1).zip(want).enumerate() {
            if *t == w.0 {
                assert!(
                    (lp - w.1).abs() <= 1e-4,
                    "{name}: row {i}: logp {lp} vs {}",
                    w.1
                );
            }
        }
    };
    for dev in devices() {
        let logits = logits_tensor(&rows, &dev.device);
        let fast = sample(logits.clone(), &params, &ids).unwrap();
        let twin = sample_twin(logits, &params, &ids).unwrap();
        let twin_pairs: Vec<(u32, f32)> = twin.0.iter().copied().zip(twin.1.clone()).collect();
        agree(&format!("{}: twin vs host", dev.description), &twin, &host);
        agree(
            &format!("{}: sample vs twin", dev.description),
            &fast,
            &twin_pairs,
        );
    }
}

//! Kernel benchmarks (`wgspin bench kernels`): each kernel against its twin, measured side by side
//! in one process on one device. `registry::bench_kernels` runs the bench function of every
//! `registry::KERNELS` entry that has one, in the registry's order. Absolute times only
//! mean something on a real GPU; the ratios are the point.

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

use super::common::f16_kernel_available;
use crate::error::{Error, Result};

/// One line of the report.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub name: String,
    pub shape: String,
    pub ours_ms: f64,
    pub twin_ms: f64,
    /// The main input's bytes read per call (logits, keys and values, a weight) over our time.
    pub gb_per_s: f64,
}

impl BenchRow {
    /// The row of a kernel timed at `(ours, twin)` ms that reads `bytes` per call.
    fn new(name: &str, shape: String, (ours_ms, twin_ms): (f64, f64), bytes: f64) -> Self {
        Self {
            name: name.into(),
            shape,
            ours_ms,
            twin_ms,
            gb_per_s: bytes / (ours_ms * 1e-3) / 1e9,
        }
    }

    pub fn ratio(&self) -> f64 {
        self.twin_ms / self.ours_ms
    }
}

/// Sizes of the benchmark cases.
#[derive(Debug, Clone, Copy)]
pub struct BenchSizes {
    /// Rows of logits for the log-prob kernel (and rows of the training RMSNorm, positions of its
    /// RoPE).
    pub rows: usize,
    pub vocab: usize,
    /// Rows for the sampler, decode attention and (up to `MAX_ROWS`) the decode projections.
    pub sample_rows: usize,
    pub iters: usize,
}

/// A kernel's benchmark: its rows of the report on `device` (none where it does not run there).
pub type BenchFn = fn(&Device, &BenchSizes) -> Result<Vec<BenchRow>>;

/// Waits for `device`'s queued work.
pub fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| Error::Device(format!("device sync failed: {e:?}")))
}

/// Milliseconds of one run of `f`, its output dropped and the device synced.
fn timed<T>(device: &Device, f: &mut impl FnMut() -> Result<T>) -> Result<f64> {
    let t = Instant::now();
    drop(f()?);
    sync(device)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median milliseconds of `ours` and of `twin` over `iters` runs each, after one warm-up run of
/// both; the two alternate run by run, so drift on a noisy machine hits both alike.
fn time_pair<A, B>(
    device: &Device,
    iters: usize,
    mut ours: impl FnMut() -> Result<A>,
    mut twin: impl FnMut() -> Result<B>,
) -> Result<(f64, f64)> {
    timed(device, &mut ours)?;
    timed(device, &mut twin)?;
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..iters.max(1) {
        a.push(timed(device, &mut ours)?);
        b.push(timed(device, &mut twin)?);
    }
    Ok((median(a), median(b)))
}

/// The log-prob forward and backward on f32 logits and, where the device runs the f16 shaders,
/// on f16 logits.
pub(crate) fn token_logprobs(device: &Device, sizes: &BenchSizes) -> Result<Vec<BenchRow>> {
    use super::logprobs::{
        token_logprobs, token_logprobs_grad, token_logprobs_grad_twin, token_logprobs_twin,
    };
    let (n, v) = (sizes.rows, sizes.vocab);
    let logits32 = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 3.0), device);
    let targets = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), device);
    let grad = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), device);
    let mut dtypes = vec![(DType::F32, "f32", 4)];
    if f16_kernel_available(device) {
        dtypes.push((DType::F16, "f16", 2));
    }
    let mut rows = vec![];
    for (dtype, name, elem_bytes) in dtypes {
        let logits = logits32.clone().cast(dtype);
        let shape = format!("[{n} x {v}] {name}");
        let bytes = (n * v * elem_bytes) as f64;
        let times = time_pair(
            device,
            sizes.iters,
            || Ok(token_logprobs(logits.clone(), targets.clone())),
            || Ok(token_logprobs_twin(logits.clone(), targets.clone())),
        )?;
        let name = "token_logprobs forward";
        rows.push(BenchRow::new(name, shape.clone(), times, bytes));
        let (_, lse) = token_logprobs(logits.clone(), targets.clone());
        let times = time_pair(
            device,
            sizes.iters,
            || {
                let (l, t, s, g) = (logits.clone(), targets.clone(), lse.clone(), grad.clone());
                Ok(token_logprobs_grad(l, t, s, g))
            },
            || {
                let (l, t, s, g) = (logits.clone(), targets.clone(), lse.clone(), grad.clone());
                Ok(token_logprobs_grad_twin(l, t, s, g))
            },
        )?;
        // Reads the logits and writes dlogits of the same size.
        let name = "token_logprobs backward";
        rows.push(BenchRow::new(name, shape, times, 2.0 * bytes));
    }
    Ok(rows)
}

/// The sampler with temperature, top-k and top-p on `sample_rows` rows.
pub(crate) fn sample(device: &Device, sizes: &BenchSizes) -> Result<Vec<BenchRow>> {
    use super::sample::{DrawId, SamplingParams, sample, sample_twin};
    let (b, v) = (sizes.sample_rows, sizes.vocab);
    let slogits = Tensor::<2>::random([b, v], Distribution::Normal(0.0, 3.0), device);
    let p = SamplingParams {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.9,
        min_p: 0.0,
        seed: 1,
    };
    let params = vec![p; b];
    let ids: Vec<DrawId> = (0..b as u32)
        .map(|r| DrawId {
            request: r,
            step: 0,
        })
        .collect();
    let times = time_pair(
        device,
        sizes.iters,
        || sample(slogits.clone(), &params, &ids),
        || sample_twin(slogits.clone(), &params, &ids),
    )?;
    let name = "sample (T 0.8, top-k 50, top-p 0.9)";
    let shape = format!("[{b} x {v}] f32");
    Ok(vec![BenchRow::new(name, shape, times, (b * v * 4) as f64)])
}

/// Decode attention at SmolLM2's head layout (9 query heads over 3 kv heads of 64),
/// `sample_rows` rows at ragged positions in a 1024-column cache, against the twin over the same
/// columns. None where the kernel does not run (off wgpu). GB/s counts the keys and values of the
/// visible columns.
pub(crate) fn decode_attention(device: &Device, sizes: &BenchSizes) -> Result<Vec<BenchRow>> {
    use super::attention::{
        decode_attention, decode_attention_twin, decode_mask, kernel_available,
    };
    let (b, iters) = (sizes.sample_rows, sizes.iters);
    let (h, hkv, c, d) = (9, 3, 1024, 64);
    if b == 0 || !kernel_available(device, h, hkv, d) {
        return Ok(vec![]);
    }
    let q = Tensor::<3>::random([b, h, d], Distribution::Normal(0.0, 1.0), device);
    let k = Tensor::<4>::random([b, hkv, c, d], Distribution::Normal(0.0, 1.0), device);
    let v = Tensor::<4>::random([b, hkv, c, d], Distribution::Normal(0.0, 1.0), device);
    let pos: Vec<i64> = (0..b).map(|i| ((i * 7919 + 300) % c) as i64).collect();
    let visible: i64 = pos.iter().map(|p| p + 1).sum();
    let attend = (*pos.iter().max().unwrap_or(&0) as usize + 1).next_multiple_of(64);
    let pos = Tensor::<1, Int>::from_data(TensorData::new(pos, [b]), device);
    let columns = Tensor::<1, Int>::arange(0..attend as i64, device)
        .reshape([1, attend])
        .expand([b, attend]);
    let mask = decode_mask(&pos, columns, 0);
    let scale = 1.0 / (d as f32).sqrt();
    let times = time_pair(
        device,
        iters,
        || {
            let (q, k, v) = (q.clone(), k.clone(), v.clone());
            Ok(decode_attention(q, k, v, pos.clone(), 0, scale))
        },
        || {
            let (q, k, v) = (q.clone(), k.clone(), v.clone());
            Ok(decode_attention_twin(q, k, v, mask.clone(), scale))
        },
    )?;
    let bytes = (visible as usize * hkv * d * 2 * 4) as f64;
    let name = "decode_attention (9/3 heads of 64)";
    Ok(vec![BenchRow::new(
        name,
        format!("[{b} x {c}] f32"),
        times,
        bytes,
    )])
}

/// The decode projections at SmolLM2's sizes (hidden 576, intermediate 1536) for `sample_rows`
/// rows, at most `MAX_ROWS`: the fused gate/up with SwiGLU and the down projection, against their
/// burn-ops twins. Empty where the kernel does not run for these shapes. GB/s counts the weight's
/// bytes.
pub(crate) fn rows_matmul(device: &Device, sizes: &BenchSizes) -> Result<Vec<BenchRow>> {
    use super::rows_matmul::{
        MAX_ROWS, RowsPath, rows_gated, rows_gated_twin, rows_matmul, rows_matmul_twin, rows_path,
    };
    let (b, iters) = (sizes.sample_rows.min(MAX_ROWS), sizes.iters);
    let (hidden, inter) = (576, 1536);
    let mut rows = vec![];
    for (name, k, n, gated) in [
        ("rows_gated (gate/up, SiLU)", hidden, 2 * inter, true),
        ("rows_matmul (down)", inter, hidden, false),
    ] {
        let x = Tensor::<2>::random([b, k], Distribution::Normal(0.0, 1.0), device);
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.05), device);
        if b == 0 || rows_path(&x, &w) == RowsPath::Twin {
            continue;
        }
        type Rows = fn(Tensor<2>, Tensor<2>) -> Tensor<2>;
        let (kernel, reference): (Rows, Rows) = if gated {
            (
                |x, w| rows_gated(x, w, false),
                |x, w| rows_gated_twin(x, w, false),
            )
        } else {
            (rows_matmul, rows_matmul_twin)
        };
        let times = time_pair(
            device,
            iters,
            || Ok(kernel(x.clone(), w.clone())),
            || Ok(reference(x.clone(), w.clone())),
        )?;
        let shape = format!("[{b} x {k}] x [{n} x {k}] f32");
        rows.push(BenchRow::new(name, shape, times, (n * k * 4) as f64));
    }
    Ok(rows)
}

/// The training RMSNorm, forward then backward, over `rows` rows of SmolLM2's hidden width 576.
pub(crate) fn rms_norm_train(device: &Device, sizes: &BenchSizes) -> Result<Vec<BenchRow>> {
    use super::norm_train::{
        rms_norm_train, rms_norm_train_grad, rms_norm_train_grad_twin, rms_norm_train_twin,
    };
    let (n, h) = (sizes.rows, 576);
    let x = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), device);
    let g = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), device);
    let w = Tensor::<1>::random([h], Distribution::Normal(1.0, 0.1), device);
    let times = time_pair(
        device,
        sizes.iters,
        || {
            let (_, inv) = rms_norm_train(x.clone(), w.clone(), 1e-5, 0.0);
            Ok(rms_norm_train_grad(
                x.clone(),
                w.clone(),
                inv,
                g.clone(),
                0.0,
            ))
        },
        || {
            let (_, inv) = rms_norm_train_twin(x.clone(), w.clone(), 1e-5, 0.0);
            Ok(rms_norm_train_grad_twin(
                x.clone(),
                w.clone(),
                inv,
                g.clone(),
                0.0,
            ))
        },
    )?;
    // Read: x twice, g once; written: y, dx.
    let bytes = (5 * n * h * 4) as f64;
    let shape = format!("[{n} x {h}] f32");
    Ok(vec![BenchRow::new(
        "rms_norm_train fwd + bwd",
        shape,
        times,
        bytes,
    )])
}

/// The training RoPE, forward then backward, on `rows` positions of 9 heads of 64 (SmolLM2's q).
pub(crate) fn rope_train(device: &Device, sizes: &BenchSizes) -> Result<Vec<BenchRow>> {
    use super::rope_train::{rope_train, rope_train_grad, rope_train_twin};
    let (s, h, d) = (sizes.rows, 9, 64);
    let x = Tensor::<4>::random([1, h, s, d], Distribution::Normal(0.0, 1.0), device);
    let a = Tensor::<4>::random([1, 1, s, d / 2], Distribution::Uniform(-3.0, 3.0), device);
    let (cos, sin) = (a.clone().cos(), a.sin());
    let times = time_pair(
        device,
        sizes.iters,
        || {
            let y = rope_train(x.clone(), cos.clone(), sin.clone());
            Ok(rope_train_grad(y, cos.clone(), sin.clone()))
        },
        || {
            let y = rope_train_twin(x.clone(), cos.clone(), sin.clone(), false);
            Ok(rope_train_twin(y, cos.clone(), sin.clone(), true))
        },
    )?;
    // Read and written once each way.
    let bytes = (4 * s * h * d * 4) as f64;
    let shape = format!("[1 x {h} x {s} x {d}] f32");
    Ok(vec![BenchRow::new(
        "rope_train fwd + bwd",
        shape,
        times,
        bytes,
    )])
}

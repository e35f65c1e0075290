//! Kernel benchmarks (`wgspin bench kernels`): each WGSL kernel against its twin, measured side by
//! side in one process on one device, plus the device memory of the chunked scoring + loss path.
//! Absolute times only mean something on a real GPU; the ratios are the point.

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

use wgspin::error::{Error, Result};
use wgspin::kernels::logprobs::{
    f16_kernel_available, head_logprobs, token_logprobs, token_logprobs_grad,
    token_logprobs_grad_twin, token_logprobs_twin,
};
use wgspin::kernels::sample::{DrawId, SamplingParams, sample, sample_twin};
use wgspin::rng::SplitMix64;

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
    pub fn ratio(&self) -> f64 {
        self.twin_ms / self.ours_ms
    }
}

/// Sizes of the benchmark cases.
#[derive(Debug, Clone, Copy)]
pub struct BenchSizes {
    /// Rows of logits for the log-prob kernel.
    pub rows: usize,
    pub vocab: usize,
    /// Rows for the sampler, decode attention and (up to `MAX_ROWS`) the decode projections.
    pub sample_rows: usize,
    pub iters: usize,
}

fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| Error::Device(format!("device sync failed: {e:?}")))
}

fn timed(device: &Device, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    sync(device)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median milliseconds of `ours` and of `twin` over `iters` runs each, after one warm-up run of
/// both; the two alternate run by run, so drift on a noisy machine hits both alike.
fn time_pair(
    device: &Device,
    iters: usize,
    mut ours: impl FnMut() -> Result<()>,
    mut twin: impl FnMut() -> Result<()>,
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

/// Every kernel against its twin on `device`: the log-prob forward and backward on f32 logits and,
/// where the device runs the f16 shaders, on f16 logits; then the sampler.
pub fn bench_kernels(device: &Device, sizes: BenchSizes) -> Result<Vec<BenchRow>> {
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
        let (ours, twin) = time_pair(
            device,
            sizes.iters,
            || {
                drop(token_logprobs(logits.clone(), targets.clone()));
                Ok(())
            },
            || {
                drop(token_logprobs_twin(logits.clone(), targets.clone()));
                Ok(())
            },
        )?;
        rows.push(BenchRow {
            name: "token_logprobs forward".into(),
            shape: shape.clone(),
            ours_ms: ours,
            twin_ms: twin,
            gb_per_s: bytes / (ours * 1e-3) / 1e9,
        });
        let (_, lse) = token_logprobs(logits.clone(), targets.clone());
        let (ours, twin) = time_pair(
            device,
            sizes.iters,
            || {
                let (l, t, s, g) = (logits.clone(), targets.clone(), lse.clone(), grad.clone());
                drop(token_logprobs_grad(l, t, s, g));
                Ok(())
            },
            || {
                let (l, t, s, g) = (logits.clone(), targets.clone(), lse.clone(), grad.clone());
                drop(token_logprobs_grad_twin(l, t, s, g));
                Ok(())
            },
        )?;
        rows.push(BenchRow {
            name: "token_logprobs backward".into(),
            shape,
            ours_ms: ours,
            twin_ms: twin,
            // Reads the logits and writes dlogits of the same size.
            gb_per_s: 2.0 * bytes / (ours * 1e-3) / 1e9,
        });
    }

    let b = sizes.sample_rows;
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
    let (ours, twin) = time_pair(
        device,
        sizes.iters,
        || sample(slogits.clone(), &params, &ids).map(drop),
        || sample_twin(slogits.clone(), &params, &ids).map(drop),
    )?;
    rows.push(BenchRow {
        name: "sample (T 0.8, top-k 50, top-p 0.9)".into(),
        shape: format!("[{b} x {v}] f32"),
        ours_ms: ours,
        twin_ms: twin,
        gb_per_s: (b * v * 4) as f64 / (ours * 1e-3) / 1e9,
    });
    if let Some(row) = bench_decode_attention(device, b, sizes.iters)? {
        rows.push(row);
    }
    let few = b.min(wgspin::kernels::rows_matmul::MAX_ROWS);
    rows.extend(bench_rows_matmul(device, few, sizes.iters)?);
    Ok(rows)
}

/// Decode attention at SmolLM2's head layout (9 query heads over 3 kv heads of 64), `b` rows at
/// ragged positions in a 1024-column cache, against the twin over the same columns. `None` where
/// the kernel does not run (off wgpu). GB/s counts the keys and values of the visible columns.
fn bench_decode_attention(device: &Device, b: usize, iters: usize) -> Result<Option<BenchRow>> {
    use wgspin::kernels::attention::{
        decode_attention, decode_attention_twin, decode_mask, kernel_available,
    };
    let (h, hkv, c, d) = (9, 3, 1024, 64);
    if b == 0 || !kernel_available(device, h, hkv, d) {
        return Ok(None);
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
    let (ours, twin) = time_pair(
        device,
        iters,
        || {
            drop(decode_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                pos.clone(),
                0,
                1.0 / (d as f32).sqrt(),
            ));
            Ok(())
        },
        || {
            drop(decode_attention_twin(
                q.clone(),
                k.clone(),
                v.clone(),
                mask.clone(),
                1.0 / (d as f32).sqrt(),
            ));
            Ok(())
        },
    )?;
    let bytes = (visible as usize * hkv * d * 2 * 4) as f64;
    Ok(Some(BenchRow {
        name: "decode_attention (9/3 heads of 64)".into(),
        shape: format!("[{b} x {c}] f32"),
        ours_ms: ours,
        twin_ms: twin,
        gb_per_s: bytes / (ours * 1e-3) / 1e9,
    }))
}

/// The decode projections at SmolLM2's sizes (hidden 576, intermediate 1536) for `b` rows: the
/// fused gate/up with SwiGLU and the down projection, against their burn-ops twins. Empty where
/// the kernel does not run for these shapes.
/// GB/s counts the weight's bytes.
fn bench_rows_matmul(device: &Device, b: usize, iters: usize) -> Result<Vec<BenchRow>> {
    use wgspin::kernels::rows_matmul::{
        RowsPath, rows_gated, rows_gated_twin, rows_matmul, rows_matmul_twin, rows_path,
    };
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
        let (ours, twin) = time_pair(
            device,
            iters,
            || {
                drop(kernel(x.clone(), w.clone()));
                Ok(())
            },
            || {
                drop(reference(x.clone(), w.clone()));
                Ok(())
            },
        )?;
        rows.push(BenchRow {
            name: name.into(),
            shape: format!("[{b} x {k}] x [{n} x {k}] f32"),
            ours_ms: ours,
            twin_ms: twin,
            gb_per_s: (n * k * 4) as f64 / (ours * 1e-3) / 1e9,
        });
    }
    Ok(rows)
}

/// Device bytes reserved after a forward + backward of the chunked lm_head + log-prob path for
/// `positions` rows of `hidden` against a `[vocab, hidden]` head, or `None` where the backend does
/// not report memory. Each call should run in a fresh process for a clean number.
pub fn head_loss_memory(
    device: &Device,
    positions: usize,
    hidden: usize,
    vocab: usize,
    chunk: usize,
) -> Result<Option<u64>> {
    let ad = device.clone().autodiff();
    let h = Tensor::<2>::random([positions, hidden], Distribution::Normal(0.0, 1.0), &ad)
        .require_grad();
    let w =
        Tensor::<2>::random([vocab, hidden], Distribution::Normal(0.0, 0.05), &ad).require_grad();
    let t: Vec<i32> = (0..positions).map(|i| (i * 7919 % vocab) as i32).collect();
    let t = Tensor::<1, Int>::from_data(TensorData::new(t, [positions]), &ad);
    let grads = head_logprobs(h.clone(), w.clone(), t, chunk)
        .sum()
        .backward();
    let gw = w.grad(&grads);
    drop(gw);
    sync(device)?;
    Ok(device.memory_pool_usage().map(|u| u.bytes_reserved))
}

/// A random token id past the first three (which tokenizers keep for special tokens).
fn random_token(rng: &mut SplitMix64, vocab: usize) -> u32 {
    3 + rng.below(vocab - 3) as u32
}

/// Generation throughput at one batch size: `batch` prompts of `prompt_len` random tokens, exactly
/// `new_tokens` greedy tokens each (no stop ids), as `scripts/bench_generate.py` measures
/// transformers: generated tokens per second (prefill included in the time), and the engine's
/// per-step profile.
pub fn bench_generate(
    model: &wgspin::model::Transformer,
    vocab: usize,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> Result<wgspin::generate::profile::GenProfile> {
    let mut rng = SplitMix64(0x5EED);
    let requests: Vec<wgspin::generate::GenRequest> = (0..batch)
        .map(|i| wgspin::generate::GenRequest {
            index: i as u32,
            prompt: (0..prompt_len)
                .map(|_| random_token(&mut rng, vocab))
                .collect(),
        })
        .collect();
    let opts = wgspin::generate::GenOptions {
        batch_size: batch,
        max_new_tokens: new_tokens,
        sampling: wgspin::kernels::sample::SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop_ids: vec![],
        pad_id: 0,
    };
    wgspin::generate::profile::profile_generate(model, &requests, &opts)
}

/// The shape of a training benchmark: pairs per step, tokens per sequence and of its prompt,
/// timed steps.
#[derive(Debug, Clone, Copy)]
pub struct TrainShape {
    pub pairs: usize,
    pub seq_len: usize,
    pub prompt_len: usize,
    pub steps: usize,
}

/// SPIN training throughput: `pairs` pairs of random sequences of `seq_len` tokens (prompt
/// `prompt_len`), one optimizer step (RMSprop) per batch, as `scripts/bench_train.py` measures
/// PyTorch; with `lora` enabled, new adapters on the frozen model. `model` must live on an
/// autodiff device. Returns (tokens/s, median step seconds).
pub fn bench_train(
    mut model: wgspin::model::Transformer,
    vocab: usize,
    shape: TrainShape,
    lora: &wgspin::model::lora::LoraConfig,
    compute: burn::tensor::DType,
    gradient_checkpointing: bool,
) -> Result<(f64, f64, usize)> {
    use wgspin::train::{Objective, PairLogps, TrainConfig, TrainPair, Trainer};
    let TrainShape {
        pairs,
        seq_len,
        prompt_len,
        steps,
    } = shape;
    if lora.enabled() {
        wgspin::model::lora::attach(&mut model, lora, 0);
        wgspin::model::lora::freeze_base(&mut model);
    }
    wgspin::model::precision::set_compute(&mut model, compute);
    let mut rng = SplitMix64(7);
    let mut tok = || random_token(&mut rng, vocab);
    let n = pairs * (steps + 1);
    let data: Vec<TrainPair> = (0..n)
        .map(|i| {
            let prompt: Vec<u32> = (0..prompt_len).map(|_| tok()).collect();
            TrainPair {
                id: i.to_string(),
                prompt,
                real: (prompt_len..seq_len).map(|_| tok()).collect(),
                generated: (prompt_len..seq_len).map(|_| tok()).collect(),
            }
        })
        .collect();
    let reference = PairLogps {
        real: vec![0.0; n],
        generated: vec![0.0; n],
    };
    let cfg = TrainConfig {
        batch_size: pairs,
        epochs: 1,
        lr: 5e-7,
        warmup_ratio: 0.0,
        max_length: seq_len + 1,
        max_prompt_length: prompt_len,
        lora: lora.clone(),
        gradient_checkpointing,
        ..Default::default()
    };
    let mut trainer = Trainer::new(
        model,
        cfg,
        Objective::Spin {
            pairs: data,
            reference,
        },
        0,
    )?;
    let (mut times, mut skipped) = (vec![], 0);
    for s in 0..=steps {
        let t = Instant::now();
        let m = trainer.train_step()?;
        if s > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        skipped += usize::from(m.loss_scale.is_some_and(|(_, skip)| skip));
    }
    let median = median(times);
    Ok(((2 * pairs * seq_len) as f64 / median, median, skipped))
}

/// Peak resident memory of this process in bytes, where the OS tells it cheaply (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

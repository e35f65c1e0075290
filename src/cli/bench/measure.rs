//! The measurements of `wgspin bench` beyond the kernels (those are `wgspin::kernels::bench`,
//! run from the kernel registry): the device memory of the chunked scoring + loss path, and
//! generation and training throughput.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use wgspin::error::Result;
use wgspin::kernels::bench::{median, sync};
use wgspin::kernels::logprobs::head_logprobs;
use wgspin::rng::SplitMix64;

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
/// autodiff device. Returns (tokens/s, median step seconds, steps the loss scaler skipped,
/// blocking device reads per timed step).
pub fn bench_train(
    mut model: wgspin::model::Transformer,
    vocab: usize,
    shape: TrainShape,
    lora: &wgspin::model::lora::LoraConfig,
    compute: burn::tensor::DType,
    gradient_checkpointing: bool,
) -> Result<(f64, f64, usize, f64)> {
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
    let (mut times, mut skipped, mut reads0) = (vec![], 0, 0);
    for s in 0..=steps {
        if s == 1 {
            reads0 = trainer.state.blocking_reads();
        }
        let t = Instant::now();
        let m = trainer.train_step()?;
        if s > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        skipped += usize::from(m.loss_scale.is_some_and(|(_, skip)| skip));
    }
    let reads = (trainer.state.blocking_reads() - reads0) as f64 / steps.max(1) as f64;
    let median = median(times);
    Ok((
        (2 * pairs * seq_len) as f64 / median,
        median,
        skipped,
        reads,
    ))
}

/// Peak resident memory of this process in bytes, where the OS tells it cheaply (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

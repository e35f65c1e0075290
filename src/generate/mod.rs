//! Batched sampling with the KV cache and continuous batching: the opponent's half of SPIN.
//!
//! Up to `batch_size` requests decode together, one token per row per step. When rows finish
//! (a stop id or the token limit), they leave the batch at once and, once enough slots are free,
//! the next prompts are prefilled and join the running batch, so the device never idles on rows
//! that are done. Requests are taken in the order given; callers sort them by prompt length so
//! that prompts prefilled together carry little padding.
//!
//! Every row draws its random numbers from `(seed, request index, step)` (see
//! [`crate::kernels::sample`]), so a request yields the same tokens whatever the batch size, the
//! other requests, or whether the run was interrupted and resumed.
//!
//! Generation computes in the model's compute dtype (`Transformer::compute`, set once at load by
//! [`crate::model::precision::set_compute`] from `--dtype`): prefill, decode steps and the KV
//! cache all run in it, with logits, sampling and log-probs in f32.

pub mod batch;
pub mod job;
pub mod profile;
pub mod serve;
pub mod server;

use burn::tensor::{Device, Int, Tensor};

use crate::error::{Error, Result};
use crate::kernels::common::is_wgpu;
use crate::kernels::sample::{
    BatchSampler, DrawId, SamplingParams, read_samples, read_samples_many,
};
use crate::model::fused::DecodeWeights;
use crate::model::static_cache::{
    LEN_BUCKET, StaticKvCache, bucketed_len, capacity_for, ids_tensor,
};
use crate::model::{KvCache, StepInput, Transformer};

/// One prompt to continue. `index` keys its random stream and identifies it in the results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest {
    pub index: u32,
    pub prompt: Vec<u32>,
}

/// Decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Rows decoded together (default 8).
    pub batch_size: usize,
    /// Token limit per response (default 256).
    pub max_new_tokens: usize,
    /// Temperature / top-k / top-p / min-p / seed; temperature 0 is greedy.
    pub sampling: SamplingParams,
    /// A row stops after emitting any of these (kept as its last token).
    pub stop_ids: Vec<u32>,
    /// Token id written into padding slots (never attended to).
    pub pad_id: u32,
}

impl GenOptions {
    /// Refuses settings no decode can run with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        for (flag, n) in [
            ("--gen-batch-size", self.batch_size),
            ("--max-new-tokens", self.max_new_tokens),
        ] {
            if n == 0 {
                return Err(Error::Invalid(format!("{flag} 0: must be at least 1")));
            }
        }
        Ok(())
    }
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop_ids: vec![],
            pad_id: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The row emitted a stop id.
    Eos,
    /// The row reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
        }
    }
}

/// A finished request: its tokens (a final stop id included) and their summed log-prob under the
/// unmodified model distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub index: u32,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub logprob: f64,
}

/// Steps decoded between two read-backs of the sampled tokens. The device runs ahead of the
/// host by up to this many steps; a row that stops inside the window wastes at most this many
/// steps of its slot.
pub const READBACK_EVERY: usize = 8;

/// A request being decoded in a slot. The host mirrors its position exactly (one token per
/// step); only its tokens arrive late, at read-backs.
struct Row {
    index: u32,
    /// Position of the token fed to the model at the next step.
    next_pos: usize,
    tokens: Vec<u32>,
    logprob: f64,
    finished: Option<FinishReason>,
}

impl Row {
    /// A row for request `r`, with the first token its prefill drew.
    fn start(r: &GenRequest, token: u32, logprob: f32, opts: &GenOptions) -> Self {
        let mut row = Row {
            index: r.index,
            next_pos: r.prompt.len(),
            tokens: vec![],
            logprob: 0.0,
            finished: None,
        };
        row.push(token, logprob, opts);
        row
    }

    fn push(&mut self, token: u32, logprob: f32, opts: &GenOptions) {
        if self.finished.is_some() {
            // Decoded inside the read-back window after the row had stopped: discarded.
            return;
        }
        self.tokens.push(token);
        self.logprob += logprob as f64;
        if opts.stop_ids.contains(&token) {
            self.finished = Some(FinishReason::Eos);
        } else if self.tokens.len() >= opts.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
    }
}

fn draw_ids(rows: &[Option<Row>]) -> Vec<DrawId> {
    rows.iter()
        .map(|r| match r {
            Some(r) => DrawId {
                request: r.index,
                step: r.tokens.len() as u32,
            },
            None => DrawId {
                request: u32::MAX,
                step: 0,
            },
        })
        .collect()
}

/// Prefills `new` prompts (right-padded: column = position) into the cache slots `slots` and
/// returns their first sampled tokens and log-probs.
fn prefill(
    model: &Transformer,
    weights: &DecodeWeights,
    cache: &mut StaticKvCache,
    new: &[GenRequest],
    slots: &[usize],
    opts: &GenOptions,
) -> Result<(Vec<u32>, Vec<f32>)> {
    let device = model.device();
    let longest = new.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let (rows, len) = prefill_shape(
        new.len(),
        longest,
        cache.slots(),
        cache.capacity(),
        is_wgpu(&device),
    );
    // Rows past the requests are empty prompts (all padding): computed, never stored or read.
    let mut prompts: Vec<Vec<u32>> = new.iter().map(|r| r.prompt.clone()).collect();
    prompts.resize(rows, vec![]);
    let input = StepInput::right_padded_to(&prompts, opts.pad_id, len);
    let mut fresh = KvCache::new(model.num_layers());
    let hidden = model.forward_hidden(&input, Some(&mut fresh)); // [rows, len, h]
    let [n, s, h] = hidden.dims();
    let last: Vec<u32> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i * s + p.len().max(1) - 1) as u32)
        .collect();
    let last = hidden
        .reshape([n * s, h])
        .select(0, ids_tensor(&last, &device)); // [rows, h]
    cache.load_rows(fresh, slots);
    let ids = (0..n)
        .map(|i| DrawId {
            // A padding row's draw is never read; its id only has to be some id.
            request: new.get(i).map_or(u32::MAX, |r| r.index),
            step: 0,
        })
        .collect();
    let sampler = BatchSampler::new(vec![opts.sampling; n], ids, &device)?;
    let (mut tokens, mut logprobs) = read_samples(sampler.draw(weights.logits(last))?.0)?;
    tokens.truncate(new.len());
    logprobs.truncate(new.len());
    Ok((tokens, logprobs))
}

/// The `(rows, length)` a prefill of `n` prompts of at most `longest` tokens runs at. Where
/// kernels are compiled (and matmuls autotuned) per shape, `bucketed`, the rows go up to a power
/// of two (at most `slots`) and the length to its [`bucketed_len`] (at most `capacity`, a
/// multiple of [`crate::model::static_cache::CAPACITY_BUCKET`]), so a run's refills reuse a few shapes instead of compiling
/// one per prompt mix; the extra rows and columns are right padding. The CPU backend compiles
/// nothing and keeps the exact shape.
pub fn prefill_shape(
    n: usize,
    longest: usize,
    slots: usize,
    capacity: usize,
    bucketed: bool,
) -> (usize, usize) {
    if !bucketed {
        return (n, longest);
    }
    let rows = n.next_power_of_two().min(slots).max(n);
    (rows, bucketed_len(longest).min(capacity).max(longest))
}

/// Generates a continuation for every request, calling `on_finished` as each one completes (in
/// completion order). Returns the number of decoding steps taken (prefills included).
///
/// The batch has `min(batch_size, requests)` slots in a preallocated cache sized for the longest
/// prompt plus `max_new_tokens`. Each step decodes every slot, with the sampled tokens staying on
/// the device as the next step's input; the host reads them back every [`READBACK_EVERY`] steps,
/// retires the rows that stopped and refills their slots once a quarter of them are free.
pub fn generate(
    model: &Transformer,
    requests: &[GenRequest],
    opts: &GenOptions,
    on_finished: impl FnMut(Finished) -> Result<()>,
) -> Result<usize> {
    generate_observed(model, requests, opts, on_finished, |_| {}).map(|s| s.steps)
}

/// What the engine did, counted in code as it runs (for `wgspin bench generate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Forward passes: prefills and decode steps.
    pub steps: usize,
    /// Decode steps (one token for every slot).
    pub decode_steps: usize,
    /// Blocking device→host reads of sampled tokens (prefills included).
    pub reads: usize,
    /// Host→device tensor uploads of the decode loop: the batch state rebuilt after a refill
    /// (prefills, which upload their prompts, are not counted; a decode step uploads nothing).
    pub uploads: usize,
    /// Bytes of the preallocated KV cache (every layer's keys and values).
    pub kv_cache_bytes: usize,
}

/// [`generate`], calling `on_step` with the running counts after every decode step is enqueued.
pub fn generate_observed(
    model: &Transformer,
    requests: &[GenRequest],
    opts: &GenOptions,
    mut on_finished: impl FnMut(Finished) -> Result<()>,
    mut on_step: impl FnMut(&GenStats),
) -> Result<GenStats> {
    opts.validate()?;
    if let Some(r) = requests.iter().find(|r| r.prompt.is_empty()) {
        return Err(Error::Invalid(format!(
            "request {} has an empty prompt (the model needs at least one token to start from)",
            r.index
        )));
    }
    let mut stats = GenStats::default();
    if requests.is_empty() {
        return Ok(stats);
    }
    let device = model.device();
    let slots = opts.batch_size.min(requests.len());
    let max_prompt = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(1);
    let mut cache = StaticKvCache::new(model, slots, capacity_for(max_prompt, opts.max_new_tokens));
    stats.kv_cache_bytes = cache.bytes();
    let weights = DecodeWeights::new(model);
    // Refill once a quarter of the slots are free: prefilling one row at a time would cost a
    // forward pass per finished row.
    let refill_at = (slots / 4).max(1);
    let mut rows: Vec<Option<Row>> = (0..slots).map(|_| None).collect();
    let mut next = 0;
    // Device state of the running batch, rebuilt from the host after each refill.
    let mut tokens_dev: Option<Tensor<1, Int>> = None;
    let mut pos_dev: Option<Tensor<1, Int>> = None;
    let mut sampler: Option<BatchSampler> = None;
    let mut pending: Vec<Tensor<2>> = vec![];
    let mut refilled = false;
    loop {
        read_back(&mut pending, &mut rows, opts, &mut stats)?;
        retire_finished(&mut rows, &mut on_finished)?;
        let free: Vec<usize> = (0..slots).filter(|&s| rows[s].is_none()).collect();
        let running = slots - free.len();
        if next < requests.len() && (running == 0 || free.len() >= refill_at) {
            let take = free.len().min(requests.len() - next);
            let new = &requests[next..next + take];
            next += take;
            let (first, lps) = prefill(model, &weights, &mut cache, new, &free[..take], opts)?;
            stats.reads += 1;
            for ((r, &slot), (t, lp)) in new.iter().zip(&free).zip(first.into_iter().zip(lps)) {
                rows[slot] = Some(Row::start(r, t, lp, opts));
            }
            stats.steps += 1;
            refilled = true;
        }
        if rows.iter().all(Option::is_none) {
            return Ok(stats);
        }
        // A new row may already be done (a stop id first, or a limit of one token).
        if rows.iter().flatten().any(|r| r.finished.is_some()) {
            continue;
        }
        if refilled {
            let (t, p, smp) = upload_batch(&rows, opts, &device)?;
            stats.uploads += 2 + smp.uploads();
            (tokens_dev, pos_dev, sampler) = (Some(t), Some(p), Some(smp));
            refilled = false;
        }
        let (Some(tokens), Some(pos), Some(smp)) = (&mut tokens_dev, &mut pos_dev, &mut sampler)
        else {
            return Err(Error::Invalid("internal: decode state missing".into()));
        };
        // Decode until the next read-back, or until every row is known to hit its limit.
        let budget = rows
            .iter()
            .flatten()
            .map(|r| opts.max_new_tokens - r.tokens.len())
            .max()
            .unwrap_or(0)
            .min(READBACK_EVERY);
        for _ in 0..budget {
            let longest = rows.iter().flatten().map(|r| r.next_pos).max().unwrap_or(0);
            let attend = (longest + 1).next_multiple_of(LEN_BUCKET);
            let step = cache.step(pos, attend);
            let logits = model.decode_step(&weights, tokens.clone(), &step, &mut cache);
            let (out, next) = smp.draw(logits)?; // [slots, 2], [slots]
            *tokens = next;
            // Idle slots keep decoding garbage; clamping keeps their writes inside the cache.
            *pos = pos
                .clone()
                .add_scalar(1)
                .clamp_max(cache.capacity() as i64 - 1);
            smp.advance();
            for r in rows.iter_mut().flatten() {
                r.next_pos += 1;
            }
            pending.push(out);
            stats.steps += 1;
            stats.decode_steps += 1;
            on_step(&stats);
        }
    }
}

/// Feeds the rows what the device decoded since the last read-back, in step order.
fn read_back(
    pending: &mut Vec<Tensor<2>>,
    rows: &mut [Option<Row>],
    opts: &GenOptions,
    stats: &mut GenStats,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let steps = read_samples_many(std::mem::take(pending))?;
    stats.reads += 1;
    for (tokens, lps) in steps {
        for (row, (t, lp)) in rows.iter_mut().zip(tokens.into_iter().zip(lps)) {
            if let Some(row) = row {
                row.push(t, lp, opts);
            }
        }
    }
    Ok(())
}

/// Hands the finished rows over and frees their slots.
fn retire_finished(
    rows: &mut [Option<Row>],
    on_finished: &mut impl FnMut(Finished) -> Result<()>,
) -> Result<()> {
    for row in rows.iter_mut() {
        if let Some(r) = row.take_if(|r| r.finished.is_some()) {
            on_finished(Finished {
                index: r.index,
                tokens: r.tokens,
                finish_reason: r.finished.expect("taken for being finished"),
                logprob: r.logprob,
            })?;
        }
    }
    Ok(())
}

/// The running batch as the host knows it now (it has read everything back), on the device:
/// each slot's last token and position, and its sampler.
fn upload_batch(
    rows: &[Option<Row>],
    opts: &GenOptions,
    device: &Device,
) -> Result<(Tensor<1, Int>, Tensor<1, Int>, BatchSampler)> {
    let last: Vec<u32> = rows
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.tokens.last().copied()))
        .map(|t| t.unwrap_or(opts.pad_id))
        .collect();
    let pos: Vec<u32> = rows
        .iter()
        .map(|r| r.as_ref().map_or(0, |r| r.next_pos as u32))
        .collect();
    let smp = BatchSampler::new(vec![opts.sampling; rows.len()], draw_ids(rows), device)?;
    Ok((ids_tensor(&last, device), ids_tensor(&pos, device), smp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::static_cache::MIN_BUCKET_LEN;

    #[test]
    fn prefill_shapes_cover_their_prompts_in_few_buckets() {
        let (slots, capacity) = (24, 1024);
        assert_eq!(prefill_shape(5, 37, slots, capacity, false), (5, 37));
        let mut shapes = std::collections::BTreeSet::new();
        for n in 1..=slots {
            for longest in 1..=capacity - 8 {
                let (rows, len) = prefill_shape(n, longest, slots, capacity, true);
                assert!((n..=slots).contains(&rows), "rows {rows} for {n}");
                assert!(
                    (longest..=capacity).contains(&len),
                    "len {len} for {longest}"
                );
                // At most twice the work in each dimension (beyond the shortest bucket).
                assert!(rows < 2 * n && len < 2 * longest.max(MIN_BUCKET_LEN));
                shapes.insert((rows, len));
            }
        }
        // Rows 1, 2, 4, 8, 16, 24; lengths 16 … 256 (5) and 512, 768, 1024.
        assert_eq!(shapes.len(), 6 * 8);
    }
}

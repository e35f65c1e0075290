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

pub mod job;

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::kernels::sample::{DrawId, SamplingParams, sample};
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

struct Row {
    index: u32,
    /// Position of the next token fed to the model.
    next_pos: usize,
    tokens: Vec<u32>,
    logprob: f64,
    finished: Option<FinishReason>,
}

impl Row {
    fn push(&mut self, token: u32, logprob: f32, opts: &GenOptions) {
        self.tokens.push(token);
        self.logprob += logprob as f64;
        if opts.stop_ids.contains(&token) {
            self.finished = Some(FinishReason::Eos);
        } else if self.tokens.len() >= opts.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
    }
}

/// Logits of the last position of every row: `hidden [b, s, h]` → `[b, vocab]`.
fn last_logits(model: &Transformer, hidden: Tensor<3>) -> Tensor<2> {
    let [b, s, h] = hidden.dims();
    model.logits(hidden.slice([0..b, s - 1..s, 0..h]).reshape([b, h]))
}

/// Generates a continuation for every request, calling `on_finished` as each one completes (in
/// completion order). Returns the number of decoding steps taken (prefills included).
pub fn generate(
    model: &Transformer,
    requests: &[GenRequest],
    opts: &GenOptions,
    mut on_finished: impl FnMut(Finished) -> Result<()>,
) -> Result<usize> {
    opts.sampling.validate()?;
    if opts.batch_size == 0 || opts.max_new_tokens == 0 {
        return Err(Error::Invalid(
            "batch size and max new tokens must be at least 1".into(),
        ));
    }
    if let Some(r) = requests.iter().find(|r| r.prompt.is_empty()) {
        return Err(Error::Invalid(format!(
            "request {} has an empty prompt (the model needs at least one token to start from)",
            r.index
        )));
    }
    let batch = opts.batch_size;
    // Refill once a quarter of the slots are free: prefilling one row at a time would cost a
    // forward pass per finished row.
    let refill_at = (batch / 4).max(1);
    let mut cache = KvCache::new(model.num_layers());
    let mut rows: Vec<Row> = vec![];
    let mut next = 0;
    let mut steps = 0;
    let params = |rows: &[Row]| -> (Vec<SamplingParams>, Vec<DrawId>) {
        rows.iter()
            .map(|r| {
                (
                    opts.sampling,
                    DrawId {
                        request: r.index,
                        step: r.tokens.len() as u32,
                    },
                )
            })
            .unzip()
    };
    loop {
        // Retire finished rows.
        if rows.iter().any(|r| r.finished.is_some()) {
            let keep: Vec<usize> = (0..rows.len())
                .filter(|&i| rows[i].finished.is_none())
                .collect();
            cache.select_rows(&keep);
            let mut kept = vec![];
            for r in rows.drain(..) {
                match r.finished {
                    Some(reason) => on_finished(Finished {
                        index: r.index,
                        tokens: r.tokens,
                        finish_reason: reason,
                        logprob: r.logprob,
                    })?,
                    None => kept.push(r),
                }
            }
            rows = kept;
        }
        // Refill free slots with the next prompts.
        let free = batch - rows.len();
        if next < requests.len() && (rows.is_empty() || free >= refill_at) {
            let take = free.min(requests.len() - next);
            let new = &requests[next..next + take];
            next += take;
            let prompts: Vec<Vec<u32>> = new.iter().map(|r| r.prompt.clone()).collect();
            let mut fresh = KvCache::new(model.num_layers());
            let input = crate::decode::left_padded(&prompts, opts.pad_id);
            let logits = last_logits(model, model.forward_hidden(&input, Some(&mut fresh)));
            let mut new_rows: Vec<Row> = new
                .iter()
                .map(|r| Row {
                    index: r.index,
                    next_pos: r.prompt.len(),
                    tokens: vec![],
                    logprob: 0.0,
                    finished: None,
                })
                .collect();
            let (p, ids) = params(&new_rows);
            let (tokens, lps) = sample(logits, &p, &ids)?;
            for ((row, t), lp) in new_rows.iter_mut().zip(tokens).zip(lps) {
                row.push(t, lp, opts);
            }
            cache.append_rows(fresh);
            rows.extend(new_rows);
            steps += 1;
            continue;
        }
        if rows.is_empty() {
            return Ok(steps);
        }
        // One decoding step for every running row.
        let input = StepInput {
            tokens: rows
                .iter()
                .map(|r| vec![*r.tokens.last().unwrap_or(&0)])
                .collect(),
            positions: rows.iter().map(|r| vec![Some(r.next_pos)]).collect(),
        };
        let logits = last_logits(model, model.forward_hidden(&input, Some(&mut cache)));
        let (p, ids) = params(&rows);
        let (tokens, lps) = sample(logits, &p, &ids)?;
        for ((row, t), lp) in rows.iter_mut().zip(tokens).zip(lps) {
            row.next_pos += 1;
            row.push(t, lp, opts);
        }
        steps += 1;
    }
}

//! Scoring: log π(response | prompt) summed over response tokens (prompt masked, eos appended),
//! batched with right padding. Only positions that predict a response token reach the lm_head,
//! and they do so in chunks through the fused log-prob op (`kernels::logprobs::head_logprobs`), so
//! memory beyond the activations is `O(chunk × vocab)`.

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::hf::chat_template::Message;
use crate::hf::tokenizer::ChatTokenizer;
use crate::kernels::common::is_cpu;
use crate::kernels::logprobs::head_logprobs;
use crate::model::static_cache::bucketed_len;
use crate::model::{StepInput, Transformer};

/// A tokenized (prompt, response) pair; `response` ends with eos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl TokenizedPair {
    /// Tokenizes a single-turn prompt and its response by the shared rule (see
    /// [`crate::hf::tokenizer`]).
    pub fn new(tok: &ChatTokenizer, prompt: &str, response: &str) -> Result<Self> {
        Self::chat(tok, &[], prompt, response)
    }

    /// Tokenizes the response to the conversation `history + [user: prompt]` by the shared rule.
    pub fn chat(
        tok: &ChatTokenizer,
        history: &[Message],
        prompt: &str,
        response: &str,
    ) -> Result<Self> {
        let prompt_ids = tok.chat_prompt_ids(history, prompt)?;
        Ok(Self {
            prompt: prompt_ids,
            response: tok.response_ids(response)?,
        })
    }

    /// Model input: prompt + response without its last token (nothing is predicted after it).
    fn input(&self) -> Vec<u32> {
        let mut ids = self.prompt.clone();
        ids.extend_from_slice(&self.response[..self.response.len() - 1]);
        ids
    }
}

/// Options of the scoring pass.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Upper bound on `positions × vocab` logits computed at once; 0 = the device's
    /// [`crate::device::logits_budget`].
    pub max_logits: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_logits: 0,
        }
    }
}

/// Flattened `[batch·seq]` indices of the positions whose next token is a response token, the
/// targets (right-padded rows of width `seq`).
fn response_positions(pairs: &[TokenizedPair], seq: usize) -> (Vec<i32>, Vec<i32>) {
    let mut index = vec![];
    let mut targets = vec![];
    for (row, pair) in pairs.iter().enumerate() {
        let first = pair.prompt.len() - 1;
        for (j, &t) in pair.response.iter().enumerate() {
            index.push((row * seq + first + j) as i32);
            targets.push(t as i32);
        }
    }
    (index, targets)
}

/// Log-probs of every response token of `pairs`, in order `[Σ response lengths]`, from one
/// forward pass. Differentiable when the model lives on an autodiff device. The training forward
/// itself ([`forward`], without dropout), so a reference scored here and the policy it starts
/// as compute the same numbers.
pub fn response_token_logprobs(
    model: &Transformer,
    pairs: &[TokenizedPair],
    pad_id: u32,
    max_logits: usize,
) -> Tensor<1> {
    forward(model, pairs, pad_id, max_logits, None)
}

/// Seeds the device generator for layer `layer` of this forward pass (`seed`: the pass's).
pub(super) fn seed_layer(model: &Transformer, seed: Option<u64>, layer: usize) {
    if let Some(s) = seed {
        let mut rng = crate::rng::SplitMix64(s ^ (layer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A));
        model.device().seed(rng.next());
    }
}

/// Token log-probs of `pairs`' responses `[Σ response lengths]`, differentiable, through the
/// same layer-by-layer path (and dropout seeds) as gradient checkpointing's backward (in
/// `recompute.rs`), keeping every activation.
pub fn forward(
    model: &Transformer,
    pairs: &[TokenizedPair],
    pad_id: u32,
    max_logits: usize,
    dropout_seed: Option<u64>,
) -> Tensor<1> {
    let input = model_input(model, pairs, pad_id);
    let ctx = model.pass_context(&input);
    let mut x = model.embed_tokens(&input); // [b, s, hidden]
    for (l, layer) in model.layers.iter().enumerate() {
        seed_layer(model, dropout_seed, l);
        x = layer.forward(x, &ctx.step(layer.kind), None);
    }
    head_token_logprobs(model, model.norm.forward(x), pairs, max_logits)
}

/// The right-padded model input of `pairs` for `model`: prompt + response without its last
/// token, padded to the longest row, or on a device that compiles per shape to that row's
/// [`bucketed_len`] (so training and scoring stop compiling and autotuning after their first
/// steps; the extra columns are padding no real query sees).
pub fn model_input(model: &Transformer, pairs: &[TokenizedPair], pad_id: u32) -> StepInput {
    let rows: Vec<Vec<u32>> = pairs.iter().map(TokenizedPair::input).collect();
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = if is_cpu(&model.device().without_autodiff()) {
        longest
    } else {
        bucketed_len(longest)
    };
    StepInput::right_padded_to(&rows, pad_id, width)
}

/// The lm_head part of [`response_token_logprobs`]: log-probs of every response token from the
/// final hidden states `[b, seq, hidden]` of [`model_input`].
pub fn head_token_logprobs(
    model: &Transformer,
    hidden: Tensor<3>,
    pairs: &[TokenizedPair],
    max_logits: usize,
) -> Tensor<1> {
    let device = hidden.device();
    let [b, seq, h] = hidden.dims();
    let hidden = hidden.reshape([b * seq, h]);
    let (index, targets) = response_positions(pairs, seq);
    let n = index.len();
    let vocab = model.head_weight().dims()[0];
    let budget = match max_logits {
        0 => crate::device::logits_budget(&device),
        n => n,
    };
    let chunk = (budget / vocab).max(1);
    crate::device::traffic::uploaded(2);
    let idx = Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &device);
    let tgt = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &device);
    // Only response positions reach the lm_head, `chunk` at a time (fused WGSL log-prob on wgpu).
    let head = crate::model::precision::like(model.head_weight(), hidden.dtype());
    head_logprobs(hidden.select(0, idx), head, tgt, chunk) // [n]
}

/// Per-pair sums `[pairs]` of token log-probs `lp [Σ response lengths]` laid out as
/// [`response_token_logprobs`] returns them; differentiable.
pub fn sequence_sums(lp: Tensor<1>, pairs: &[TokenizedPair]) -> Tensor<1> {
    let n = lp.dims()[0];
    // Segment sums as a [pairs, n] 0/1 matrix product: tiny next to the forward pass.
    let mut seg = vec![0f32; pairs.len() * n];
    let mut at = 0;
    for (row, pair) in pairs.iter().enumerate() {
        for _ in 0..pair.response.len() {
            seg[row * n + at] = 1.0;
            at += 1;
        }
    }
    crate::device::traffic::uploaded(1);
    let seg = Tensor::<2>::from_data(TensorData::new(seg, [pairs.len(), n]), &lp.device());
    seg.matmul(lp.reshape([n, 1])).reshape([pairs.len()])
}

/// Per-token log-probs of each pair's response tokens, for one batch (one forward pass).
pub fn score_batch(
    model: &Transformer,
    pairs: &[TokenizedPair],
    pad_id: u32,
    max_logits: usize,
) -> Result<Vec<Vec<f32>>> {
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let lp = response_token_logprobs(model, pairs, pad_id, max_logits);
    let out = lp
        .try_into_data()
        .map_err(|e| Error::Device(format!("reading log-probs back failed: {e:?}")))?
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Device(format!("reading log-probs back failed: {e:?}")))?;
    let mut result = vec![];
    let mut at = 0;
    for pair in pairs {
        result.push(out[at..at + pair.response.len()].to_vec());
        at += pair.response.len();
    }
    Ok(result)
}

/// Scores all pairs, batching sequences of similar length together; results in input order.
pub fn score_all(
    model: &Transformer,
    pairs: &[TokenizedPair],
    pad_id: u32,
    opts: ScoreOptions,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].prompt.len() + pairs[i].response.len()));
    let mut result = vec![vec![]; pairs.len()];
    for batch in order.chunks(opts.batch_size.max(1)) {
        let items: Vec<TokenizedPair> = batch.iter().map(|&i| pairs[i].clone()).collect();
        for (&i, lp) in batch
            .iter()
            .zip(score_batch(model, &items, pad_id, opts.max_logits)?)
        {
            result[i] = lp;
        }
        progress(batch.len());
    }
    Ok(result)
}

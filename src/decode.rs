//! Greedy decoding with the KV cache: batched prefill of left-padded prompts, then one token per
//! row per step. The basis the sampling generator builds on; used to check parity with
//! transformers' greedy `generate`.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::model::{KvCache, StepInput, Transformer};

/// Left-pads prompts so that every row's last prompt token sits in the last slot.
pub fn left_padded(prompts: &[Vec<u32>], pad_id: u32) -> StepInput {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut tokens = vec![];
    let mut positions = vec![];
    for p in prompts {
        let pad = len - p.len();
        let mut t = vec![pad_id; pad];
        t.extend(p);
        tokens.push(t);
        positions.push((0..len).map(|i| i.checked_sub(pad)).collect());
    }
    StepInput { tokens, positions }
}

/// Argmax of the last position of each row: `logits` `[batch, seq, vocab]`.
pub fn argmax_last(logits: Tensor<3>) -> Result<Vec<u32>> {
    let [b, s, v] = logits.dims();
    let last = logits.slice([0..b, s - 1..s, 0..v]).reshape([b, v]);
    let ids = last
        .argmax(1)
        .try_into_data()
        .map_err(|e| Error::Device(format!("reading tokens back failed: {e:?}")))?
        .try_into_vec_as::<i64>()
        .map_err(|e| Error::Device(format!("reading tokens back failed: {e:?}")))?;
    Ok(ids.into_iter().map(|t| t as u32).collect())
}

/// Greedy continuation of each prompt: up to `max_new` tokens, a row stops after emitting any of
/// `stop_ids` (which is kept as its last token).
pub fn greedy(
    model: &Transformer,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop_ids: &[u32],
    pad_id: u32,
) -> Result<Vec<Vec<u32>>> {
    let mut cache = KvCache::new(model.num_layers());
    let input = left_padded(prompts, pad_id);
    let mut next_pos: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut out = vec![vec![]; prompts.len()];
    let mut done = vec![false; prompts.len()];
    let mut tokens = argmax_last(model.forward(&input, Some(&mut cache)))?;
    for _ in 0..max_new {
        for (row, &t) in tokens.iter().enumerate() {
            if !done[row] {
                out[row].push(t);
                done[row] = stop_ids.contains(&t);
            }
        }
        if done.iter().all(|&d| d) || out.iter().all(|o| o.len() >= max_new) {
            break;
        }
        let step = StepInput {
            tokens: tokens.iter().map(|&t| vec![t]).collect(),
            positions: next_pos
                .iter()
                .zip(&done)
                .map(|(&p, &d)| vec![(!d).then_some(p)])
                .collect(),
        };
        for p in &mut next_pos {
            *p += 1;
        }
        tokens = argmax_last(model.forward(&step, Some(&mut cache)))?;
    }
    Ok(out)
}

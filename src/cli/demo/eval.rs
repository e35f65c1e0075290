//! Scoring a demo model: exact match of greedy answers and the log-likelihood per token of the
//! human answers, on a split of held-out prompts.

use std::path::Path;

use burn::tensor::Device;

use wgspin::data::SftExample;
use wgspin::error::Result;
use wgspin::generate::{GenOptions, GenRequest, generate};
use wgspin::kernels::sample::SamplingParams;
use wgspin::load::bundle::ModelBundle;
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};

/// A model's scores on one split.
#[derive(Debug, Clone, Copy)]
pub struct Scores {
    /// Share of prompts whose greedy answer is exactly the expected one.
    pub exact_match: f64,
    /// Mean log-likelihood per token of the human answers (higher is better).
    pub loglik_per_token: f64,
}

/// Scores the model in `path` on `heldout`.
pub fn evaluate(path: &Path, heldout: &[SftExample], device: &Device) -> Result<Scores> {
    let b = ModelBundle::load(path, device)?;
    let tok = &b.tokenizer;
    let requests = heldout
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(GenRequest {
                index: i as u32,
                prompt: tok.prompt_ids(&e.prompt)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let longest = heldout
        .iter()
        .map(|e| e.response.chars().count())
        .max()
        .unwrap_or(1);
    let opts = GenOptions {
        batch_size: 32,
        max_new_tokens: longest + 2,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop_ids: vec![tok.eos_token_id],
        pad_id: tok.pad_id(),
    };
    let mut correct = 0;
    generate(&b.model, &requests, &opts, |f| {
        let ids: Vec<u32> = f
            .tokens
            .iter()
            .copied()
            .filter(|&t| t != tok.eos_token_id)
            .collect();
        let text = tok.decode(&ids, true)?;
        if text.trim() == heldout[f.index as usize].response {
            correct += 1;
        }
        Ok(())
    })?;
    let pairs = heldout
        .iter()
        .map(|e| TokenizedPair::new(tok, &e.prompt, &e.response))
        .collect::<Result<Vec<_>>>()?;
    let lps = score_all(
        &b.model,
        &pairs,
        opts.pad_id,
        ScoreOptions::default(),
        |_| {},
    )?;
    let (sum, n) = lps
        .iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), &x| (s + x as f64, n + 1));
    Ok(Scores {
        exact_match: correct as f64 / heldout.len().max(1) as f64,
        loglik_per_token: sum / n.max(1) as f64,
    })
}

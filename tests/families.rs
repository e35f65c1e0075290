//! The families added as data (`hf/arch/`): Qwen3 (per-head q/k norms, its own head_dim) and
//! Gemma 3 (`(1 + w)` norms, sandwich norms, GELU-tanh, √hidden embeddings, sliding and full
//! layers with their own RoPE, query_pre_attn_scalar) against transformers in float64
//! (`tests/fixtures/make_family_fixtures.py`, bf16 checkpoints, each family's shipped chat
//! template). Tolerances: a sequence's summed log-prob within 2e-4 of float64 on every device
//! (transformers' own f32 error class), greedy tokens identical. The fixtures are in
//! `TINY_MODELS` too, so `tests/parity.rs` checks their chat templates' ids against transformers
//! and every model test runs them on the CPU backend.

mod common;

use common::*;
use wgspin::ModelBundle;
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};

const FAMILIES: &[&str] = &["tiny-qwen3-bf16", "tiny-gemma3-bf16", "tiny-gemma3-6l-bf16"];

/// Absolute tolerance on a sequence's summed log-prob against float64.
const TOL: f64 = 2e-4;

#[test]
fn logprobs_match_float64_on_every_device() {
    for dev in devices() {
        for name in FAMILIES {
            let dir = fixture(name);
            let r = reference(&dir);
            let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
            let pairs: Vec<TokenizedPair> = r.cases.iter().map(RefCase::pair).collect();
            // One batch of every case (padding), then pairs (a batch per two cases).
            let sizes = if dev.is_gpu {
                vec![pairs.len()]
            } else {
                vec![pairs.len(), 2]
            };
            for batch_size in sizes {
                let opts = ScoreOptions {
                    batch_size,
                    max_logits: 1000,
                };
                let got = score_all(&bundle.model, &pairs, 0, opts, |_| {}).unwrap();
                let worst = r
                    .cases
                    .iter()
                    .zip(&got)
                    .map(|(c, lp)| (lp.iter().map(|&x| x as f64).sum::<f64>() - c.logprob).abs())
                    .fold(0.0, f64::max);
                eprintln!(
                    "{name} on {} (batch {batch_size}): max |Δ summed log-prob| {worst:.2e} vs float64",
                    dev.description
                );
                for (c, lp) in r.cases.iter().zip(&got) {
                    let sum: f64 = lp.iter().map(|&x| x as f64).sum();
                    assert!(
                        (sum - c.logprob).abs() <= TOL,
                        "{name} on {} (batch {batch_size}): {sum} vs float64 {} for {:?}",
                        dev.description,
                        c.logprob,
                        c.prompt
                    );
                }
            }
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_on_every_device() {
    for dev in devices() {
        for name in FAMILIES {
            let dir = fixture(name);
            let r = reference(&dir);
            let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
            // The software GPU runs one prompt; the CPU backend all three in one batch.
            let n = if dev.is_gpu { 1 } else { r.greedy.len() };
            let prompts: Vec<Vec<u32>> =
                r.greedy[..n].iter().map(|g| g.prompt_ids.clone()).collect();
            let max_new = r.greedy[0].tokens.len();
            let got = run_generate(&bundle, &prompts, &greedy_opts(n, max_new, vec![]));
            for (g, got) in r.greedy.iter().zip(&got) {
                assert_eq!(got, &g.tokens, "{name} on {}", dev.description);
            }
        }
    }
}

//! Summed log-probs of a real model against a float64 reference (`tests/fixtures/
//! smollm2_f64_reference.json`, made by `make_smollm2_f64.py` with transformers in float64 on the
//! SmolLM2-135M-Instruct GGUF dequantized to f32).
//!
//! Why a real model: its peaked next-token distributions make the log-sum-exp add tens of thousands of
//! tiny terms onto one near 1, which an f32 accumulator rounds away — every token then comes out
//! slightly too likely, and the error grows with the response length. Random tiny models have flat
//! distributions and hide that. The tolerance is transformers' own f32 error class: 2e-4 per
//! sequence (its f32 run is within 6e-5 of f64 on these cases, recorded in the fixture).
//! Needs `WGSPIN_SMOLLM2_GGUF` (set by `.ci/run`).

mod common;

use common::*;
use wgspin::ModelBundle;
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};

/// Absolute tolerance on a sequence's summed log-prob.
const TOL: f64 = 2e-4;

#[derive(serde::Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
    token_logprobs_f64: Vec<f64>,
    logprob_f64: f64,
    logprob_transformers_f32: f64,
}

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixture_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("smollm2_f64_reference.json")).unwrap();
    serde_json::from_str::<Fixture>(&text).unwrap().cases
}

/// Scores `cases` on `dev` and checks each sum against float64.
fn check(dev: &wgspin::device::ComputeDevice, cases: &[&Case]) {
    let Some(path) = smollm2_gguf() else { return };
    let bundle = ModelBundle::load(&path, &dev.device).unwrap();
    let pairs: Vec<TokenizedPair> = cases
        .iter()
        .map(|c| TokenizedPair {
            prompt: c.prompt_ids.clone(),
            response: c.response_ids.clone(),
        })
        .collect();
    let opts = ScoreOptions {
        batch_size: pairs.len(),
        ..Default::default()
    };
    let got = score_all(&bundle.model, &pairs, 2, opts, |_| {}).unwrap();
    let mut failures = vec![];
    for (c, lp) in cases.iter().zip(&got) {
        assert_eq!(lp.len(), c.token_logprobs_f64.len());
        let sum: f64 = lp.iter().map(|&x| x as f64).sum();
        let err = sum - c.logprob_f64;
        let above = lp
            .iter()
            .zip(&c.token_logprobs_f64)
            .filter(|(a, b)| **a as f64 > **b)
            .count();
        eprintln!(
            "{} {:3} tokens: error {err:+.2e} ({above} tokens above f64; transformers f32 {:+.2e})",
            dev.description,
            lp.len(),
            c.logprob_transformers_f32 - c.logprob_f64
        );
        if err.abs() > TOL {
            failures.push(format!("{} tokens: {sum} vs {}", lp.len(), c.logprob_f64));
        }
    }
    assert!(
        failures.is_empty(),
        "summed log-probs off float64 by more than {TOL} on {}: {failures:?}",
        dev.description
    );
}

#[test]
fn smollm2_logprobs_match_float64_on_cpu() {
    let cases = fixture_cases();
    check(
        &wgspin::device::cpu_device(),
        &cases.iter().collect::<Vec<_>>(),
    );
}

/// The wgpu leg scores the longest and the shortest case (lavapipe runs the 135M model slowly).
#[test]
fn smollm2_logprobs_match_float64_on_gpu() {
    let cases = fixture_cases();
    let Some(dev) = devices().into_iter().find(|d| d.is_gpu) else {
        eprintln!("skipped: no wgpu adapter");
        return;
    };
    let longest = cases.iter().max_by_key(|c| c.response_ids.len()).unwrap();
    let shortest = cases.iter().min_by_key(|c| c.response_ids.len()).unwrap();
    check(&dev, &[longest, shortest]);
}

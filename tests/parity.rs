//! Parity with Hugging Face transformers on the tiny random fixtures (llama bf16 with llama3 RoPE,
//! tied embeddings and head_dim ≠ hidden/heads; sharded qwen2 f32 with biases and MQA; mistral f16
//! with linear RoPE and a Llama-2 template) on every available device.
//! Tolerances: per-sequence log-prob within 1e-3 relative (the bar), per-token log-prob
//! within 2e-4 absolute, argmax identical, last-position logits within 1e-3 absolute.

mod common;

use common::*;
use wgspin::ModelBundle;
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};

#[test]
fn tokenization_matches_transformers() {
    for name in TINY_MODELS {
        let dir = fixture(name);
        let r = reference(&dir);
        let cfg = wgspin::hf::config::ModelConfig::from_dir(&dir).unwrap();
        let tok = wgspin::hf::tokenizer::ChatTokenizer::from_dir(&dir, &cfg.eos_token_ids).unwrap();
        assert_reference_ids(&tok, &r.cases, name);
    }
}

#[test]
fn logprobs_match_transformers_batched() {
    each_model_on_each_device(|dev, name, r, bundle| {
        let pairs: Vec<TokenizedPair> = r.cases.iter().map(RefCase::pair).collect();
        // All cases in one batch: lengths differ, so padding is exercised; then, on the CPU
        // backend (the software GPU is slow), batch size 2.
        let sizes = if dev.is_gpu {
            vec![pairs.len()]
        } else {
            vec![pairs.len(), 2]
        };
        for batch_size in sizes {
            let opts = ScoreOptions {
                batch_size,
                max_logits: 1000, // forces several lm_head chunks per batch
            };
            let got = score_all(&bundle.model, &pairs, 0, opts, |_| {}).unwrap();
            for (c, lp) in r.cases.iter().zip(&got) {
                let sum: f64 = lp.iter().map(|&x| x as f64).sum();
                let e = rel(sum, c.logprob);
                assert!(
                    e < 1e-3,
                    "{name} on {}: logprob {sum} vs {} (rel {e:e})",
                    dev.description,
                    c.logprob
                );
                for (a, b) in lp.iter().zip(&c.token_logprobs) {
                    assert!(
                        (*a as f64 - b).abs() < 2e-4,
                        "{name}: token logprob {a} vs {b}"
                    );
                }
            }
        }
    });
}

#[test]
fn argmax_and_last_logits_match_transformers() {
    use wgspin::model::StepInput;
    each_model_on_each_device(|dev, name, r, bundle| {
        // Every case in one right-padded batch.
        let rows: Vec<Vec<u32>> = r.cases.iter().map(RefCase::ids).collect();
        let logits = bundle
            .model
            .forward(&StepInput::right_padded(&rows, 0), None); // [b, s, v]
        let [_, s, v] = logits.dims();
        let data = floats(logits);
        for (b, (c, ids)) in r.cases.iter().zip(&rows).enumerate() {
            let at = |pos: usize| &data[(b * s + pos) * v..(b * s + pos + 1) * v];
            let first = c.prompt_ids.len() - 1;
            for (j, want) in c.argmax.iter().enumerate() {
                let row = at(first + j);
                let got = (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32;
                assert_eq!(
                    got, *want,
                    "{name} on {}: argmax at response position {j}",
                    dev.description
                );
            }
            for (a, b) in at(ids.len() - 1).iter().zip(&c.last_logits) {
                assert!((a - b).abs() < 1e-3, "{name}: last logit {a} vs {b}");
            }
        }
    });
}

#[test]
fn cpu_and_gpu_agree() {
    let devs = devices();
    if devs.len() < 2 {
        eprintln!("note: only the CPU backend is available; nothing to compare");
        return;
    }
    let dir = fixture(GPU_MODEL);
    let r = reference(&dir);
    let pairs: Vec<TokenizedPair> = r.cases.iter().map(RefCase::pair).collect();
    let results: Vec<Vec<Vec<f32>>> = devs
        .iter()
        .map(|d| {
            let b = ModelBundle::load(&dir, &d.device).unwrap();
            score_all(&b.model, &pairs, 0, ScoreOptions::default(), |_| {}).unwrap()
        })
        .collect();
    let mut max = 0f32;
    for (a, b) in results[0].iter().flatten().zip(results[1].iter().flatten()) {
        max = max.max((a - b).abs());
    }
    assert!(
        max < 1e-4,
        "cpu vs gpu token log-probs differ by up to {max:e}"
    );
}

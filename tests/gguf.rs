//! GGUF models in and out, checked on the real SmolLM2-135M-Instruct GGUF (Q4_1 + Q8_0, arch
//! `llama`, `smollm` pre-tokenizer) against transformers' outputs in `../shared`, plus round trips
//! through `convert` (GGUF → HF folder) and `export-gguf` (HF folder → GGUF) on the tiny fixtures.
//! The real-model tests run on the CPU backend and need `WGSPIN_SMOLLM2_GGUF` (set by `.ci/run`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use wgspin::ModelBundle;
use wgspin::score::{ScoreOptions, TokenizedPair, score_all};

/// The SmolLM2 GGUF from `WGSPIN_SMOLLM2_GGUF`; `None` (test skipped) when unset, except in CI
/// (`CI` or `WGSPIN_REQUIRE_GPU=1`), where a missing model is a failure.
fn smollm2_gguf() -> Option<PathBuf> {
    match std::env::var_os("WGSPIN_SMOLLM2_GGUF") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "WGSPIN_SMOLLM2_GGUF={} is not a file",
                p.display()
            );
            Some(p)
        }
        None => {
            let ci = std::env::var("WGSPIN_REQUIRE_GPU").is_ok_and(|v| v == "1")
                || std::env::var_os("CI").is_some();
            assert!(
                !ci,
                "WGSPIN_SMOLLM2_GGUF is not set but this is a CI run (CI or WGSPIN_REQUIRE_GPU=1): .ci/run downloads it"
            );
            eprintln!("skipped: set WGSPIN_SMOLLM2_GGUF (see .ci/run)");
            None
        }
    }
}

fn smollm2_dir() -> PathBuf {
    shared_fixture("smollm2-135m-instruct")
}

#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let Some(path) = smollm2_gguf() else { return };
    let t0 = Instant::now();
    let g = wgspin::gguf::GgufModel::load(&path).unwrap();
    let tok = g.chat_tokenizer().unwrap();
    eprintln!(
        "GGUF read + dequantized in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let r = reference(&smollm2_dir());
    for c in &r.cases {
        let pair = TokenizedPair::new(&tok, &c.prompt, &c.response).unwrap();
        assert_eq!(pair.prompt, c.prompt_ids, "prompt ids of {:?}", c.prompt);
        assert_eq!(
            pair.response, c.response_ids,
            "response ids of {:?}",
            c.response
        );
    }
    let hf = tokenizers::Tokenizer::from_file(smollm2_dir().join("tokenizer.json")).unwrap();
    for s in [
        "1234567890 and 3.14159, 2024-01-05",
        "tabs\tand    runs   of spaces\n\n\nnew lines  \n ",
        "emoji 😀🚀👍🏽 and accents: café, naïve, Straße, Ångström, Crème brûlée",
        "中文和日本語, Ελληνικά, русский",
        "<|im_start|>user\nHi<|im_end|>\n",
        "don't I'll we've   it's",
    ] {
        for special in [false, true] {
            let want = hf.encode(s, special).unwrap().get_ids().to_vec();
            assert_eq!(
                tok.encode(s, special).unwrap(),
                want,
                "{s:?} (special tokens {special})"
            );
        }
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
    }
    assert_eq!(g.config.vocab_size, 49152);
    assert!(g.config.tie_word_embeddings);
    assert_eq!(g.config.eos_token_ids, vec![2]);
    assert_eq!(
        (g.config.num_heads, g.config.num_kv_heads, g.config.head_dim),
        (9, 3, 64)
    );
}

#[test]
fn smollm2_gguf_logprobs_greedy_and_convert() {
    let Some(path) = smollm2_gguf() else { return };
    let dev = wgspin::device::cpu_device();
    let t0 = Instant::now();
    let bundle = ModelBundle::load(&path, &dev.device).unwrap();
    eprintln!("loaded on CPU in {:.1}s", t0.elapsed().as_secs_f64());
    let r = reference(&smollm2_dir());
    let pairs: Vec<TokenizedPair> = r
        .cases
        .iter()
        .map(|c| TokenizedPair {
            prompt: c.prompt_ids.clone(),
            response: c.response_ids.clone(),
        })
        .collect();
    let t1 = Instant::now();
    let opts = ScoreOptions {
        batch_size: pairs.len(),
        ..Default::default()
    };
    let got = score_all(&bundle.model, &pairs, 2, opts, |_| {}).unwrap();
    eprintln!(
        "scored {} cases in {:.1}s",
        pairs.len(),
        t1.elapsed().as_secs_f64()
    );
    for (c, lp) in r.cases.iter().zip(&got) {
        let sum: f64 = lp.iter().map(|&x| x as f64).sum();
        let e = rel(sum, c.logprob);
        assert!(
            e < 1e-3,
            "logprob {sum} vs {} (rel {e:e}) for {:?}",
            c.logprob,
            c.prompt
        );
    }

    let t2 = Instant::now();
    let prompts: Vec<Vec<u32>> = r.greedy.iter().map(|g| g.prompt_ids.clone()).collect();
    let max_new = r.greedy.iter().map(|g| g.tokens.len()).max().unwrap_or(0);
    let out = wgspin::decode::greedy(&bundle.model, &prompts, max_new, &[2], 2).unwrap();
    eprintln!(
        "greedy {max_new} tokens x {} in {:.1}s",
        prompts.len(),
        t2.elapsed().as_secs_f64()
    );
    for (g, o) in r.greedy.iter().zip(&out) {
        assert_eq!(o, &g.tokens, "greedy tokens");
    }
}

//! Round trip into llama.cpp: a checkpoint wgspin trained (llama, qwen2, qwen3 and gemma3 fixtures, a few SFT
//! steps at a high learning rate so the weights are its own), exported by `export-gguf` as f32,
//! f16 and q8_0, is loaded by llama.cpp (llama-cpp-python, `tests/llama_cpp_eval.py`), which must
//! give the log-probs wgspin computes from the same file and the same greedy tokens.
//!
//! Tolerances (absolute, on per-token log-probs) come from how llama.cpp computes on the CPU:
//! f32 matmuls in f32 (only summation order differs); f16 weights are multiplied with activations
//! rounded to f16 (relative error 2^-11 per element); q8_0 weights with activations quantized to
//! q8_0 blocks (8 bits per element). wgspin widens the stored weights to f32 and keeps activations
//! in f32, so the gap grows with the activation rounding llama.cpp adds (up to 2^-8 of a block's
//! largest value for q8_0, which moves log-probs of about -10 by up to about 1%). The KV cache is
//! f32 on both sides. The f32 export is also compared with the checkpoint folder itself.
//!
//! Needs llama-cpp-python (`.ci/run` installs it); skipped elsewhere with a printed reason.

mod common;

use std::path::Path;

use common::{fixture, job_args, python_client, python_eval, run_ok, wgspin_scores, write_pairs};

const GREEDY: usize = 12;

/// (dtype, log-prob tolerance). Measured on the fixtures: 2.1e-6, 1.8e-3 and 7.6e-2.
const EXPORTS: &[(&str, f64)] = &[("f32", 1e-4), ("f16", 1e-2), ("q8_0", 1.5e-1)];

/// llama.cpp's log-probs of `ids[prompt_len..]` and its greedy continuation of `ids[..prompt_len]`.
fn llama_cpp(gguf: &Path, ids: &[u32], prompt_len: usize) -> (Vec<f64>, Vec<u32>) {
    python_eval(
        "llama_cpp_eval.py",
        serde_json::json!({"gguf": gguf, "ids": ids, "prompt_len": prompt_len, "greedy": GREEDY}),
    )
}

#[test]
fn llama_cpp_loads_exported_trained_checkpoints_with_wgspins_logprobs_and_greedy_tokens() {
    if !python_client(&["llama_cpp", "numpy"], "pip install llama-cpp-python") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.jsonl");
    write_pairs(&data);
    for model in [
        "tiny-llama-bf16",
        "tiny-qwen2-f32",
        "tiny-qwen3-bf16",
        "tiny-gemma3-6l-bf16",
    ] {
        let run = tmp.path().join(model);
        run_ok(job_args(
            "sft",
            model,
            &data,
            &run,
            "--lr 1e-2 --epochs 1 --batch-size 2",
        ));
        let ckpt = run.join("checkpoint");
        // A prompt and response as the model's tokenizer and chat template make them.
        let tok = wgspin::hf::tokenizer::ChatTokenizer::from_dir(&fixture(model), &[]).unwrap();
        let mut ids = tok
            .prompt_ids("What colour is the sky on a clear day?")
            .unwrap();
        let prompt_len = ids.len();
        ids.extend(
            tok.response_ids("Blue, because air scatters blue light.")
                .unwrap(),
        );
        for &(dtype, tol) in EXPORTS {
            // ggml's table GELU: f16-rounded activations even in an f32 file (see above).
            let tol = if model.contains("gemma") && dtype == "f32" {
                EXPORTS[1].1
            } else {
                tol
            };
            let gguf = tmp.path().join(format!("{model}-{dtype}.gguf"));
            run_ok([
                "export-gguf",
                "--model",
                &ckpt.to_string_lossy(),
                "--out",
                &gguf.to_string_lossy(),
                "--dtype",
                dtype,
            ]);
            let (want_lp, want_greedy) = llama_cpp(&gguf, &ids, prompt_len);
            let (got_lp, got_greedy) = wgspin_scores(&gguf, &ids, prompt_len, GREEDY);
            if dtype == "f32" {
                // The f32 file holds the checkpoint's weights exactly.
                assert_eq!(
                    wgspin_scores(&ckpt, &ids, prompt_len, GREEDY),
                    (got_lp.clone(), got_greedy.clone())
                );
            }
            let worst = want_lp
                .iter()
                .zip(&got_lp)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!("{model} {dtype}: max |Δ log-prob| {worst:.2e} (tolerance {tol:.1e})");
            assert_eq!(got_lp.len(), want_lp.len());
            assert!(worst <= tol, "{model} {dtype}: {got_lp:?} vs {want_lp:?}");
            assert_eq!(got_greedy, want_greedy, "{model} {dtype}: greedy tokens");
        }
    }
}

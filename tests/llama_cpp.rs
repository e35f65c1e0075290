//! Round trip into llama.cpp: a checkpoint wgspin trained (llama and qwen2 fixtures, a few SFT
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

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{fixture, greedy_opts, job_args, run_generate, run_ok, write_pairs};

const GREEDY: usize = 12;

/// (dtype, log-prob tolerance). Measured on the fixtures: 2.1e-6, 1.8e-3 and 7.6e-2.
const EXPORTS: &[(&str, f64)] = &[("f32", 1e-4), ("f16", 1e-2), ("q8_0", 1.5e-1)];

fn llama_cpp_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import llama_cpp, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// llama.cpp's log-probs of `ids[prompt_len..]` and its greedy continuation of `ids[..prompt_len]`.
fn llama_cpp(gguf: &Path, ids: &[u32], prompt_len: usize) -> (Vec<f64>, Vec<u32>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llama_cpp_eval.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let req = serde_json::json!({
        "gguf": gguf, "ids": ids, "prompt_len": prompt_len, "greedy": GREEDY,
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "llama.cpp failed on {}: {}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logprobs = v["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let greedy = v["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    (logprobs, greedy)
}

/// wgspin's log-probs and greedy continuation from the same GGUF file, on the CPU backend.
fn wgspin_side(gguf: &Path, ids: &[u32], prompt_len: usize) -> (Vec<f64>, Vec<u32>) {
    let dev = wgspin::device::cpu_device();
    let bundle = wgspin::ModelBundle::load(gguf, &dev.device).unwrap();
    let input = wgspin::model::StepInput::right_padded(&[ids.to_vec()], 0);
    let logits = bundle.model.forward(&input, None); // [1, s, v]
    let [_, s, v] = logits.dims();
    let flat = common::floats(logits);
    let logprobs = (prompt_len..s)
        .map(|i| {
            let row = &flat[(i - 1) * v..i * v];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row[ids[i] as usize] as f64 - lse
        })
        .collect();
    let greedy = run_generate(
        &bundle,
        &[ids[..prompt_len].to_vec()],
        &greedy_opts(1, GREEDY, vec![]),
    )
    .remove(0);
    (logprobs, greedy)
}

#[test]
fn llama_cpp_loads_exported_trained_checkpoints_with_wgspins_logprobs_and_greedy_tokens() {
    if !llama_cpp_installed() {
        let ci = std::env::var_os("CI").is_some()
            || std::env::var("WGSPIN_REQUIRE_GPU").is_ok_and(|v| v == "1");
        assert!(
            !ci,
            "llama-cpp-python is not installed but this is a CI run: .ci/run installs it"
        );
        eprintln!("skipped: pip install llama-cpp-python (see .ci/run)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.jsonl");
    write_pairs(&data);
    for model in ["tiny-llama-bf16", "tiny-qwen2-f32"] {
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
            let (got_lp, got_greedy) = wgspin_side(&gguf, &ids, prompt_len);
            if dtype == "f32" {
                // The f32 file holds the checkpoint's weights exactly.
                assert_eq!(
                    wgspin_side(&ckpt, &ids, prompt_len),
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

//! The `wgspin` binary end to end: `logprobs` writes one JSONL row per input in input order with
//! the transformers log-probs; errors name the line; `devices` runs; `bench kernels` reports a row
//! per kernel.

mod common;

use common::*;

#[test]
fn logprobs_command_matches_reference() {
    let dir = fixture("tiny-qwen2-f32");
    let r = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("in.jsonl");
    let text: String = r
        .cases
        .iter()
        .map(|c| {
            serde_json::json!({"prompt": c.prompt, "response": c.response, "extra": 1}).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&data, text).unwrap();
    let out = tmp.path().join("out.jsonl");
    let status = wgspin()
        .args([
            "logprobs",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--model",
        ])
        .arg(&dir)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), r.cases.len());
    for (i, (row, c)) in rows.iter().zip(&r.cases).enumerate() {
        assert_eq!(row["index"], i);
        assert_eq!(row["tokens"], c.response_ids.len());
        assert_eq!(
            row["token_logprobs"].as_array().unwrap().len(),
            c.response_ids.len()
        );
        let lp = row["logprob"].as_f64().unwrap();
        assert!(rel(lp, c.logprob) < 1e-3, "row {i}: {lp} vs {}", c.logprob);
    }
}

#[test]
fn logprobs_command_names_bad_line() {
    let (_tmp, data) = temp_file(
        "bad.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\nnot json\n",
    );
    let out = wgspin()
        .args(["logprobs", "--device", "cpu", "--model"])
        .arg(fixture("tiny-llama-bf16"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2:"), "{err}");
}

#[test]
fn devices_command_runs() {
    let out = wgspin().arg("devices").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cpu"), "{text}");
}

#[test]
fn bench_kernels_reports_every_kernel() {
    // V not a multiple of the 256-wide workgroup; tiny sizes keep it a smoke test, not a timing.
    let out = wgspin()
        .args(["bench", "kernels", "--device", "auto", "--rows", "8"])
        .args(["--vocab", "301", "--sample-rows", "2", "--iters", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "token_logprobs forward",
        "token_logprobs backward",
        "sample (",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} row in:\n{text}"));
        let ratio = line
            .split_whitespace()
            .find_map(|w| w.strip_suffix('x')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no ratio in {line:?}"));
        assert!(ratio.is_finite() && ratio > 0.0, "{line}");
    }
}

//! Self-play generation: greedy decoding through the continuous-batching engine equals
//! transformers' greedy tokens (batched, one at a time, and with rows finishing early so later
//! prompts join a running batch); sampled responses do not depend on the batch size; and the
//! `generate` command survives SIGKILL: rerunning it keeps the rows written, drops a torn line,
//! and ends with the file an uninterrupted run writes.
//!
//! Greedy parity runs on the CPU backend for every fixture and on the wgpu device for the GPU
//! model (its prefills bucketed in rows and length there); the sampling and resume tests run on
//! the CPU backend.

mod common;

use std::time::Duration;

use common::*;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;
use wgspin::generate::GenOptions;
use wgspin::kernels::sample::SamplingParams;

#[test]
fn greedy_generation_equals_transformers() {
    each_model_on_each_device(|dev, name, r, bundle| {
        let name = format!("{name} on {}", dev.description);
        let prompts: Vec<Vec<u32>> = r.greedy.iter().map(|g| g.prompt_ids.clone()).collect();
        let want: Vec<Vec<u32>> = r.greedy.iter().map(|g| g.tokens.clone()).collect();
        let max_new = want[0].len();
        for batch in [1, 2, 3] {
            let got = run_generate(bundle, &prompts, &greedy_opts(batch, max_new, vec![]));
            assert_eq!(got, want, "{name}, batch size {batch}");
        }
        // A stop id that ends the first row early: its slot is refilled while the second row is
        // still decoding, so the third prompt joins a running batch.
        let stop = want[0][1];
        let expect: Vec<Vec<u32>> = want
            .iter()
            .map(|w| match w.iter().position(|&t| t == stop) {
                Some(i) => w[..=i].to_vec(),
                None => w.clone(),
            })
            .collect();
        assert!(
            expect[0].len() < max_new,
            "{name}: stop id must end row 0 early"
        );
        let got = run_generate(bundle, &prompts, &greedy_opts(2, max_new, vec![stop]));
        assert_eq!(got, expect, "{name}, continuous batching with a stop id");
    });
}

#[test]
fn sampled_tokens_do_not_depend_on_batch_size() {
    let dev = cpu_device();
    let dir = fixture("tiny-qwen2-f32");
    let r = reference(&dir);
    let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
    let mut prompts: Vec<Vec<u32>> = r.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    prompts.extend(r.greedy.iter().map(|g| g.prompt_ids.clone()));
    let opts = |batch| GenOptions {
        batch_size: batch,
        max_new_tokens: 10,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 50,
            seed: 11,
            ..Default::default()
        },
        stop_ids: vec![],
        pad_id: 0,
    };
    let single = run_generate(&bundle, &prompts, &opts(1));
    let batched = run_generate(&bundle, &prompts, &opts(8));
    let same = single.iter().zip(&batched).filter(|(a, b)| a == b).count();
    eprintln!(
        "sampled rows identical for batch sizes 1 and 8: {same}/{}",
        prompts.len()
    );
    // Rounding differs with the batch's shape, so a near-tie may split; most rows must agree,
    // and the first token (drawn from the prefill of an unpadded-equivalent row) always.
    assert!(
        same * 10 >= prompts.len() * 8,
        "only {same}/{} identical",
        prompts.len()
    );
    // Different seeds give different samples (the seed is used at all).
    let mut other = opts(8);
    other.sampling.seed = 12;
    assert_ne!(run_generate(&bundle, &prompts, &other), batched);
}

fn write_prompts(path: &std::path::Path, n: usize) {
    let words = [
        "the", "cat", "spin", "model", "tells", "human", "answers", "from", "its", "own", "why",
    ];
    let mut rng = Rng(3);
    let mut text = String::new();
    for i in 0..n {
        let len = 2 + rng.below(20);
        let p: Vec<&str> = (0..len).map(|_| words[rng.below(words.len())]).collect();
        text += &serde_json::json!({"id": format!("p{i}"), "prompt": p.join(" "), "response": format!("answer {i}")}).to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn generate_args(data: &std::path::Path, out: &std::path::Path) -> Vec<String> {
    let flags = "--gen-batch-size 1 --max-new-tokens 40 --temperature 0.8 --sampling-seed 9";
    job_args("generate", "tiny-llama-bf16", data, out, flags)
}

#[test]
fn generate_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("prompts.jsonl");
    write_prompts(&data, 60);

    let full = tmp.path().join("full.jsonl");
    run_ok(generate_args(&data, &full));
    let full_text = std::fs::read_to_string(&full).unwrap();
    assert_eq!(full_text.lines().count(), 60);

    // Kill mid-run, once a few rows are on disk.
    let out = tmp.path().join("out.jsonl");
    kill_when(
        &generate_args(&data, &out),
        Duration::from_secs(120),
        "no rows written",
        || std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) >= 3,
    );
    let partial = std::fs::read_to_string(&out).unwrap();
    let kept = partial.lines().count();
    assert!(kept < 60, "the run finished before it was killed");
    // And a crash in the middle of a write: a torn last line.
    let mut torn = partial.clone();
    if !torn.ends_with('\n') {
        torn.push('\n');
    }
    torn.push_str("{\"id\": \"p5\", \"real\": [{\"role\"");
    std::fs::write(&out, &torn).unwrap();

    let st = run_ok(generate_args(&data, &out));
    let resumed = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        resumed, full_text,
        "resumed run differs from an uninterrupted one"
    );
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(stderr.contains("kept"), "resume not reported: {stderr}");

    // Output of another data file is refused, not silently mixed.
    let other = tmp.path().join("other.jsonl");
    write_prompts(&other, 3);
    std::fs::write(
        &other,
        std::fs::read_to_string(&other)
            .unwrap()
            .replace("\"p0\"", "\"zz\""),
    )
    .unwrap();
    let st = wgspin().args(generate_args(&other, &out)).output().unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("out.jsonl"), "error names the file: {err}");
}

/// A row whose human response changed in the data (same id and prompt) is generated again with
/// the new `real` side; the rows that did not change are kept as they were.
#[test]
fn generate_regenerates_rows_whose_data_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("prompts.jsonl");
    write_prompts(&data, 4);
    let out = tmp.path().join("out.jsonl");
    run_ok(generate_args(&data, &out));
    let before = std::fs::read_to_string(&out).unwrap();

    let text = std::fs::read_to_string(&data).unwrap();
    assert!(text.contains("\"answer 2\""));
    std::fs::write(&data, text.replace("\"answer 2\"", "\"a better answer\"")).unwrap();
    let st = run_ok(generate_args(&data, &out));
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(stderr.contains("generated 1 responses"), "{stderr}");

    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[2]["id"], "p2");
    assert_eq!(rows[2]["real"][1]["content"], "a better answer");
    // Every request has its own random stream: the regenerated row is what a fresh run writes,
    // and the others are the rows of the first run.
    let old: Vec<&str> = before.lines().collect();
    let new = std::fs::read_to_string(&out).unwrap();
    let new: Vec<&str> = new.lines().collect();
    for i in [0, 1, 3] {
        assert_eq!(new[i], old[i], "row {i} kept");
    }
    assert_eq!(
        rows[2]["generated"],
        serde_json::from_str::<serde_json::Value>(old[2]).unwrap()["generated"]
    );
}

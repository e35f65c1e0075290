//! `--overwrite`: starting over in an output that holds an earlier run (of another model, data or
//! settings) instead of being refused. It must give exactly what a run into a new output gives,
//! remove only what a wgspin run wrote, and still refuse a folder wgspin did not write.

mod common;

use std::path::Path;

use common::*;

const TRAIN_FLAGS: &str = "--epochs 1 --batch-size 2";

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `train` run of another model replaced with --overwrite ends with the weights a run into a
/// new folder gets, and a file of the user's in the folder survives.
#[test]
fn train_overwrite_starts_over_and_keeps_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = fixture("data").join("spin.jsonl");
    let (out, fresh) = (tmp.path().join("run"), tmp.path().join("fresh"));
    run_ok(job_args(
        "train",
        "tiny-llama-bf16",
        &pairs,
        &out,
        TRAIN_FLAGS,
    ));
    std::fs::write(out.join("notes.txt"), "mine").unwrap();

    let e = run_err(job_args(
        "train",
        "tiny-qwen2-f32",
        &pairs,
        &out,
        TRAIN_FLAGS,
    ));
    assert_mentions(&e, &["already holds a training run", "--overwrite"]);
    let flags = format!("{TRAIN_FLAGS} --overwrite");
    run_ok(job_args("train", "tiny-qwen2-f32", &pairs, &out, &flags));
    run_ok(job_args(
        "train",
        "tiny-qwen2-f32",
        &pairs,
        &fresh,
        TRAIN_FLAGS,
    ));

    for file in ["model.safetensors", "config.json"] {
        let (got, want) = (out.join("checkpoint"), fresh.join("checkpoint"));
        assert!(
            read(&got.join(file)) == read(&want.join(file)),
            "{file} differs from a run into a new folder"
        );
    }
    let rows = |dir: &Path| String::from_utf8(read(&dir.join("metrics.jsonl"))).unwrap();
    assert_eq!(
        rows(&out).lines().count(),
        rows(&fresh).lines().count(),
        "metrics.jsonl still holds the earlier run's rows"
    );
    assert_eq!(read(&out.join("notes.txt")), b"mine");
    // --resume and --overwrite contradict each other.
    let out_of_clap = wgspin()
        .args(job_args(
            "train",
            "tiny-qwen2-f32",
            &pairs,
            &out,
            "--resume --overwrite",
        ))
        .output()
        .unwrap();
    assert_eq!(out_of_clap.status.code(), Some(2));
    assert_mentions(
        &String::from_utf8_lossy(&out_of_clap.stderr),
        &["--overwrite", "cannot be used with"],
    );
}

/// --overwrite replaces an earlier wgspin run only: a folder of someone else's files is refused
/// (by `train`, `sft` and `spin`) and left byte-identical.
#[test]
fn overwrite_refuses_a_folder_wgspin_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("theirs");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"theirs\": 1}\n").unwrap();
    std::fs::create_dir(out.join("iter-0")).unwrap();
    std::fs::write(out.join("iter-0").join("eval.json"), "{}").unwrap();
    let before = snapshot(&out);
    let pairs = fixture("data").join("spin.jsonl");
    let sft = fixture("data").join("prompt_response.jsonl");
    for (cmd, data, writer) in [
        ("train", &pairs, "`wgspin train` or `sft`"),
        ("sft", &sft, "`wgspin train` or `sft`"),
        ("spin", &sft, "`wgspin spin`"),
    ] {
        let flags = "--overwrite --epochs 1 --iterations 1 --max-new-tokens 2";
        let flags = if cmd == "spin" {
            flags
        } else {
            "--overwrite --epochs 1"
        };
        let e = run_err(job_args(cmd, "tiny-llama-bf16", data, &out, flags));
        assert_mentions(&e, &["metrics.jsonl", writer, "--overwrite only replaces"]);
        assert_eq!(snapshot(&out), before, "{cmd} changed the folder");
    }
}

/// A `spin` rerun with other settings is refused; with --overwrite it starts over, and the folder
/// then describes the new run only.
#[test]
fn spin_overwrite_starts_over_with_the_new_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("data").join("prompt_response.jsonl");
    let out = tmp.path().join("spin");
    let flags = "--iterations 1 --epochs 1 --max-new-tokens 3";
    run_ok(job_args("spin", "tiny-llama-bf16", &data, &out, flags));
    let other = format!("{flags} --lr 1e-5");
    let e = run_err(job_args("spin", "tiny-llama-bf16", &data, &out, &other));
    assert_mentions(&e, &["train.lr", "--overwrite"]);
    let res = run_ok(job_args(
        "spin",
        "tiny-llama-bf16",
        &data,
        &out,
        &format!("{other} --overwrite"),
    ));
    assert!(
        !String::from_utf8_lossy(&res.stderr).contains("already done"),
        "the earlier iteration was reused"
    );
    let lr = |file: &Path, key: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_slice(&read(file)).unwrap();
        let v = if key.is_empty() { &v } else { &v[key] };
        v["lr"].as_f64().unwrap()
    };
    assert_eq!(lr(&out.join("spin_config.json"), "train"), 1e-5);
    assert_eq!(lr(&out.join("iter-0").join("train_config.json"), ""), 1e-5);
}

/// `generate --overwrite` replaces a file of another model's rows (or one it did not write) with
/// exactly what a new file gets.
#[test]
fn generate_overwrite_replaces_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("data").join("prompt_response.jsonl");
    let (out, fresh) = (tmp.path().join("gen.jsonl"), tmp.path().join("fresh.jsonl"));
    let flags = "--max-new-tokens 3";
    run_ok(job_args("generate", "tiny-llama-bf16", &data, &out, flags));
    run_err(job_args("generate", "tiny-qwen2-f32", &data, &out, flags));
    let over = format!("{flags} --overwrite");
    run_ok(job_args("generate", "tiny-qwen2-f32", &data, &out, &over));
    run_ok(job_args("generate", "tiny-qwen2-f32", &data, &fresh, flags));
    assert!(read(&out) == read(&fresh), "rows differ from a new file's");

    std::fs::write(&out, "not ours").unwrap();
    std::fs::remove_file(wgspin::generate::job::run_record_path(&out)).unwrap();
    run_ok(job_args("generate", "tiny-qwen2-f32", &data, &out, &over));
    assert!(read(&out) == read(&fresh));
}

//! `--report-to tensorboard`: the event files a training run writes are read back by
//! TensorBoard's own loader (`tests/tensorboard_read.py`, tensorboard's EventAccumulator) with
//! TRL's metric names and the values of metrics.jsonl (TensorBoard stores scalars as f32).
//! Needs the `tensorboard` Python package (`.ci/run` installs it); skipped elsewhere with a
//! printed reason.

mod common;

use std::process::Command;

use common::{job_args, python_client, run_ok, write_pairs};
use serde_json::Value;

#[test]
fn tensorboard_reads_the_metrics_under_trl_names() {
    if !python_client(&["tensorboard"], "pip install tensorboard") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let out = tmp.path().join("run");
    run_ok(job_args(
        "train",
        "tiny-llama-bf16",
        &pairs,
        &out,
        "--lr 1e-3 --batch-size 2 --epochs 1 --report-to tensorboard",
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tensorboard_read.py");
    let read = Command::new("python3")
        .arg(script)
        .arg(out.join("runs"))
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let scalars: Value = serde_json::from_slice(&read.stdout).unwrap();

    let rows: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "4 steps, each logged");
    for (key, tag) in [
        ("loss", "train/loss"),
        ("lr", "train/learning_rate"),
        ("grad_norm", "train/grad_norm"),
        ("epoch", "train/epoch"),
        ("rewards/real", "train/rewards/chosen"),
        ("rewards/generated", "train/rewards/rejected"),
        ("rewards/margins", "train/rewards/margins"),
        ("rewards/accuracies", "train/rewards/accuracies"),
        ("logps/real", "train/logps/chosen"),
        ("logps/generated", "train/logps/rejected"),
    ] {
        let events = scalars[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {scalars}"));
        assert_eq!(events.len(), rows.len(), "{tag}");
        for (e, row) in events.iter().zip(&rows) {
            assert_eq!(e[0], row["step"], "{tag}");
            let (got, want) = (e[1].as_f64().unwrap(), row[key].as_f64().unwrap());
            assert_eq!(got as f32, want as f32, "{tag} at step {}", row["step"]);
        }
    }
}

//! `--report-to tensorboard`: the event files a training run writes are read back by
//! TensorBoard's own loader (`tests/tensorboard_read.py`, tensorboard's EventAccumulator) with
//! TRL's metric names and the values of metrics.jsonl (TensorBoard stores scalars as f32), also
//! after a killed run was resumed. Needs the `tensorboard` Python package (`.ci/run` installs
//! it); skipped elsewhere with a printed reason.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{job_args, kill_when, python_client, run_ok, write_pairs};
use serde_json::Value;

/// {tag: [[step, value], ...]} as TensorBoard's loader reads the event files under `dir`.
fn read_scalars(dir: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tensorboard_read.py");
    let read = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    serde_json::from_slice(&read.stdout).unwrap()
}

fn metrics_rows(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each of `tag`'s points is the metrics.jsonl row of its step, in step order.
fn assert_points_match(scalars: &Value, tag: &str, key: &str, rows: &[Value]) {
    let events = scalars[tag]
        .as_array()
        .unwrap_or_else(|| panic!("no {tag} in {scalars}"));
    assert_eq!(events.len(), rows.len(), "{tag}: {events:?}");
    for (e, row) in events.iter().zip(rows) {
        assert_eq!(e[0], row["step"], "{tag}");
        let (got, want) = (e[1].as_f64().unwrap(), row[key].as_f64().unwrap());
        assert_eq!(got as f32, want as f32, "{tag} at step {}", row["step"]);
    }
}

/// `train` arguments on the tiny Llama, SPIN pairs written into `dir`, output in `dir/run`.
fn train_args(dir: &Path, flags: &str) -> (Vec<String>, std::path::PathBuf) {
    let pairs = dir.join("pairs.jsonl");
    write_pairs(&pairs);
    let out = dir.join("run");
    (
        job_args("train", "tiny-llama-bf16", &pairs, &out, flags),
        out,
    )
}

#[test]
fn tensorboard_reads_the_metrics_under_trl_names() {
    if !python_client(&["tensorboard"], "pip install tensorboard") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (args, out) = train_args(
        tmp.path(),
        "--lr 1e-3 --batch-size 2 --epochs 1 --report-to tensorboard",
    );
    run_ok(args);
    let scalars = read_scalars(&out.join("runs"));
    let rows = metrics_rows(&out);
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
        assert_points_match(&scalars, tag, key, &rows);
    }
}

/// A run killed after a checkpoint and resumed: TensorBoard shows each step once, with the values
/// of the resumed run (the interrupted run's points past its checkpoint are superseded).
#[test]
fn tensorboard_shows_a_resumed_run_once() {
    if !python_client(&["tensorboard"], "pip install tensorboard") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (args, out) = train_args(
        tmp.path(),
        "--lr 1e-3 --batch-size 2 --epochs 3 --save-every 2 --report-to tensorboard",
    );
    let state = out.join("checkpoint").join("trainer_state.json");
    kill_when(&args, Duration::from_secs(300), "no checkpoint", || {
        state.exists()
    });
    let mut resume = args.clone();
    resume.push("--resume".into());
    run_ok(&resume);
    let files = std::fs::read_dir(out.join("runs")).unwrap().count();
    assert_eq!(files, 2, "one event file per process");
    let scalars = read_scalars(&out.join("runs"));
    let rows = metrics_rows(&out);
    assert_eq!(rows.len(), 12);
    assert_points_match(&scalars, "train/loss", "loss", &rows);
    assert_points_match(&scalars, "train/rewards/margins", "rewards/margins", &rows);
}

/// The edge a resume can hit: the interrupted run logged step 3, its checkpoint was at step 2, so
/// the resumed run logs step 3 again. TensorBoard's out-of-order check does not fire on an equal
/// step; the resumed file's session start must supersede the old point.
#[test]
fn a_resumed_event_file_supersedes_points_from_its_first_step() {
    if !python_client(&["tensorboard"], "pip install tensorboard") {
        return;
    }
    use wgspin::report::tensorboard::EventWriter;
    let tmp = tempfile::tempdir().unwrap();
    let mut first = EventWriter::create(tmp.path(), 1).unwrap();
    for step in 1..=3 {
        first.scalars(step, &[("train/loss", 1.0)]).unwrap();
    }
    drop(first);
    let mut resumed = EventWriter::create(tmp.path(), 3).unwrap();
    for step in 3..=4 {
        resumed.scalars(step, &[("train/loss", 2.0)]).unwrap();
    }
    drop(resumed);
    let points = read_scalars(tmp.path())["train/loss"].clone();
    assert_eq!(
        points,
        serde_json::json!([[1, 1.0], [2, 1.0], [3, 2.0], [4, 2.0]])
    );
}

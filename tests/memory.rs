//! The training-memory estimate (`wgspin plan`, `--max-memory`): parameter counts against the
//! published ones, the estimate against the peaks measured for the memory table of
//! docs/training-that-fits.md (from 20% under to 50% over), and the refusal of settings that do
//! not fit.

mod common;

use burn::tensor::DType;
use common::*;
use wgspin::hf::config::ModelConfig;
use wgspin::model::lora::LoraConfig;
use wgspin::train::TrainConfig;
use wgspin::train::memory::{estimate, parameter_count};

fn smollm2() -> ModelConfig {
    ModelConfig::from_dir(&shared_fixture("smollm2-135m-instruct")).unwrap()
}

fn qwen05() -> ModelConfig {
    ModelConfig::from_dir(&fixture("qwen2.5-0.5b-shape")).unwrap()
}

#[test]
fn parameter_counts_are_the_published_ones() {
    // SmolLM2-135M: 134,515,008; Qwen2.5-0.5B: 494,032,768 (their model cards' safetensors).
    assert_eq!(parameter_count(&smollm2()).0, 134_515_008);
    assert_eq!(parameter_count(&qwen05()).0, 494_032_768);
}

/// Peak process RSS of `wgspin bench train --device cpu --random-init --steps 1` (the table of
/// docs/training-that-fits.md), minus the process's own floor: the CPU runtime with no model,
/// 135 MiB (the 650 MiB floor of SmolLM2 less its 515 MiB of f32 weights).
#[test]
fn estimates_follow_the_measured_peaks() {
    const FLOOR: f64 = 135.0;
    let rows: &[(&str, usize, usize, usize, bool, DType, f64)] = &[
        // (model, pairs, seq, lora rank, checkpointing, activations, measured MiB)
        ("smollm2", 2, 256, 0, false, DType::F32, 2661.0),
        ("smollm2", 2, 256, 0, false, DType::F16, 2747.0),
        ("smollm2", 2, 256, 0, true, DType::F32, 2214.0),
        ("smollm2", 2, 256, 16, false, DType::F32, 1778.0),
        ("smollm2", 2, 256, 16, false, DType::F16, 1119.0),
        ("smollm2", 2, 256, 16, true, DType::F32, 765.0),
        ("smollm2", 2, 256, 16, true, DType::F16, 658.0),
        ("smollm2", 8, 512, 0, false, DType::F32, 10385.0),
        ("smollm2", 8, 512, 0, false, DType::F16, 6458.0),
        ("smollm2", 8, 512, 16, false, DType::F32, 9323.0),
        ("smollm2", 8, 512, 16, true, DType::F32, 1631.0),
        ("qwen05", 1, 128, 0, false, DType::F32, 7919.0),
        ("qwen05", 1, 128, 0, false, DType::F16, 8359.0),
        ("qwen05", 1, 128, 0, true, DType::F32, 7663.0),
        ("qwen05", 1, 128, 16, false, DType::F32, 2618.0),
        ("qwen05", 1, 128, 16, false, DType::F16, 2216.0),
        ("qwen05", 1, 128, 16, true, DType::F32, 2153.0),
        ("qwen05", 1, 128, 16, true, DType::F16, 2215.0),
        ("qwen05", 1, 1024, 16, true, DType::F16, 2224.0),
        ("qwen05", 4, 512, 0, false, DType::F32, 14030.0),
        ("qwen05", 4, 512, 0, false, DType::F16, 10203.0),
        ("qwen05", 4, 512, 16, false, DType::F32, 10205.0),
        ("qwen05", 4, 512, 16, true, DType::F32, 2924.0),
    ];
    // The estimate may overshoot (it counts every part at once), but must not undershoot by
    // much: it refuses what cannot fit.
    let (mut low, mut high) = (0f64, 0f64);
    for &(name, pairs, seq, rank, ckpt, dtype, measured) in rows {
        let m = if name == "smollm2" {
            smollm2()
        } else {
            qwen05()
        };
        let cfg = TrainConfig {
            batch_size: pairs,
            lora: LoraConfig {
                rank,
                ..Default::default()
            },
            gradient_checkpointing: ckpt,
            ..Default::default()
        };
        let est = estimate(&m, &cfg, dtype, 2 * pairs, seq - 1, 1 << 23);
        let got = est.total() as f64 / 1048576.0 + FLOOR;
        let err = (got - measured) / measured;
        eprintln!(
            "{name} {pairs}x{seq} r={rank} ckpt={ckpt} {dtype:?}: estimated {got:.0} MiB, measured {measured:.0} ({:+.0}%) {est:?}",
            100.0 * err
        );
        (low, high) = (low.min(err), high.max(err));
    }
    assert!(
        low > -0.2 && high < 0.5,
        "estimates off by {:+.0}% … {:+.0}%",
        100.0 * low,
        100.0 * high
    );
}

/// `plan` prints the parts; `--max-memory` below the estimate refuses before anything loads,
/// naming the levers, in `plan` and in `train` alike, leaving the output folder untouched.
#[test]
fn settings_over_the_budget_are_refused_with_a_lever() {
    let model = shared_fixture("smollm2-135m-instruct");
    let out = run_ok(args(&[
        "plan",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--max-length",
        "768",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_mentions(
        &text,
        &["134.5M parameters", "activations", "estimated peak"],
    );

    let e = wgspin()
        .args(args(&[
            "plan",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--max-memory",
            "2GB",
        ]))
        .output()
        .unwrap();
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert_mentions(
        &msg,
        &[
            "--max-memory 2.00 GiB",
            "--gradient-checkpointing",
            "--grad-accum 2",
        ],
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.jsonl");
    write_pairs(&data);
    let run = tmp.path().join("run");
    let mut a = job_args("train", "tiny-llama-bf16", &data, &run, "--max-memory 1MB");
    a.extend(args(&["--epochs", "1"]));
    let e = wgspin().args(&a).output().unwrap();
    assert!(!e.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&e.stderr),
        &["--max-memory 1 MiB", "estimated to peak"],
    );
    assert!(!run.join("checkpoint").exists() && !run.join("metrics.jsonl").exists());
    // A budget it fits trains.
    let mut a = job_args("train", "tiny-llama-bf16", &data, &run, "--max-memory 4GB");
    a.extend(args(&["--epochs", "1"]));
    run_ok(a);
}

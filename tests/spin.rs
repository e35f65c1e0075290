//! `wgspin spin` end to end on a tiny model (CPU backend): two self-play iterations with settings
//! from a `--config` TOML file (flags override it) raise rewards/accuracies above 0.5 and margins
//! above 0 on their pairs, write every output file, and produce checkpoints that load; a run
//! killed with SIGKILL during the second iteration and rerun skips the finished iteration and ends
//! with the same results as an uninterrupted one. Its generate stage computes in the training
//! `--dtype`. `--limit N` reads N + --eval-size rows: the first N train, the rest are held out.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;

fn write_data(path: &Path) {
    let mut text = String::new();
    for i in 0..10 {
        text += &serde_json::json!({
            "messages": [
                {"role": "user", "content": format!("What is {i} plus {i}?")},
                {"role": "assistant", "content": format!("{i} plus {i} is {}.", 2 * i)},
            ]
        })
        .to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn spin_args(data: &Path, out: &Path, config: &Path) -> Vec<String> {
    let mut a = job_args(
        "spin",
        "tiny-llama-bf16",
        data,
        out,
        "--iterations 2 --lr 2e-3",
    );
    a.extend(args(&["--config", config.to_str().unwrap()]));
    a
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn spin_runs_two_iterations_and_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    write_data(&data);
    let config = tmp.path().join("spin.toml");
    // `lr` here is overridden by the flag; the rest is taken from the file.
    std::fs::write(
        &config,
        "lr = 1.0\noptimizer = \"adamw\"\nmax_new_tokens = 10\nbatch-size = 3\nepochs = 2\n\
         stop-accuracy = 0.0\neval-size = 2\ntemperature = 0.7\nsampling-seed = 5\n",
    )
    .unwrap();

    let full = tmp.path().join("full");
    run_ok(spin_args(&data, &full, &config));

    let resolved = json(&full.join("spin_config.json"));
    assert_eq!(resolved["train"]["lr"], 2e-3, "flag overrides the file");
    assert_eq!(resolved["train"]["optimizer"], "adamw", "file sets a flag");
    assert_eq!(resolved["sampling"]["max_new_tokens"], 10);

    let summary = json(&full.join("summary.json"));
    assert_eq!(summary["iterations"].as_array().unwrap().len(), 2);
    for t in 0..2 {
        let dir = full.join(format!("iter-{t}"));
        for f in [
            "generated.jsonl",
            "eval_generated.jsonl",
            "ref_logps.jsonl",
            "metrics.jsonl",
            "train_config.json",
            "eval.json",
            "checkpoint/config.json",
            "checkpoint/model.safetensors",
            "checkpoint/tokenizer.json",
        ] {
            assert!(dir.join(f).exists(), "missing {}", dir.join(f).display());
        }
        // θ_t generated in the training dtype: auto, f32 on the CPU backend.
        let record = json(&wgspin::generate::job::run_record_path(
            &dir.join("generated.jsonl"),
        ));
        assert_eq!(record["dtype"], "f32");
        let gen_rows = std::fs::read_to_string(dir.join("generated.jsonl")).unwrap();
        assert_eq!(
            gen_rows.lines().count(),
            8,
            "8 training prompts (2 held out)"
        );
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert!(
            last["rewards/accuracies"].as_f64().unwrap() > 0.5,
            "iteration {t}: {last}"
        );
        assert!(
            last["rewards/margins"].as_f64().unwrap() > 0.0,
            "iteration {t}: {last}"
        );
        ModelBundle::load(&dir.join("checkpoint"), &cpu_device().device).unwrap();
        // The model card names the iteration, the settings and the held-out result.
        let card = std::fs::read_to_string(dir.join("checkpoint/README.md")).unwrap();
        let eval = json(&dir.join("eval.json"));
        assert_mentions(
            &card,
            &[
                &format!("iteration {t} (θ{t} → θ{})", t + 1),
                "lr 2e-3",
                "adamw",
                "sft.jsonl",
                "wgspin spin",
                "## Held-out evaluation",
                &format!(
                    "| reward_accuracy | {:.4} |",
                    eval["reward_accuracy"].as_f64().unwrap()
                ),
            ],
        );
        assert_eq!(card.matches("## Held-out evaluation").count(), 1);
    }
    // Iteration 1 trains on the pairs of iterations 1 and 0.
    let refs = std::fs::read_to_string(full.join("iter-1").join("ref_logps.jsonl")).unwrap();
    assert_eq!(refs.lines().count(), 16);

    // Kill during the second iteration, rerun, compare.
    let out = tmp.path().join("out");
    let marker = out.join("iter-1").join("generated.jsonl");
    kill_when(
        &spin_args(&data, &out, &config),
        Duration::from_secs(600),
        "iteration 1 never started",
        || std::fs::read_to_string(&marker).map_or(0, |t| t.lines().count()) >= 2,
    );
    assert!(
        !out.join("summary.json").exists()
            || json(&out.join("summary.json"))["iterations"]
                .as_array()
                .unwrap()
                .len()
                < 2
    );
    let st = run_ok(spin_args(&data, &out, &config));
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(
        stderr.contains("iteration 0: generate+train already done"),
        "{stderr}"
    );
    let a = json(&full.join("summary.json"));
    let b = json(&out.join("summary.json"));
    for t in 0..2 {
        for key in [
            "reward_accuracy",
            "reward_margin",
            "human_logprob_per_token",
        ] {
            let x = a["iterations"][t]["eval"][key].as_f64().unwrap();
            let y = b["iterations"][t]["eval"][key].as_f64().unwrap();
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                "iteration {t} {key}: {y} after resume vs {x}"
            );
        }
    }

    // A rerun into the finished folder with another learning rate would mix two runs: refused
    // before anything there changes, naming the setting.
    let before = std::fs::read(full.join("spin_config.json")).unwrap();
    let mut other = spin_args(&data, &full, &config);
    let lr = other.iter().position(|a| a == "--lr").unwrap();
    other[lr + 1] = "1e-3".into();
    let st = wgspin().args(&other).output().unwrap();
    assert!(
        !st.status.success(),
        "a rerun with another --lr was accepted"
    );
    let err = String::from_utf8_lossy(&st.stderr);
    assert_mentions(
        &err,
        &["other settings", "train.lr", "0.002 there, 0.001 now"],
    );
    assert_eq!(
        std::fs::read(full.join("spin_config.json")).unwrap(),
        before
    );
}

/// `--dtype f16` makes θ_t generate in f16 as well as train in it (here on the CPU backend, which
/// runs f16 when asked).
#[test]
fn spin_generates_in_the_training_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    write_data(&data);
    let out = tmp.path().join("out");
    let flags = "--iterations 1 --epochs 1 --max-new-tokens 4 --eval-size 2 --dtype f16";
    run_ok(job_args("spin", "tiny-llama-bf16", &data, &out, flags));
    let dir = out.join("iter-0");
    assert_eq!(json(&dir.join("train_config.json"))["dtype"], "f16");
    for rows in ["generated.jsonl", "eval_generated.jsonl"] {
        let record = json(&wgspin::generate::job::run_record_path(&dir.join(rows)));
        assert_eq!(record["dtype"], "f16", "{rows}");
    }
}

#[test]
fn spin_limit_reads_the_training_prompts_and_the_held_out_slice_after_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    write_data(&data);
    let out = tmp.path().join("run");
    let flags = "--iterations 1 --epochs 1 --max-new-tokens 2 --limit 3 --eval-size 2";
    let o = run_ok(job_args("spin", "tiny-llama-bf16", &data, &out, flags));
    // Of the 10 rows only 3 + 2 are read: the first 3 train, the next 2 are held out.
    common::assert_mentions(&String::from_utf8_lossy(&o.stderr), &["5 examples"]);
    let ids = |file: &str| -> Vec<String> {
        std::fs::read_to_string(out.join("iter-0").join(file))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(ids("generated.jsonl"), ["row-1", "row-2", "row-3"]);
    assert_eq!(ids("eval_generated.jsonl"), ["row-4", "row-5"]);
}

//! Integrity, round 2. Outputs never eat inputs: every command that writes refuses an output that
//! is, contains or lies inside what it reads (with or without --overwrite), replaces an existing
//! file only with --overwrite, removes with --overwrite only what its run recorded as written, and
//! leaves no lock or folder behind when it refuses. Sizes are checked before allocating, errors
//! name the flag as typed, and a closed stdout ends a run. Each case failed before its fix.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A copy of fixture model `name` at `dest`.
fn model_at(name: &str, dest: &Path) -> PathBuf {
    copy_fixture(name, dest);
    dest.to_path_buf()
}

const TRAIN: &str = "--epochs 1 --batch-size 2 --max-length 64 --max-prompt-length 32";

/// `train --model o2/checkpoint --out o2 --overwrite` deleted its own input model, then failed
/// with "No such file".
#[test]
fn train_never_overwrites_the_model_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let o2 = tmp.path().join("o2");
    run_ok(job_args_at(
        "train",
        &fixture("tiny-llama-bf16"),
        &pairs,
        &o2,
        TRAIN,
    ));
    let model = o2.join("checkpoint");
    let before = snapshot(&o2);
    let flags = format!("{TRAIN} --overwrite");
    let e = run_err(job_args_at("train", &model, &pairs, &o2, &flags));
    assert_mentions(
        &e,
        &["--out", "contains", "--model", "choose another --out"],
    );
    assert_eq!(snapshot(&o2), before, "the refused run changed the folder");
    // Into the model folder itself, and into a folder inside it.
    for out in [model.clone(), model.join("again")] {
        let e = run_err(job_args_at("train", &model, &pairs, &out, &flags));
        assert_mentions(&e, &["--out", "--model"]);
    }
    assert_eq!(snapshot(&o2), before);
    assert!(!model.join("again").exists());
}

/// `spin --model s1/iter-0/checkpoint --out s1 --overwrite` did the same to a spin run.
#[test]
fn spin_never_overwrites_the_model_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let s1 = tmp.path().join("s1");
    let model = model_at("tiny-llama-bf16", &s1.join("iter-0").join("checkpoint"));
    // The marker of a spin run, so --overwrite would go ahead if the paths were not checked.
    std::fs::write(s1.join(wgspin::spin::CONFIG_FILE), "{}").unwrap();
    let data = fixture("data").join("prompt_response.jsonl");
    let before = snapshot(&s1);
    let e = run_err(job_args_at("spin", &model, &data, &s1, "--overwrite"));
    assert_mentions(&e, &["--out", "contains", "--model"]);
    assert_eq!(snapshot(&s1), before);
}

/// `generate --data sft.jsonl --out sft.jsonl --overwrite` replaced the SFT data with generated
/// rows; `--out MODEL/gen.jsonl` wrote into the model folder (and changed its identity).
#[test]
fn generate_never_writes_over_or_into_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let sft = tmp.path().join("sft.jsonl");
    std::fs::copy(fixture("data").join("prompt_response.jsonl"), &sft).unwrap();
    let data_before = std::fs::read(&sft).unwrap();
    let model = model_at("tiny-llama-bf16", &tmp.path().join("m"));
    let model_before = snapshot(&model);
    for flags in ["", "--overwrite"] {
        let e = run_err(job_args_at("generate", &model, &sft, &sft, flags));
        let same = format!("{} is {}", sft.display(), sft.display());
        assert_mentions(&e, &["--out", &same, "--data"]);
        let e = run_err(job_args_at(
            "generate",
            &model,
            &sft,
            &model.join("gen.jsonl"),
            flags,
        ));
        assert_mentions(&e, &["--out", "lies inside", "--model"]);
    }
    assert_eq!(std::fs::read(&sft).unwrap(), data_before);
    assert_eq!(snapshot(&model), model_before);
    assert!(!tmp.path().join("sft.jsonl.lock").exists());
}

fn export_gguf(model: &Path, out: &Path, flags: &str) -> Vec<String> {
    let mut v = args(&["export-gguf", "--model", model.to_str().unwrap()]);
    v.extend(args(&["--out", out.to_str().unwrap()]));
    v.extend(flags.split_whitespace().map(String::from));
    v
}

/// `export-gguf --out MODEL/model.safetensors` exited 0 and destroyed the model; any existing file
/// was replaced without asking.
#[test]
fn export_gguf_asks_before_replacing_and_never_replaces_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_at("tiny-llama-bf16", &tmp.path().join("m"));
    let before = snapshot(&model);
    for flags in ["", "--overwrite"] {
        let e = run_err(export_gguf(&model, &model.join("model.safetensors"), flags));
        assert_mentions(&e, &["--out", "lies inside", "--model"]);
    }
    assert_eq!(snapshot(&model), before);

    let notes = tmp.path().join("notes.gguf");
    std::fs::write(&notes, "mine").unwrap();
    let e = run_err(export_gguf(&model, &notes, ""));
    assert_mentions(&e, &["notes.gguf", "exists", "--overwrite"]);
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine");
    run_ok(export_gguf(&model, &notes, "--overwrite"));
    assert_eq!(&std::fs::read(&notes).unwrap()[..4], b"GGUF");
}

fn merge(adapter: &Path, out: &Path, flags: &str) -> Vec<String> {
    let mut v = args(&["merge", "--device", "cpu", "--adapter"]);
    v.push(adapter.to_str().unwrap().into());
    v.extend(args(&["--out", out.to_str().unwrap()]));
    v.extend(flags.split_whitespace().map(String::from));
    v
}

/// `merge --out notes.txt` turned a file into a model folder and hid the original as
/// `.notes.txt.old-PID`; the adapter's base and the adapter are inputs too.
#[test]
fn merge_never_replaces_a_file_or_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    model_at("tiny-llama-bf16", &tmp.path().join("tiny-llama-bf16"));
    let adapter = model_at("tiny-llama-bf16-lora", &tmp.path().join("lora"));
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    for flags in ["", "--overwrite"] {
        let e = run_err(merge(&adapter, &notes, flags));
        assert_mentions(&e, &["notes.txt", "is a file"]);
    }
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine");
    let hidden: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left {hidden:?}");

    let base = tmp.path().join("tiny-llama-bf16");
    let before = snapshot(&base);
    let e = run_err(merge(&adapter, &base, "--overwrite"));
    assert_mentions(&e, &["--out", "the base model of --adapter"]);
    let e = run_err(merge(&adapter, &adapter.join("merged"), ""));
    assert_mentions(&e, &["--out", "lies inside", "--adapter"]);
    assert_eq!(snapshot(&base), before);

    // A merged model is replaced only with --overwrite; a folder of other files never.
    let merged = tmp.path().join("merged");
    run_ok(merge(&adapter, &merged, ""));
    let e = run_err(merge(&adapter, &merged, ""));
    assert_mentions(&e, &["already holds files", "--overwrite"]);
    run_ok(merge(&adapter, &merged, "--overwrite"));
    // A file of the user's beside the merged model: --overwrite would swap it away too.
    std::fs::write(merged.join("notes.txt"), "mine").unwrap();
    let e = run_err(merge(&adapter, &merged, "--overwrite"));
    assert_mentions(&e, &["not a Hugging Face model's", "notes.txt"]);
    assert!(merged.join("notes.txt").is_file());
    // A folder holding only hidden entries (a fresh clone's .git) is not empty.
    let clone = tmp.path().join("clone");
    std::fs::create_dir_all(clone.join(".git")).unwrap();
    std::fs::write(clone.join(".gitattributes"), "*.safetensors lfs").unwrap();
    let e = run_err(merge(&adapter, &clone, ""));
    assert_mentions(&e, &["already holds files", ".git"]);
    assert!(clone.join(".git").is_dir() && clone.join(".gitattributes").is_file());
}

/// `--overwrite` removed a `runs/` folder of the user's when the run wrote no TensorBoard files
/// (it went by names, not by what the run wrote).
#[test]
fn overwrite_keeps_entries_the_run_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let out = tmp.path().join("run");
    let model = fixture("tiny-llama-bf16");
    run_ok(job_args_at("train", &model, &pairs, &out, TRAIN));
    assert!(!out.join("runs").exists(), "no --report-to: no runs/");
    std::fs::create_dir(out.join("runs")).unwrap();
    std::fs::write(out.join("runs").join("mine.txt"), "mine").unwrap();
    let flags = format!("{TRAIN} --overwrite");
    run_ok(job_args_at("train", &model, &pairs, &out, &flags));
    assert_eq!(
        std::fs::read(out.join("runs").join("mine.txt")).unwrap(),
        b"mine"
    );
    assert!(out.join("checkpoint").join("model.safetensors").is_file());
}

/// `train --data` on a file `generate` is still writing (and has locked) trained on the part
/// written so far.
#[test]
fn data_being_written_is_refused_with_its_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let out = tmp.path().join("run");
    let held = wgspin::manifest::lock_file(&pairs).unwrap();
    let e = run_err(job_args_at(
        "train",
        &fixture("tiny-llama-bf16"),
        &pairs,
        &out,
        TRAIN,
    ));
    assert_mentions(&e, &["pairs.jsonl", "still being written", "wait for it"]);
    assert!(!out.exists());
    drop(held);
    run_ok(job_args_at(
        "train",
        &fixture("tiny-llama-bf16"),
        &pairs,
        &out,
        TRAIN,
    ));
}

/// A model's identity hashed every `*.json` in its folder, so a run record written beside the
/// model changed it and every resume from that model was refused.
#[test]
fn model_identity_covers_only_what_loading_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_at("tiny-llama-bf16", &tmp.path().join("m"));
    let id = wgspin::load::source::model_identity(&model).unwrap();
    std::fs::write(model.join("gen.jsonl.run.json"), "{}").unwrap();
    std::fs::write(model.join("notes.json"), "{}").unwrap();
    assert_eq!(wgspin::load::source::model_identity(&model).unwrap(), id);
    edit_json(&model.join("tokenizer_config.json"), |v| {
        v["model_max_length"] = serde_json::json!(77)
    });
    assert_ne!(wgspin::load::source::model_identity(&model).unwrap(), id);
}

/// `train --lora-rank 1000000000` aborted (exit 134, a 256 GB allocation) after writing
/// train_config.json.
#[test]
fn an_impossible_lora_rank_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let out = tmp.path().join("run");
    let flags = format!("{TRAIN} --lora-rank 1000000000");
    let e = run_err(job_args_at(
        "train",
        &fixture("tiny-llama-bf16"),
        &pairs,
        &out,
        &flags,
    ));
    assert_mentions(&e, &["--lora-rank 1000000000", "pass --lora-rank"]);
    assert!(!out.exists(), "the refused run left {}", out.display());
    let mut plan = args(&["plan", "--device", "cpu", "--model"]);
    plan.push(fixture("tiny-llama-bf16").to_str().unwrap().into());
    plan.extend(args(&["--lora-rank", "1000000000"]));
    assert_mentions(&run_err(plan), &["--lora-rank 1000000000"]);
}

/// A refused run left `.wgspin.lock` in a folder it never wrote.
#[test]
fn a_refused_run_leaves_no_lock_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let out = tmp.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let e = run_err(job_args_at(
        "train",
        &fixture("tiny-llama-bf16"),
        &pairs,
        &out,
        TRAIN,
    ));
    assert_mentions(&e, &["notes.txt"]);
    assert_eq!(wgspin_entries(&out), vec!["notes.txt"]);
}

/// Every entry of `dir`, hidden ones included.
fn wgspin_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// An IO error printed its cause twice ("X: Not a directory ... Caused by: Not a directory").
#[cfg(unix)]
#[test]
fn an_io_error_names_its_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let e = run_err(export_gguf(
        &fixture("tiny-llama-bf16"),
        &notes.join("x.gguf"),
        "",
    ));
    assert_eq!(e.matches("Not a directory").count(), 1, "{e}");
}

/// `export-pairs` said "wrote 5 Trl rows": the format as --format spells it.
#[test]
fn export_pairs_names_the_format_as_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trl.jsonl");
    let mut v = args(&["export-pairs", "--format", "trl", "--data"]);
    v.push(fixture("data").join("spin.jsonl").to_str().unwrap().into());
    v.extend(args(&["--out", out.to_str().unwrap()]));
    let o = run_ok(v.clone());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(" trl rows to "), "{err}");
    let e = run_err(v);
    assert_mentions(&e, &["exists", "--overwrite"]);
    let mut into_data = args(&["export-pairs", "--format", "spin", "--overwrite", "--data"]);
    let data = tmp.path().join("spin.jsonl");
    std::fs::copy(fixture("data").join("spin.jsonl"), &data).unwrap();
    into_data.push(data.to_str().unwrap().into());
    into_data.extend(args(&["--out", data.to_str().unwrap()]));
    let same = format!("{} is {}", data.display(), data.display());
    assert_mentions(&run_err(into_data), &["--out", &same, "--data"]);
}

/// `plan --batch-size 100000000000000000` panicked on an arithmetic overflow (and a release
/// build wrapped the estimate to a small number that `--max-memory` accepted).
#[test]
fn a_huge_batch_is_estimated_as_huge() {
    let mut plan = args(&["plan", "--device", "cpu", "--model"]);
    plan.push(fixture("tiny-llama-bf16").to_str().unwrap().into());
    plan.extend(args(&[
        "--batch-size",
        "100000000000000000",
        "--max-memory",
        "8GB",
    ]));
    let e = run_err(plan);
    assert_mentions(&e, &["--max-memory 8", "--batch-size 100000000000000000"]);
}

/// `plan --max-prompt-length 0` talked about `--max-length`; other checks named no flag at all
/// ("batch size and max new tokens must be at least 1", "lora-alpha must be > 0").
#[test]
fn errors_name_the_flag_as_typed() {
    let model = fixture("tiny-llama-bf16");
    for (flags, named) in [
        ("--max-prompt-length 0", "--max-prompt-length 0"),
        ("--grad-accum 0", "--grad-accum 0"),
        ("--lora-rank 8 --lora-alpha 0", "--lora-alpha 0"),
        ("--warmup-ratio 1", "--warmup-ratio 1"),
    ] {
        let mut plan = args(&["plan", "--device", "cpu", "--model"]);
        plan.push(model.to_str().unwrap().into());
        plan.extend(flags.split_whitespace().map(String::from));
        let e = run_err(plan);
        assert_mentions(&e, &[named]);
        // The old message named --max-length for any of the two lengths.
        if flags.contains("prompt") {
            assert!(!e.contains("--max-length "), "{flags}: {e}");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("data").join("prompt_response.jsonl");
    for (flags, named) in [
        ("--gen-batch-size 0", "--gen-batch-size"),
        ("--max-new-tokens 0", "--max-new-tokens 0"),
        ("--temperature=-1", "--temperature -1"),
        ("--top-p 0", "--top-p 0"),
    ] {
        let out = tmp.path().join("g.jsonl");
        let e = run_err(job_args_at("generate", &model, &data, &out, flags));
        assert_mentions(&e, &[named]);
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{flags}: the refused run left {left:?}");
    }
}

/// `logprobs … | head -1` scored every row before failing on the closed pipe; `--out` replaced
/// any file, the data included.
#[cfg(unix)]
#[test]
fn logprobs_stops_when_its_reader_does_and_keeps_its_inputs() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    let rows: String = (0..1000)
        .map(|i| {
            serde_json::json!({"prompt": format!("q {i}"), "response": format!("a {i}")})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&data, &rows).unwrap();
    let mut cmd = wgspin();
    cmd.args(["logprobs", "--device", "cpu", "--model"])
        .arg(fixture("tiny-llama-bf16"))
        .arg("--data")
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"index\":0"), "{first}");
    // The pipe is closed here (the reader is dropped), as `head -1` closes it.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("scored 1000/1000"), "scored every row: {err}");

    let mut into_data = args(&["logprobs", "--device", "cpu", "--overwrite", "--model"]);
    into_data.push(fixture("tiny-llama-bf16").to_str().unwrap().into());
    into_data.extend(args(&["--data", data.to_str().unwrap()]));
    into_data.extend(args(&["--out", data.to_str().unwrap()]));
    let same = format!("{} is {}", data.display(), data.display());
    assert_mentions(&run_err(into_data), &["--out", &same, "--data"]);
    assert_eq!(std::fs::read_to_string(&data).unwrap(), rows);
}

//! What a careless or adversarial user can do, and what wgspin does instead of panicking, aborting,
//! hanging or writing NaN: each case asserts the failure, that the message names the file, flag or
//! tensor at fault, and (for a refused job) that nothing was written.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A copy of fixture `name` in a temp folder, with `damage` applied.
fn damaged(name: &str, damage: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_fixture(name, &dir);
    damage(&dir);
    (tmp, dir)
}

fn data(rows: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let text: String = rows
        .iter()
        .map(|(p, r)| serde_json::json!({"prompt": p, "response": r}).to_string() + "\n")
        .collect();
    temp_file("rows.jsonl", text)
}

fn logprobs(model: &Path, data: &Path) -> Vec<String> {
    let mut v = args(&["logprobs", "--device", "cpu", "--model"]);
    v.push(model.to_str().unwrap().into());
    v.extend(args(&["--data", data.to_str().unwrap()]));
    v
}

/// A tokenizer token the embedding has no row for (an added token, id = vocab_size) used to panic
/// in burn's gather.
#[test]
fn token_outside_the_vocabulary_is_named() {
    let (_t, dir) = damaged("tiny-llama-bf16", |d| {
        edit_json(&d.join("tokenizer.json"), |t| {
            t["added_tokens"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "id": 400, "content": "<extra>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": false
                }));
        })
    });
    let (_d, rows) = data(&[("say <extra> please", "ok")]);
    let e = run_err(logprobs(&dir, &rows));
    assert_mentions(
        &e,
        &["<extra>", "id 400", "vocab_size 400", "tokenizer.json"],
    );
}

/// A prompt longer than the context used to size attention scores of 28.8 GB and abort.
#[test]
fn rows_longer_than_the_context_are_refused_or_cut() {
    let long = "ab ".repeat(2000); // well over the fixture's 512-token context
    let (_d, rows) = data(&[("short", "ok"), (&long, "ok")]);
    let e = run_err(logprobs(&fixture("tiny-llama-bf16"), &rows));
    assert_mentions(&e, &["rows.jsonl:2", "context", "512"]);
    // generate keeps the end of the prompt and says how many it cut.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gen.jsonl");
    let flags = "--max-new-tokens 4 --temperature 0";
    let res = run_ok(job_args("generate", "tiny-llama-bf16", &rows, &out, flags));
    assert_mentions(
        &String::from_utf8_lossy(&res.stderr),
        &["1 prompts were longer", "kept their last tokens"],
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
    let flags = "--max-new-tokens 600";
    let out2 = tmp.path().join("gen2.jsonl");
    let e = run_err(job_args("generate", "tiny-llama-bf16", &rows, &out2, flags));
    assert_mentions(&e, &["--max-new-tokens 600", "context of 512"]);
}

/// A config claiming 10⁸ layers used to build 10⁹ tensor names (3.5 GB, 13 s) before failing.
#[test]
fn layer_count_is_checked_against_the_weights_first() {
    let (_t, dir) = damaged("tiny-llama-bf16", |d| {
        edit_json(&d.join("config.json"), |c| {
            c["num_hidden_layers"] = 100_000_000.into()
        })
    });
    let (_d, rows) = data(&[("a", "b")]);
    let e = run_err(logprobs(&dir, &rows));
    assert_mentions(
        &e,
        &["100000000 layers", "weights hold 2", "model.safetensors"],
    );
}

/// The same in a GGUF file: `block_count` patched to 10⁹ in an export of the tiny model.
#[test]
fn gguf_block_count_is_checked_against_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = fixture("tiny-llama-bf16");
    run_ok(["export-gguf", "--model", &s(&model), "--out", &s(&path)]);
    let mut bytes = std::fs::read(&path).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes(), "a u32 value");
    bytes[at + 4..at + 8].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let (_d, rows) = data(&[("a", "b")]);
    let e = run_err(logprobs(&path, &rows));
    assert_mentions(&e, &["1000000000 layers", "weights hold 2"]);
}

/// `--data /dev/zero` used to allocate 4 GiB looking for the end of its first line.
#[cfg(unix)]
#[test]
fn a_data_file_without_line_ends_is_refused() {
    let e = run_err(logprobs(
        &fixture("tiny-llama-bf16"),
        Path::new("/dev/zero"),
    ));
    assert_mentions(&e, &["/dev/zero:1", "longer than 64 MiB"]);
}

/// A model-supplied chat template that never ends used to hang every command.
#[test]
fn endless_chat_template_stops_with_its_file_named() {
    let (_t, dir) = damaged("tiny-llama-bf16", |d| {
        let endless =
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
        std::fs::write(d.join("chat_template.jinja"), endless).unwrap();
    });
    let (_d, rows) = data(&[("a", "b")]);
    let e = run_err(logprobs(&dir, &rows));
    assert_mentions(&e, &["chat_template.jinja", "budget"]);
}

/// An empty template used to be reported as "no bos token".
#[test]
fn empty_chat_template_is_named_as_such() {
    let (_t, dir) = damaged("tiny-llama-bf16", |d| {
        std::fs::write(d.join("chat_template.jinja"), "").unwrap();
    });
    let (_d, rows) = data(&[("a", "b")]);
    let e = run_err(logprobs(&dir, &rows));
    assert_mentions(&e, &["chat_template.jinja", "no text"]);
}

/// A NaN weight used to give `"logprob": null` rows and exit 0.
#[test]
fn non_finite_weights_are_refused_by_name() {
    let (_t, dir) = damaged("tiny-llama-bf16", |d| {
        let path = d.join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let start = header["model.norm.weight"]["data_offsets"][0]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(header["model.norm.weight"]["dtype"], "BF16");
        let at = 8 + n + start;
        bytes[at..at + 2].copy_from_slice(&half::bf16::NAN.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
    });
    let (_d, rows) = data(&[("a", "b")]);
    let e = run_err(logprobs(&dir, &rows));
    assert_mentions(&e, &["model.norm.weight", "NaN"]);
}

/// `rms_norm_eps < 0` and an eos id past the vocabulary used to load and give NaN or nothing.
#[test]
fn impossible_config_values_are_named() {
    let (_d, rows) = data(&[("a", "b")]);
    for (key, value, names) in [
        ("rms_norm_eps", serde_json::json!(-1e-5), "rms_norm_eps"),
        ("eos_token_id", serde_json::json!(400), "eos_token_id 400"),
        ("rope_theta", serde_json::json!(0.0), "rope_theta"),
    ] {
        let (_t, dir) = damaged("tiny-llama-bf16", |d| {
            edit_json(&d.join("config.json"), |c| {
                c[key] = value.clone();
                if let Some(p) = c.get_mut("rope_parameters")
                    && key == "rope_theta"
                {
                    p["rope_theta"] = value.clone();
                }
            })
        });
        let e = run_err(logprobs(&dir, &rows));
        assert_mentions(&e, &["config.json", names]);
    }
}

/// Training settings that feed arithmetic are checked before anything runs or is written.
#[test]
fn bad_training_flags_fail_before_any_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = fixture("data").join("spin.jsonl");
    for (flags, named) in [
        ("--weight-decay nan", "weight-decay"),
        ("--weight-decay=-0.1", "weight-decay"),
        ("--max-grad-norm=-1", "max-grad-norm"),
        ("--max-grad-norm nan", "max-grad-norm"),
    ] {
        let out = tmp.path().join("out");
        let e = run_err(job_args("train", "tiny-llama-bf16", &pairs, &out, flags));
        assert_mentions(&e, &[named]);
        assert!(!out.exists(), "{flags}: the refused run created its --out");
    }
}

/// SPIN settings that used to fail only after a whole generate + train stage.
#[test]
fn bad_spin_flags_fail_before_the_first_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let sft = fixture("data").join("prompt_response.jsonl");
    for (flags, named) in [
        ("--eval-size 0", "--eval-size"),
        ("--limit 0", "--limit"),
        ("--stop-accuracy 1.5", "--stop-accuracy"),
        ("--stop-accuracy=-0.1", "--stop-accuracy"),
    ] {
        let out = tmp.path().join("spin");
        let e = run_err(job_args("spin", "tiny-llama-bf16", &sft, &out, flags));
        assert_mentions(&e, &[named]);
        assert!(!out.exists(), "{flags}: the refused run created its --out");
    }
}

/// A wrong value in a --config file used to be reported against the flag, not the file.
#[test]
fn bad_config_file_value_names_the_file_and_key() {
    let (_d, cfg) = temp_file("train.toml", "beta = \"high\"\n");
    let (_d2, rows) = data(&[("a", "b")]);
    let mut v = job_args("train", "tiny-llama-bf16", &rows, Path::new("out"), "");
    v.extend(args(&["--config", cfg.to_str().unwrap()]));
    let e = run_err(v);
    assert_mentions(&e, &["train.toml", "\"beta\"", "high", "--beta"]);
}

/// A safetensors header whose shape and byte range disagree used to be reported without a name.
#[test]
fn mis_sized_safetensors_tensor_is_named() {
    let header = br#"{"model.norm.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    let (_d, path) = temp_file("model.safetensors", bytes);
    let e = match wgspin::hf::weights::WeightFiles::open_files(&[path]) {
        Ok(_) => panic!("a mis-sized tensor was accepted"),
        Err(e) => e.to_string(),
    };
    assert_mentions(&e, &["model.norm.weight", "[3]", "12 bytes", "span 8"]);
}

// ---- run integrity: nothing mixed, nothing lost ----

fn tiny_train(pairs: &Path, out: &Path, model: &Path, extra: &str) -> Vec<String> {
    let mut v = args(&[
        "train",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
    ]);
    v.extend(args(&[
        "--data",
        pairs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    v.extend(args(&["--epochs", "1", "--batch-size", "2"]));
    v.extend(extra.split_whitespace().map(String::from));
    v
}

/// `train --resume` used to check only the training flags: another model or other pairs
/// continued silently.
#[test]
fn resume_refuses_another_model_or_other_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = fixture("data").join("spin.jsonl");
    let out = tmp.path().join("run");
    let llama = fixture("tiny-llama-bf16");
    run_ok(tiny_train(&pairs, &out, &llama, ""));
    let before = snapshot(&out);
    let e = run_err(tiny_train(
        &pairs,
        &out,
        &fixture("tiny-qwen2-f32"),
        "--resume",
    ));
    assert_mentions(&e, &["another model or on other pairs", "model.sha256"]);
    let (_d, other) = temp_file(
        "other.jsonl",
        std::fs::read_to_string(&pairs)
            .unwrap()
            .replace("Blue.", "Red."),
    );
    let e = run_err(tiny_train(&other, &out, &llama, "--resume"));
    assert_mentions(&e, &["pairs_sha256"]);
    assert_eq!(
        snapshot(&out),
        before,
        "a refused resume changed the folder"
    );
}

/// `train --out` into a folder of someone else's files used to overwrite them.
#[test]
fn train_refuses_a_folder_it_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"mine\": 1}\n").unwrap();
    let before = snapshot(&out);
    let pairs = fixture("data").join("spin.jsonl");
    let e = run_err(tiny_train(&pairs, &out, &fixture("tiny-llama-bf16"), ""));
    assert_mentions(&e, &["metrics.jsonl", "no `wgspin train` or `sft` wrote"]);
    assert_eq!(snapshot(&out), before);
}

/// Two runs on one --out used to race (one failed, the other reported the loser's metrics).
#[test]
fn an_output_in_use_is_refused_with_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("busy");
    let held = wgspin::manifest::lock_dir(&out).unwrap();
    let pairs = fixture("data").join("spin.jsonl");
    let e = run_err(tiny_train(&pairs, &out, &fixture("tiny-llama-bf16"), ""));
    assert_mentions(&e, &["is in use by"]);
    // Windows locks the whole file, so the holder's pid cannot be read back there.
    #[cfg(unix)]
    assert_mentions(&e, &[&format!("wgspin process {}", std::process::id())]);
    drop(held);
    run_ok(tiny_train(&pairs, &out, &fixture("tiny-llama-bf16"), ""));
}

/// Killed between the checkpoint swap's two renames, a run used to restart from step 1 with two
/// complete copies hidden in `.checkpoint.old-*`; stale copies were never cleaned.
#[test]
fn a_checkpoint_lost_in_the_swap_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = fixture("data").join("spin.jsonl");
    let out = tmp.path().join("run");
    let model = fixture("tiny-llama-bf16");
    run_ok(tiny_train(&pairs, &out, &model, ""));
    let ckpt = out.join("checkpoint");
    let weights = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    // What a kill after `checkpoint -> .checkpoint.old-PID` leaves, plus a half-written tmp.
    std::fs::rename(&ckpt, out.join(".checkpoint.old-4242")).unwrap();
    std::fs::create_dir(out.join(".checkpoint.tmp-4243")).unwrap();
    std::fs::write(
        out.join(".checkpoint.tmp-4243").join("model.safetensors"),
        b"half",
    )
    .unwrap();
    let res = run_ok(tiny_train(&pairs, &out, &model, "--resume"));
    assert_mentions(
        &String::from_utf8_lossy(&res.stderr),
        &["already holds a finished run"],
    );
    assert_eq!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        weights
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".checkpoint."))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// `generate` into an output made by another model or sampler used to keep its rows and mix
/// two models' answers in one file.
#[test]
fn generate_refuses_to_mix_models_or_samplers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("data").join("prompt_response.jsonl");
    let out = tmp.path().join("gen.jsonl");
    let flags = "--max-new-tokens 3 --limit 1";
    run_ok(job_args("generate", "tiny-llama-bf16", &data, &out, flags));
    let before = std::fs::read(&out).unwrap();
    for (model, flags, named) in [
        ("tiny-qwen2-f32", "--max-new-tokens 3", "model.sha256"),
        (
            "tiny-llama-bf16",
            "--max-new-tokens 3 --temperature 0.3",
            "sampling.temperature",
        ),
        ("tiny-llama-bf16", "--max-new-tokens 5", "max_new_tokens"),
        // auto is f32 on the CPU backend; f16 decides near-ties differently.
        ("tiny-llama-bf16", "--max-new-tokens 3 --dtype f16", "dtype"),
    ] {
        let e = run_err(job_args("generate", model, &data, &out, flags));
        assert_mentions(&e, &["another model or sampler", named]);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            before,
            "{flags}: the file changed"
        );
    }
    let record = wgspin::generate::job::run_record_path(&out);
    assert_mentions(
        &std::fs::read_to_string(&record).unwrap(),
        &["\"dtype\": \"f32\""],
    );
    // The same command continues it, with the dtype spelled out or left to auto, and so does
    // a record written before generation had a dtype (those runs were f32).
    for flags in ["--max-new-tokens 3", "--max-new-tokens 3 --dtype f32"] {
        run_ok(job_args("generate", "tiny-llama-bf16", &data, &out, flags));
    }
    edit_json(&record, |r| {
        r.as_object_mut().unwrap().remove("dtype");
    });
    run_ok(job_args(
        "generate",
        "tiny-llama-bf16",
        &data,
        &out,
        "--max-new-tokens 3",
    ));
}

/// A rerun of `spin` on data changed in place (same path) used to reuse the finished iterations.
#[test]
fn spin_refuses_data_changed_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    std::fs::copy(fixture("data").join("prompt_response.jsonl"), &data).unwrap();
    let out = tmp.path().join("spin");
    let flags = "--iterations 1 --epochs 1 --max-new-tokens 3";
    run_ok(job_args("spin", "tiny-llama-bf16", &data, &out, flags));
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.replace("\"Yes.\"", "\"Yes!\"")).unwrap();
    let e = run_err(job_args("spin", "tiny-llama-bf16", &data, &out, flags));
    assert_mentions(&e, &["data_sha256"]);
}

/// A template that does not compile names its own file, not tokenizer_config.json.
#[test]
fn broken_chat_template_names_its_file() {
    let (_t, dir) = damaged("tiny-llama-bf16", |d| {
        std::fs::write(d.join("chat_template.jinja"), "{% for %}").unwrap();
    });
    let (_d, rows) = data(&[("a", "b")]);
    let e = run_err(logprobs(&dir, &rows));
    assert_mentions(&e, &["chat_template.jinja", "does not compile"]);
}

/// `generate --out` at someone's file (even one without a line end) is refused untouched.
#[test]
fn generate_leaves_a_foreign_file_untouched() {
    let data = fixture("data").join("prompt_response.jsonl");
    for text in [
        "not ours, no newline",
        "{\"id\": \"10\", \"x\": 1}\nhalf a li",
    ] {
        let (_d, out) = temp_file("theirs.jsonl", text);
        let _ = wgspin()
            .args(job_args(
                "generate",
                "tiny-llama-bf16",
                &data,
                &out,
                "--max-new-tokens 2",
            ))
            .output()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            text,
            "the file changed"
        );
    }
}

/// A metadata file that never ends (here config.json pointing at /dev/zero) used to be read whole.
#[cfg(unix)]
#[test]
fn an_endless_metadata_file_is_refused() {
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        let (_t, dir) = damaged("tiny-llama-bf16", |d| {
            std::fs::remove_file(d.join(file)).unwrap();
            std::os::unix::fs::symlink("/dev/zero", d.join(file)).unwrap();
        });
        let (_d, rows) = data(&[("a", "b")]);
        let e = run_err(logprobs(&dir, &rows));
        assert_mentions(&e, &[file, "larger than 256 MiB"]);
    }
}

/// `sft` into a folder that holds a finished SFT run used to overwrite its checkpoint.
#[test]
fn sft_refuses_a_folder_with_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("data").join("prompt_response.jsonl");
    let out = tmp.path().join("sft");
    run_ok(job_args(
        "sft",
        "tiny-llama-bf16",
        &data,
        &out,
        "--epochs 1",
    ));
    let before = snapshot(&out);
    let e = run_err(job_args(
        "sft",
        "tiny-llama-bf16",
        &data,
        &out,
        "--epochs 1",
    ));
    assert_mentions(&e, &["already holds a training run", "--resume"]);
    assert_eq!(snapshot(&out), before);
}

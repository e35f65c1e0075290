//! Bad inputs give clear errors that name the file, line or tensor at fault.

mod common;

use std::path::Path;

use common::*;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;

/// The load error of a copy of fixture `name` once `damage` has changed its files.
fn broken(name: &str, damage: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_fixture(name, dir);
    damage(dir);
    match ModelBundle::load(dir, &cpu_device().device) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The load error of tiny-llama-bf16 with `f` applied to its config.json.
fn broken_config(f: impl FnOnce(&mut serde_json::Value)) -> String {
    broken("tiny-llama-bf16", |d| edit_json(&d.join("config.json"), f))
}

fn remove(dir: &Path, file: &str) {
    std::fs::remove_file(dir.join(file)).unwrap();
}

#[test]
fn missing_config() {
    let e = broken("tiny-llama-bf16", |d| remove(d, "config.json"));
    assert_mentions(&e, &["config.json", "not found"]);
}

#[test]
fn missing_tokenizer() {
    let e = broken("tiny-llama-bf16", |d| remove(d, "tokenizer.json"));
    assert_mentions(&e, &["tokenizer.json", "not found"]);
}

#[test]
fn missing_weights() {
    let e = broken("tiny-llama-bf16", |d| remove(d, "model.safetensors"));
    assert_mentions(&e, &["safetensors"]);
}

#[test]
fn missing_shard() {
    let e = broken("tiny-qwen2-f32", |d| {
        remove(d, "model-00002-of-00004.safetensors")
    });
    assert_mentions(&e, &["model-00002-of-00004.safetensors"]);
}

#[test]
fn pickle_weights_are_refused() {
    let e = broken("tiny-llama-bf16", |d| {
        remove(d, "model.safetensors");
        std::fs::write(d.join("pytorch_model.bin"), b"\x80\x02not really").unwrap();
    });
    assert_mentions(&e, &["pytorch_model.bin", "safetensors", "pickle"]);
}

#[test]
fn unsupported_model_type() {
    let e = broken_config(|v| v["model_type"] = "gpt_neox".into());
    assert_mentions(&e, &["gpt_neox", "llama, mistral, qwen2"]);
}

#[test]
fn wrong_tensor_shape() {
    let e = broken_config(|v| v["intermediate_size"] = 128.into());
    assert_mentions(
        &e,
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "[96, 64]",
            "[128, 64]",
        ],
    );
}

#[test]
fn missing_tensor() {
    // Untied config: the checkpoint has no lm_head.weight.
    let e = broken_config(|v| v["tie_word_embeddings"] = false.into());
    assert_mentions(&e, &["lm_head.weight", "missing"]);
}

#[test]
fn unexpected_tensor() {
    // One layer fewer than the checkpoint holds.
    let e = broken_config(|v| v["num_hidden_layers"] = 1.into());
    assert_mentions(&e, &["model.layers.1.", "unexpected"]);
}

#[test]
fn truncated_safetensors() {
    let e = broken("tiny-llama-bf16", |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_mentions(&e, &["model.safetensors"]);
}

#[test]
fn unsupported_tensor_dtype_is_named_from_the_header() {
    let e = broken("tiny-llama-bf16", |d| {
        let p = d.join("model.safetensors");
        let mut bytes = std::fs::read(&p).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        // I16 has BF16's size, so only the dtype is wrong; the trailing space keeps the header
        // length.
        let (key, new) = (
            r#""model.norm.weight":{"dtype":"BF16""#,
            r#""model.norm.weight":{"dtype":"I16" "#,
        );
        let at = 8 + header.find(key).expect("fixture header layout");
        bytes[at..at + key.len()].copy_from_slice(new.as_bytes());
        std::fs::write(&p, &bytes).unwrap();
    });
    assert_mentions(&e, &["model.safetensors", "model.norm.weight", "I16"]);
}

#[test]
fn malformed_jsonl_line_is_named() {
    let (_dir, p) = temp_file(
        "data.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": \"a\"}\n",
    );
    let e = wgspin::data::read_prompt_responses(&p)
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["data.jsonl:3:", "response"]);
}

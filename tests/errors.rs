//! Bad inputs give clear errors that name the file, line or tensor at fault.

mod common;

use std::path::Path;

use common::*;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match ModelBundle::load(dir, &cpu_device().device) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn missing_config() {
    let d = copy_fixture("tiny-llama-bf16");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("not found"), "{e}");
}

#[test]
fn missing_tokenizer() {
    let d = copy_fixture("tiny-llama-bf16");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn missing_weights() {
    let d = copy_fixture("tiny-llama-bf16");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("safetensors"), "{e}");
}

#[test]
fn missing_shard() {
    let d = copy_fixture("tiny-qwen2-f32");
    std::fs::remove_file(d.path().join("model-00002-of-00004.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00002-of-00004.safetensors"), "{e}");
}

#[test]
fn pickle_weights_are_refused() {
    let d = copy_fixture("tiny-llama-bf16");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("pytorch_model.bin"), b"\x80\x02not really").unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("pytorch_model.bin") && e.contains("safetensors") && e.contains("pickle"),
        "{e}"
    );
}

#[test]
fn unsupported_model_type() {
    let d = copy_fixture("tiny-llama-bf16");
    edit_json(&d.path().join("config.json"), |v| {
        v["model_type"] = "gpt_neox".into()
    });
    let e = load_err(d.path());
    assert!(
        e.contains("gpt_neox") && e.contains("llama, mistral, qwen2"),
        "{e}"
    );
}

#[test]
fn wrong_tensor_shape() {
    let d = copy_fixture("tiny-llama-bf16");
    edit_json(&d.path().join("config.json"), |v| {
        v["intermediate_size"] = 128.into()
    });
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[96, 64]")
            && e.contains("[128, 64]"),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let d = copy_fixture("tiny-llama-bf16");
    // Untied config: the checkpoint has no lm_head.weight.
    edit_json(&d.path().join("config.json"), |v| {
        v["tie_word_embeddings"] = false.into()
    });
    let e = load_err(d.path());
    assert!(e.contains("lm_head.weight") && e.contains("missing"), "{e}");
}

#[test]
fn unexpected_tensor() {
    let d = copy_fixture("tiny-llama-bf16");
    // One layer fewer than the checkpoint holds.
    edit_json(&d.path().join("config.json"), |v| {
        v["num_hidden_layers"] = 1.into()
    });
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.1.") && e.contains("unexpected"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let d = copy_fixture("tiny-llama-bf16");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn unsupported_tensor_dtype_is_named_from_the_header() {
    let d = copy_fixture("tiny-llama-bf16");
    let p = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    // I16 has BF16's size, so only the dtype is wrong; the trailing space keeps the header length.
    let (key, new) = (
        r#""model.norm.weight":{"dtype":"BF16""#,
        r#""model.norm.weight":{"dtype":"I16" "#,
    );
    let at = 8 + header.find(key).expect("fixture header layout");
    bytes[at..at + key.len()].copy_from_slice(new.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("model.norm.weight") && e.contains("I16"),
        "{e}"
    );
}

#[test]
fn malformed_jsonl_line_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("data.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": \"a\"}\n",
    )
    .unwrap();
    let e = wgspin::data::read_prompt_responses(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.jsonl:3:") && e.contains("response"), "{e}");
}

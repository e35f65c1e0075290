//! `export-gguf` against llama.cpp's own converter: the tiny fixture folders converted by
//! `convert_hf_to_gguf.py` (llama-cpp-python 0.3.36, `tests/fixtures/gguf/make_llamacpp_gguf.py`)
//! and by wgspin must hold the same metadata and the same tensors, up to the documented
//! differences below; and `convert` (GGUF → HF) must keep what has a Hugging Face home.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use wgspin::gguf::reader::{GgufFile, MetaValue};

/// Keys wgspin writes that llama.cpp's converter leaves out, and why that is harmless:
/// - `attention.key_length` / `value_length`, `rope.dimension_count`, `vocab_size`: the converter
///   writes them for some architectures only (llama, or an explicit head_dim); llama.cpp derives the
///   same values when they are absent, and wgspin always states them.
/// - `wgspin.rope.llama3.*`: the Llama 3.1 RoPE parameters behind `rope_freqs.weight` (which
///   llama.cpp reads instead), kept so that `convert` restores config.json's `rope_scaling` exactly.
fn documented_extra(key: &str) -> bool {
    key.starts_with("wgspin.rope.llama3.")
        || [
            "attention.key_length",
            "attention.value_length",
            "rope.dimension_count",
            "vocab_size",
        ]
        .iter()
        .any(|k| key.split_once('.').is_some_and(|(_, rest)| rest == *k))
}

fn export(folder: &str, out: &Path) -> GgufFile {
    run_ok(args(&[
        "export-gguf",
        "--model",
        fixture(folder).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f16",
    ]));
    GgufFile::open(out).unwrap()
}

#[test]
fn export_writes_what_llama_cpp_converter_writes() {
    let tmp = tempfile::tempdir().unwrap();
    for (folder, reference) in [
        ("tiny-llama-bf16", "tiny-llama.llamacpp.gguf"),
        ("tiny-qwen2-f32", "tiny-qwen2.llamacpp.gguf"),
    ] {
        let theirs = GgufFile::open(&fixture("gguf").join(reference)).unwrap();
        let ours = export(folder, &tmp.path().join(reference));
        let keys = |g: &GgufFile| g.metadata.keys().cloned().collect::<BTreeSet<_>>();
        let missing: Vec<_> = keys(&theirs).difference(&keys(&ours)).cloned().collect();
        assert!(missing.is_empty(), "{folder}: wgspin lacks {missing:?}");
        let extra: Vec<_> = keys(&ours)
            .difference(&keys(&theirs))
            .filter(|k| !documented_extra(k))
            .cloned()
            .collect();
        assert!(
            extra.is_empty(),
            "{folder}: undocumented extra keys {extra:?}"
        );
        for (key, want) in &theirs.metadata {
            if key == "general.alignment" {
                continue;
            }
            assert_eq!(ours.metadata.get(key), Some(want), "{folder}: {key}");
        }
        let tensors = |g: &GgufFile| {
            g.tensors
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), format!("{:?}", t.ty)))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(tensors(&ours), tensors(&theirs), "{folder}: tensor table");
        for t in &theirs.tensors {
            let mine = ours.tensor(&t.name).unwrap();
            assert!(
                ours.raw(mine) == theirs.raw(t),
                "{folder}: {} differs from llama.cpp's bytes",
                t.name
            );
        }
    }
}

/// The size label and name of an exported checkpoint come from the model, not from the folder
/// called `checkpoint`; a model card's fields reach GGUF.
#[test]
fn export_names_the_model_from_its_card_or_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoint");
    copy_fixture("tiny-llama-bf16", &dir);
    let card = "---\nlicense: apache-2.0\nlanguage:\n- en\nmodel_name: Tiny SPIN\n---\n# Tiny\n";
    std::fs::write(dir.join("README.md"), card).unwrap();
    let out = tmp.path().join("m.gguf");
    run_ok(args(&[
        "export-gguf",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let g = GgufFile::open(&out).unwrap();
    let s = |k: &str| g.get(k).and_then(MetaValue::as_str).map(str::to_string);
    assert_eq!(s("general.name").as_deref(), Some("Tiny SPIN"));
    assert_eq!(s("general.license").as_deref(), Some("apache-2.0"));
    assert_eq!(s("general.size_label").as_deref(), Some("100K"));
    assert_eq!(
        g.get("general.languages"),
        Some(&MetaValue::Array(8, vec![MetaValue::Str("en".into())]))
    );
}

/// GGUF → HF → GGUF keeps the model's identity: `convert` writes the `general.*` fields into a
/// model card and the numbers as the file states them (an f32 epsilon as `1e-06`, not
/// `9.999999974752427e-07`), and `export-gguf` reads them back.
#[test]
fn convert_keeps_identity_and_numbers_for_the_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let source = fixture("gguf").join("tiny-qwen2.llamacpp.gguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run_ok(["convert", "--model", &s(&source), "--out", &s(&hf)]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["rms_norm_eps"], serde_json::json!(1e-6));
    assert_eq!(config["rope_theta"], serde_json::json!(1e6));
    let card = std::fs::read_to_string(hf.join("README.md")).unwrap();
    assert_mentions(&card, &["name: \"Tiny Qwen2 F32\"", "size_label: \"109K\""]);
    let out = tmp.path().join("back.gguf");
    run_ok([
        "export-gguf",
        "--model",
        &s(&hf),
        "--out",
        &s(&out),
        "--dtype",
        "f16",
    ]);
    let (back, orig) = (
        GgufFile::open(&out).unwrap(),
        GgufFile::open(&source).unwrap(),
    );
    for key in orig.metadata.keys().filter(|k| k.starts_with("general.")) {
        assert_eq!(
            back.get(key),
            orig.get(key),
            "{key} after GGUF -> HF -> GGUF"
        );
    }
}

//! GGUF models in and out, checked on the real SmolLM2-135M-Instruct GGUF (Q4_1 + Q8_0, arch
//! `llama`, `smollm` pre-tokenizer) against transformers' outputs in `../shared`, plus round trips
//! through `convert` (GGUF → HF folder) and `export-gguf` (HF folder → GGUF) on the tiny fixtures.
//! The real-model tests run on the CPU backend and need `WGSPIN_SMOLLM2_GGUF` (set by `.ci/run`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use wgspin::ModelBundle;
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};

fn smollm2_dir() -> PathBuf {
    shared_fixture("smollm2-135m-instruct")
}

#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let Some(path) = smollm2_gguf() else { return };
    let t0 = Instant::now();
    let g = wgspin::gguf::GgufModel::load(&path).unwrap();
    let tok = g.chat_tokenizer().unwrap();
    eprintln!(
        "GGUF read + dequantized in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let r = reference(&smollm2_dir());
    assert_reference_ids(&tok, &r.cases, "smollm2 gguf");
    let hf = tokenizers::Tokenizer::from_file(smollm2_dir().join("tokenizer.json")).unwrap();
    for s in [
        "1234567890 and 3.14159, 2024-01-05",
        "tabs\tand    runs   of spaces\n\n\nnew lines  \n ",
        "emoji 😀🚀👍🏽 and accents: café, naïve, Straße, Ångström, Crème brûlée",
        "中文和日本語, Ελληνικά, русский",
        "<|im_start|>user\nHi<|im_end|>\n",
        "don't I'll we've   it's",
    ] {
        for special in [false, true] {
            let want = hf.encode(s, special).unwrap().get_ids().to_vec();
            assert_eq!(
                tok.encode(s, special).unwrap(),
                want,
                "{s:?} (special tokens {special})"
            );
        }
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
    }
    assert_eq!(g.config.vocab_size, 49152);
    assert!(g.config.tie_word_embeddings);
    assert_eq!(g.config.eos_token_ids, vec![2]);
    assert_eq!(
        (g.config.num_heads, g.config.num_kv_heads, g.config.head_dim),
        (9, 3, 64)
    );
}

/// `WGSPIN_SMOLLM2_FULL=1` checks every reference case and greedy prompt (≈9 min on 2 CPU cores at
/// the test profile's opt-level 0); by default the first of each (the CI budget).
fn full() -> bool {
    std::env::var("WGSPIN_SMOLLM2_FULL").is_ok_and(|v| v == "1")
}

#[test]
fn smollm2_gguf_logprobs_and_greedy_match_transformers() {
    let Some(path) = smollm2_gguf() else { return };
    let dev = wgspin::device::cpu_device();
    let t0 = Instant::now();
    let bundle = ModelBundle::load(&path, &dev.device).unwrap();
    eprintln!("loaded on CPU in {:.1}s", t0.elapsed().as_secs_f64());
    let r = reference(&smollm2_dir());
    let n = if full() { r.cases.len() } else { 1 };
    let pairs: Vec<TokenizedPair> = r.cases[..n].iter().map(RefCase::pair).collect();
    let t1 = Instant::now();
    let opts = ScoreOptions {
        batch_size: pairs.len(),
        ..Default::default()
    };
    let got = score_all(&bundle.model, &pairs, 2, opts, |_| {}).unwrap();
    eprintln!("scored {n} case(s) in {:.1}s", t1.elapsed().as_secs_f64());
    for (c, lp) in r.cases.iter().zip(&got) {
        let sum: f64 = lp.iter().map(|&x| x as f64).sum();
        let e = rel(sum, c.logprob);
        eprintln!(
            "logprob {sum:.5} vs transformers {:.5} (rel {e:.1e})",
            c.logprob
        );
        assert!(
            e < 1e-3,
            "logprob {sum} vs {} (rel {e:e}) for {:?}",
            c.logprob,
            c.prompt
        );
    }

    let t2 = Instant::now();
    let n = if full() { r.greedy.len() } else { 1 };
    let prompts: Vec<Vec<u32>> = r.greedy[..n].iter().map(|g| g.prompt_ids.clone()).collect();
    let max_new = r.greedy.iter().map(|g| g.tokens.len()).max().unwrap_or(0);
    // Through the generation engine `wgspin generate` uses (KV cache, continuous batching,
    // sampler at temperature 0).
    let opts = wgspin::generate::GenOptions {
        pad_id: 2,
        ..greedy_opts(n, max_new, vec![2])
    };
    let out = run_generate(&bundle, &prompts, &opts);
    eprintln!(
        "greedy {max_new} tokens x {n} in {:.1}s",
        t2.elapsed().as_secs_f64()
    );
    for (g, o) in r.greedy.iter().zip(&out) {
        assert_eq!(o, &g.tokens, "greedy tokens");
    }
}

/// Last-position logits of `ids` (`[vocab]`).
fn last_logits(model: &wgspin::model::Transformer, ids: &[u32]) -> Vec<f32> {
    let input = wgspin::model::StepInput::right_padded(&[ids.to_vec()], 0);
    let logits = model.forward(&input, None); // [1, s, v]
    let [_, s, v] = logits.dims();
    floats(logits)[(s - 1) * v..s * v].to_vec()
}

#[test]
fn smollm2_convert_loads_back_with_identical_logits() {
    let Some(path) = smollm2_gguf() else { return };
    let dev = wgspin::device::cpu_device();
    let t0 = Instant::now();
    let g = wgspin::gguf::GgufModel::load(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-hf");
    g.write_hf_folder(&out, wgspin::hf::weights::StoredDtype::F32)
        .unwrap();
    drop(g);
    eprintln!("converted in {:.1}s", t0.elapsed().as_secs_f64());
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The GGUF's identity reaches the model card, its epsilon config.json as stated (1e-5 in f32).
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert_mentions(
        &card,
        &[
            "organization: \"HuggingFaceTB\"",
            "finetune: \"8k-lc100k-mix1-ep2\"",
            "license: \"apache-2.0\"",
            "language: [\"en\"]",
            "size_label: \"135M\"",
        ],
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["rms_norm_eps"], serde_json::json!(1e-5));
    let from_gguf = ModelBundle::load(&path, &dev.device).unwrap();
    let from_hf = ModelBundle::load(&out, &dev.device).unwrap();
    assert_eq!(from_hf.config, from_gguf.config);
    // The converted folder's tokenizer files reproduce transformers' ids too.
    let r = reference(&smollm2_dir());
    let c = &r.cases[0];
    let pair = TokenizedPair::new(&from_hf.tokenizer, &c.prompt, &c.response).unwrap();
    assert_eq!(
        (pair.prompt, pair.response),
        (c.prompt_ids.clone(), c.response_ids.clone())
    );
    let ids = &c.prompt_ids[c.prompt_ids.len() - 6..];
    let (a, b) = (
        last_logits(&from_gguf.model, ids),
        last_logits(&from_hf.model, ids),
    );
    assert_eq!(
        a, b,
        "logits of the GGUF and of its converted folder differ"
    );
    eprintln!("convert round trip in {:.1}s", t0.elapsed().as_secs_f64());
}

// ---- dequantization against the `gguf` Python package (tests/fixtures/gguf/dequant.json) ----

#[derive(serde::Deserialize)]
struct DequantCase {
    #[serde(rename = "type")]
    name: String,
    id: u32,
    bytes: String,
    values: Vec<f32>,
    input: Vec<f32>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn dequantization_matches_gguf_python() {
    use wgspin::gguf::dequant::{GgmlType, SUPPORTED_TYPES, dequantize, encode};
    #[derive(serde::Deserialize)]
    struct File {
        cases: Vec<DequantCase>,
    }
    let text = std::fs::read_to_string(fixture("gguf/dequant.json")).unwrap();
    let file: File = serde_json::from_str(&text).unwrap();
    assert_eq!(file.cases.len(), SUPPORTED_TYPES.len());
    for c in &file.cases {
        let ty = GgmlType::from_id(c.id).unwrap();
        assert_eq!(ty.name(), c.name);
        let bytes = hex(&c.bytes);
        let mut got = vec![];
        dequantize(ty, &bytes, &mut got);
        assert_eq!(got.len(), c.values.len(), "{}", c.name);
        for (i, (a, b)) in got.iter().zip(&c.values).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{} value {i}: {a} vs gguf-py {b}",
                c.name
            );
        }
        // Our encoders produce gguf-py's (= ggml's reference) bytes.
        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0) {
            assert_eq!(encode(ty, &c.input).unwrap(), bytes, "{} encoding", c.name);
        }
    }
}

// ---- export-gguf → reader round trips on the tiny fixtures ----

/// The fixtures llama.cpp's architecture cannot hold (Gemma 3 with a layer pattern, a local RoPE
/// or a score scale other than the ones llama.cpp fixes): `export-gguf` must refuse them saying
/// what differs, before writing anything.
fn refused_by_llama_cpp(dir: &std::path::Path, name: &str) -> bool {
    if name != "tiny-gemma3-bf16" {
        return false;
    }
    let out = dir.join("never-written.gguf");
    let e =
        wgspin::gguf::writer::export_hf_folder(dir, &out, wgspin::gguf::writer::ExportDtype::F32)
            .unwrap_err()
            .to_string();
    assert_mentions(
        &e,
        &[
            "llama.cpp's gemma3 cannot represent",
            "layer 2 is full",
            "every 6th",
        ],
    );
    assert!(!out.exists());
    true
}

#[test]
fn export_gguf_round_trips_through_the_reader() {
    use wgspin::gguf::writer::{ExportDtype, export_hf_folder};
    use wgspin::hf::source::TensorSource;
    use wgspin::hf::weights::WeightFiles;
    let tmp = tempfile::tempdir().unwrap();
    for name in TINY_MODELS {
        let dir = fixture(name);
        let cfg = wgspin::hf::config::ModelConfig::from_dir(&dir).unwrap();
        let files = WeightFiles::open_dir(&dir).unwrap();
        let hf_tok =
            wgspin::hf::tokenizer::ChatTokenizer::from_dir(&dir, &cfg.eos_token_ids).unwrap();
        if refused_by_llama_cpp(&dir, name) {
            continue;
        }
        for dtype in [ExportDtype::F32, ExportDtype::F16, ExportDtype::Q8_0] {
            let out = tmp.path().join(format!("{name}-{dtype:?}.gguf"));
            export_hf_folder(&dir, &out, dtype).unwrap();
            let g = wgspin::gguf::GgufModel::load(&out).unwrap();
            // Same model, apart from what GGUF does not record (dtype name, Mistral's window);
            // eps, stored as f32, reads back as the decimal config.json states.
            let mut want = cfg.clone();
            want.torch_dtype = "float32".into();
            // GGUF records no sliding window (every layer full, with the model's RoPE), and
            // llama.cpp's `llama` reads back as the llama family.
            let gguf = cfg.family.gguf.unwrap();
            want.family = wgspin::hf::arch::by_gguf_arch(gguf.name).unwrap();
            if gguf.fixed.is_none() {
                want.attention = vec![wgspin::hf::config::AttentionKind {
                    window: wgspin::hf::config::AttentionWindow::Full,
                    rope: cfg.rope.clone(),
                }];
                want.layer_kinds = vec![0; cfg.num_layers];
            }
            assert_eq!(g.config, want, "{name} {dtype:?}: config");
            for n in files.tensor_names() {
                let a = files.read_tensor(&n).unwrap();
                let b = g.weights.read_tensor(&n).unwrap();
                assert_eq!(a.shape, b.shape, "{name}: {n}");
                let amax = a.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in a.data.iter().zip(&b.data) {
                    let tol = match (dtype, a.shape.len()) {
                        (_, 1) | (ExportDtype::F32, _) => 0.0,
                        (ExportDtype::F16, _) => x.abs() * 1e-3 + 6e-8, // f16 subnormal step
                        (ExportDtype::Q8_0, _) => amax / 127.0, // half a step of the worst block, doubled
                    };
                    assert!((x - y).abs() <= tol, "{name} {dtype:?} {n}: {x} vs {y}");
                }
            }
            let tok = g.chat_tokenizer().unwrap();
            let r = reference(&dir);
            assert_reference_ids(&tok, &r.cases, &format!("{name} {dtype:?}"));
            for s in ["12345 héllo   wörld 😀\n\n", "plain text"] {
                for special in [false, true] {
                    assert_eq!(
                        tok.encode(s, special).unwrap(),
                        hf_tok.encode(s, special).unwrap(),
                        "{name}: {s:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn exported_gguf_scores_like_transformers() {
    // f32 export of each tiny fixture, scored on the CPU backend against transformers' log-probs
    // (covers the llama3-RoPE rope_freqs path, q/k permutation and Qwen2 biases end to end).
    let dev = wgspin::device::cpu_device();
    let tmp = tempfile::tempdir().unwrap();
    for name in TINY_MODELS {
        let dir = fixture(name);
        if refused_by_llama_cpp(&dir, name) {
            continue;
        }
        let out = tmp.path().join(format!("{name}.gguf"));
        wgspin::gguf::writer::export_hf_folder(&dir, &out, wgspin::gguf::writer::ExportDtype::F32)
            .unwrap();
        let bundle = ModelBundle::load(&out, &dev.device).unwrap();
        let r = reference(&dir);
        let pairs: Vec<TokenizedPair> = r
            .cases
            .iter()
            .map(|c| TokenizedPair::new(&bundle.tokenizer, &c.prompt, &c.response).unwrap())
            .collect();
        let got = score_all(&bundle.model, &pairs, 0, ScoreOptions::default(), |_| {}).unwrap();
        for (c, lp) in r.cases.iter().zip(&got) {
            let sum: f64 = lp.iter().map(|&x| x as f64).sum();
            assert!(rel(sum, c.logprob) < 1e-3, "{name}: {sum} vs {}", c.logprob);
        }
    }
}

// ---- robustness: malformed files give errors, never panics ----

/// A small valid GGUF with every metadata value type and a few tensor types.
fn small_gguf() -> Vec<u8> {
    use wgspin::gguf::dequant::GgmlType;
    use wgspin::gguf::reader::MetaValue as M;
    let mut w = wgspin::gguf::writer::GgufWriter::new();
    w.add("general.architecture", M::Str("llama".into()));
    w.add("llama.embedding_length", M::U32(64));
    w.add("llama.attention.head_count", M::U32(2));
    w.add("llama.block_count", M::U64(1));
    w.add("llama.rope.freq_base", M::F32(10000.0));
    w.add("x.f64", M::F64(1.5));
    w.add("x.i8", M::I8(-3));
    w.add("x.u8", M::U8(3));
    w.add("x.i16", M::I16(-3));
    w.add("x.u16", M::U16(3));
    w.add("x.i64", M::I64(-3));
    w.add("x.bool", M::Bool(true));
    w.add(
        "x.nested",
        M::Array(9, vec![M::Array(4, vec![M::U32(1), M::U32(2)])]),
    );
    w.add("tokenizer.ggml.model", M::Str("gpt2".into()));
    w.add("tokenizer.ggml.pre", M::Str("smollm".into()));
    let toks = ["a", "b", "ab", "<s>"];
    w.add(
        "tokenizer.ggml.tokens",
        M::Array(8, toks.iter().map(|t| M::Str(t.to_string())).collect()),
    );
    w.add(
        "tokenizer.ggml.token_type",
        M::Array(5, vec![M::I32(1), M::I32(1), M::I32(1), M::I32(3)]),
    );
    w.add(
        "tokenizer.ggml.merges",
        M::Array(8, vec![M::Str("a b".into())]),
    );
    w.add("tokenizer.ggml.bos_token_id", M::U32(3));
    let data: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
    w.add_tensor("token_embd.weight", &[2, 64], GgmlType::Q8_0, &data)
        .unwrap();
    w.add_tensor("output_norm.weight", &[64], GgmlType::F32, &data[..64])
        .unwrap();
    w.add_tensor("blk.0.attn_q.weight", &[2, 32], GgmlType::F16, &data[..64])
        .unwrap();
    w.to_bytes()
}

/// Parses `bytes` and runs everything downstream that reads metadata or tensors (the fuzz
/// target's function).
fn exercise(bytes: Vec<u8>) -> bool {
    wgspin::fuzzing::gguf(&bytes)
}

#[test]
fn malformed_gguf_headers_are_errors_not_panics() {
    let valid = small_gguf();
    assert!(exercise(valid.clone()), "the unmutated file parses");
    // Every truncation.
    for len in 0..valid.len() {
        let ok = exercise(valid[..len].to_vec());
        // Only cuts inside the trailing tensor data padding may still parse.
        assert!(
            !ok || len >= valid.len() - 32,
            "truncated to {len} bytes but parsed"
        );
    }
    // Random byte flips (seeded).
    let mut rng = Rng(0x6767_7566);
    for _ in 0..3000 {
        let mut b = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        exercise(b);
    }
    // Huge counts and lengths at every 8-byte-aligned position of the header.
    let header_end = 4096.min(valid.len());
    for pos in 4..header_end.saturating_sub(8) {
        for v in [u64::MAX, u64::MAX / 2, 1 << 40, 0xFFFF_FFFF] {
            let mut b = valid.clone();
            b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
            exercise(b);
        }
    }
    // Clear messages for the common cases.
    let e = wgspin::gguf::reader::GgufFile::parse(
        std::path::Path::new("x.gguf"),
        valid[..100].to_vec(),
    )
    .err()
    .unwrap()
    .to_string();
    assert_mentions(&e, &["x.gguf", "truncated"]);
    let mut bad_type = valid.clone();
    // The first tensor's type field: find "token_embd.weight" and skip name, n_dims, 2 dims.
    let at = bad_type
        .windows(17)
        .position(|w| w == b"token_embd.weight")
        .unwrap()
        + 17
        + 4
        + 16;
    bad_type[at..at + 4].copy_from_slice(&23u32.to_le_bytes());
    let e = wgspin::gguf::reader::GgufFile::parse(std::path::Path::new("x.gguf"), bad_type)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&e, &["token_embd.weight", "IQ4_XS"]);
}

#[test]
fn unsupported_architecture_and_pre_tokenizer_are_named() {
    let mut bytes = small_gguf();
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    bytes[at..at + 5].copy_from_slice(b"gpt2x");
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = wgspin::gguf::GgufModel::load(&p).err().unwrap().to_string();
    assert_mentions(&e, &["m.gguf", "gpt2x", "llama, qwen2"]);

    let mut bytes = small_gguf();
    let at = bytes.windows(6).position(|w| w == b"smollm").unwrap();
    bytes[at..at + 6].copy_from_slice(b"falcon");
    std::fs::write(&p, &bytes).unwrap();
    let e = wgspin::gguf::GgufModel::load(&p).err().unwrap().to_string();
    assert_mentions(&e, &["falcon", "llama-bpe", "smollm"]);
}

/// What `generate --server` reads of a GGUF `--model` (metadata only, no tensor dequantized) is
/// the config and tokenizer a full load builds.
#[test]
fn smollm2_gguf_text_side_matches_the_full_load() {
    let Some(path) = smollm2_gguf() else { return };
    let (config, tok) = wgspin::load::bundle::read_text_side(&path).unwrap();
    let full = wgspin::gguf::GgufModel::load(&path).unwrap();
    assert_eq!(format!("{config:?}"), format!("{:?}", full.config));
    let full_tok = full.chat_tokenizer().unwrap();
    let prompt = "Name three colours, then say why the sky is blue.";
    assert_eq!(
        tok.prompt_ids(prompt).unwrap(),
        full_tok.prompt_ids(prompt).unwrap()
    );
    assert!(
        wgspin::gguf::GgufModel::load_metadata(&path)
            .unwrap()
            .weights
            .tensors
            .is_empty()
    );
}

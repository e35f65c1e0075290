//! Tokenizer from GGUF metadata (`tokenizer.ggml.*`), built as the `tokenizer.json` and
//! `tokenizer_config.json` that Hugging Face would write for the same vocabulary, so the same JSON
//! serves loading (through the `tokenizers` crate) and `wgspin convert`.
//!
//! - `gpt2`: byte-level BPE (tokens, merges); the pre-tokenizer is chosen by `tokenizer.ggml.pre`.
//! - `llama`: SentencePiece BPE, expressed as transformers' (legacy) LlamaTokenizerFast does: a
//!   `▁`-prefix/space-replacing normalizer, BPE with byte fallback (`<0xNN>` tokens) and merges
//!   recovered from the piece scores (a higher-scoring piece merges first).
//!
//! Control, user-defined and unknown tokens become added special tokens; bos/eos/pad/unk come from
//! `tokenizer.ggml.*_token_id`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::reader::{GgufFile, MetaValue};
use crate::error::{Error, Result};

/// `tokenizer.ggml.pre` values wgspin understands, for the error message.
pub const SUPPORTED_PRE: &[&str] = &["default", "llama-bpe", "llama3", "smollm", "qwen2", "gpt2"];

/// Llama 3's split regex (`llama-bpe`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama 3's with single digits.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_BYTE: i32 = 6;

/// What a GGUF's tokenizer becomes on the Hugging Face side.
pub struct TokenizerParts {
    /// The `tokenizer.json` document.
    pub tokenizer_json: Value,
    /// The `tokenizer_config.json` document (special tokens, `chat_template`, `add_bos_token`).
    pub tokenizer_config: Value,
    pub chat_template: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// (normalizer, pre_tokenizer, ignore_merges) of a byte-level BPE by its `tokenizer.ggml.pre`.
pub fn bpe_pre_tokenizer(pre: &str) -> Option<(Value, Value, bool)> {
    Some(match pre {
        "default" | "llama-bpe" | "llama3" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "gpt2" => (Value::Null, byte_level(true), false),
        _ => return None,
    })
}

fn added_token(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// Adds `bos` (and `eos`) around single sequences, as `add_bos_token` / `add_eos_token` ask.
fn post_processor(bos: Option<&str>, eos: Option<&str>, bos_id: u32, eos_id: u32) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut tokens = serde_json::Map::new();
    if let Some(b) = bos {
        single.push(special(b));
        tokens.insert(b.into(), json!({"id": b, "ids": [bos_id], "tokens": [b]}));
    }
    single.push(seq("A"));
    if let Some(e) = eos {
        single.push(special(e));
        tokens.insert(e.into(), json!({"id": e, "ids": [eos_id], "tokens": [e]}));
    }
    pair.extend(single.iter().cloned());
    if let Some(b) = bos {
        pair.push(special(b));
    }
    pair.push(seq("B"));
    if let Some(e) = eos {
        pair.push(special(e));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens})
}

/// Merges of a SentencePiece BPE vocabulary recovered from piece scores, as transformers'
/// `SentencePieceExtractor` does: every split of a piece into two vocabulary pieces, ordered by the
/// merged piece's score (highest first; ties keep vocabulary order).
fn spm_merges(
    tokens: &[&str],
    scores: &[f32],
    types: &[i32],
    vocab: &HashMap<&str, usize>,
) -> Vec<String> {
    let mut merges: Vec<(f32, usize, usize, String)> = vec![];
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(TOKEN_NORMAL) != TOKEN_NORMAL {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        let mut local = vec![];
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                local.push((score, il, ir, format!("{l} {r}")));
            }
        }
        local.sort_by_key(|m| (m.1, m.2));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.into_iter().map(|m| m.3).collect()
}

/// The `tokenizer.ggml.*_token_id` special tokens, each checked to be inside the vocabulary.
#[derive(Clone, Copy)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
}

/// The tokenizer.json pieces that depend on `tokenizer.ggml.model`.
struct ModelParts {
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
    /// The `model` object: BPE vocabulary, merges and options.
    bpe: Value,
}

fn tokenizer_error(g: &GgufFile, message: String) -> Error {
    Error::Tokenizer {
        path: g.path.clone(),
        message,
    }
}

/// `tokenizer.ggml.token_type`, one per token (all normal when absent).
fn token_types(g: &GgufFile, n: usize) -> Result<Vec<i32>> {
    let types: Vec<i32> = g
        .optional("tokenizer.ggml.token_type", |v| {
            v.as_array()?
                .iter()
                .map(|t| match t {
                    MetaValue::I32(x) => Some(*x),
                    other => other.as_u64().and_then(|x| i32::try_from(x).ok()),
                })
                .collect::<Option<Vec<_>>>()
        })?
        .unwrap_or_else(|| vec![TOKEN_NORMAL; n]);
    if types.len() != n {
        return Err(tokenizer_error(
            g,
            format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            ),
        ));
    }
    Ok(types)
}

fn special_ids(g: &GgufFile, n: usize) -> Result<SpecialIds> {
    let id = |key: &str| -> Result<Option<u32>> {
        let v = g.optional(key, MetaValue::as_u64)?;
        match v {
            Some(i) if (i as usize) < n => Ok(Some(i as u32)),
            Some(i) => Err(tokenizer_error(
                g,
                format!("{key} = {i} is outside the {n}-token vocabulary"),
            )),
            None => Ok(None),
        }
    };
    Ok(SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
    })
}

/// The vocabulary as a lookup and as tokenizer.json's `vocab` object.
fn vocab_maps<'a>(tokens: &[&'a str]) -> (HashMap<&'a str, usize>, serde_json::Map<String, Value>) {
    let n = tokens.len();
    let mut vocab_map: HashMap<&str, usize> = HashMap::with_capacity(n);
    let mut vocab = serde_json::Map::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        // Duplicated pieces exist in a few vocabularies; the first id wins, as in llama.cpp.
        if !vocab_map.contains_key(t) {
            vocab_map.insert(*t, i);
            vocab.insert((*t).to_string(), json!(i));
        }
    }
    (vocab_map, vocab)
}

/// A byte-level BPE (`gpt2`): pre-tokenizer by `tokenizer.ggml.pre`, merges as stored.
fn gpt2_model(g: &GgufFile, vocab: serde_json::Map<String, Value>) -> Result<ModelParts> {
    let pre = g
        .optional("tokenizer.ggml.pre", |v| v.as_str().map(str::to_string))?
        .unwrap_or_else(|| "default".into());
    let (normalizer, pre_tokenizer, ignore_merges) = bpe_pre_tokenizer(&pre).ok_or_else(|| {
        tokenizer_error(
            g,
            format!(
                "tokenizer.ggml.pre {pre:?} is not supported (supported: {})",
                SUPPORTED_PRE.join(", ")
            ),
        )
    })?;
    let merges = g
        .strings("tokenizer.ggml.merges")?
        .ok_or_else(|| tokenizer_error(g, "a gpt2 tokenizer needs tokenizer.ggml.merges".into()))?;
    let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
        "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    Ok(ModelParts {
        normalizer,
        pre_tokenizer,
        decoder,
        bpe,
    })
}

/// A SentencePiece BPE (`llama`): merges recovered from the scores, byte fallback, and the `▁`
/// space handling of `tokenizer.ggml.add_space_prefix`.
fn llama_model(
    g: &GgufFile,
    tokens: &[&str],
    types: &[i32],
    unk_token: Option<&str>,
) -> Result<ModelParts> {
    let n = tokens.len();
    let scores: Vec<f32> = g
        .optional("tokenizer.ggml.scores", |v| {
            v.as_array()?
                .iter()
                .map(|s| s.as_f64().map(|s| s as f32))
                .collect::<Option<Vec<_>>>()
        })?
        .unwrap_or_default();
    if scores.len() != n {
        return Err(tokenizer_error(
            g,
            format!(
                "a llama (SentencePiece) tokenizer needs one score per token: {} scores for {n} tokens",
                scores.len()
            ),
        ));
    }
    let (vocab_map, vocab) = vocab_maps(tokens);
    let merges = spm_merges(tokens, &scores, types, &vocab_map);
    let add_space = g
        .optional("tokenizer.ggml.add_space_prefix", MetaValue::as_bool)?
        .unwrap_or(true);
    let mut norm = vec![];
    if add_space {
        norm.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut dec = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space {
        dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let bpe = json!({"type": "BPE", "dropout": null, "unk_token": unk_token,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
    Ok(ModelParts {
        normalizer: json!({"type": "Sequence", "normalizers": norm}),
        pre_tokenizer: Value::Null,
        decoder: json!({"type": "Sequence", "decoders": dec}),
        bpe,
    })
}

/// The `tokenizer_config.json` document: special tokens, BOS/EOS flags, context length and chat
/// template.
fn tokenizer_config(
    g: &GgufFile,
    special: [(&str, Option<&str>); 4],
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<&str>,
) -> Value {
    let context = g
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .and_then(|a| g.get(&format!("{a}.context_length")))
        .and_then(MetaValue::as_u64);
    let mut cfg = serde_json::Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    for (key, value) in special {
        if let Some(v) = value {
            cfg.insert(key.into(), json!(v));
        }
    }
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    if let Some(c) = context {
        cfg.insert("model_max_length".into(), json!(c));
    }
    if let Some(t) = chat_template {
        cfg.insert("chat_template".into(), json!(t));
    }
    Value::Object(cfg)
}

/// Builds the tokenizer of a GGUF file.
pub fn from_gguf(g: &GgufFile) -> Result<TokenizerParts> {
    let model = g.require("tokenizer.ggml.model", |v| v.as_str().map(str::to_string))?;
    let tokens = g
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| tokenizer_error(g, "missing tokenizer.ggml.tokens".into()))?;
    let types = token_types(g, tokens.len())?;
    let ids = special_ids(g, tokens.len())?;
    let tok = |i: Option<u32>| i.map(|i| tokens[i as usize]);
    let add_bos = g
        .optional("tokenizer.ggml.add_bos_token", MetaValue::as_bool)?
        .unwrap_or(model == "llama");
    let add_eos = g
        .optional("tokenizer.ggml.add_eos_token", MetaValue::as_bool)?
        .unwrap_or(false);
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(**t, TOKEN_CONTROL | TOKEN_USER_DEFINED | TOKEN_UNKNOWN))
        .map(|(i, _)| added_token(i, tokens[i]))
        .collect();
    let parts = match model.as_str() {
        "gpt2" => gpt2_model(g, vocab_maps(&tokens).1)?,
        "llama" => llama_model(g, &tokens, &types, tok(ids.unk))?,
        other => {
            return Err(tokenizer_error(
                g,
                format!("tokenizer.ggml.model {other:?} is not supported (supported: gpt2, llama)"),
            ));
        }
    };
    let post = post_processor(
        tok(ids.bos).filter(|_| add_bos),
        tok(ids.eos).filter(|_| add_eos),
        ids.bos.unwrap_or(0),
        ids.eos.unwrap_or(0),
    );
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": parts.normalizer, "pre_tokenizer": parts.pre_tokenizer, "post_processor": post,
        "decoder": parts.decoder, "model": parts.bpe,
    });
    let chat_template = g.optional("tokenizer.chat_template", |v| {
        v.as_str().map(str::to_string)
    })?;
    let special = [
        ("bos_token", tok(ids.bos)),
        ("eos_token", tok(ids.eos)),
        ("pad_token", tok(ids.pad)),
        ("unk_token", tok(ids.unk)),
    ];
    let tokenizer_config = tokenizer_config(g, special, add_bos, add_eos, chat_template.as_deref());
    Ok(TokenizerParts {
        tokenizer_json,
        tokenizer_config,
        chat_template,
        bos_token_id: ids.bos,
        eos_token_id: ids.eos,
        pad_token_id: ids.pad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use std::path::Path;

    /// A SentencePiece (`llama`) vocabulary with byte fallback tokens and scores.
    fn spm_gguf() -> GgufFile {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TOKEN_BYTE);
        }
        let pieces = [
            "▁", "h", "e", "l", "o", "▁h", "ll", "he", "llo", "▁he", "▁hello", "w",
        ];
        let scores_of = [
            -1.0, -2.0, -2.0, -2.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -2.0,
        ];
        let mut scores = vec![0f32; tokens.len()];
        for (p, s) in pieces.iter().zip(scores_of) {
            tokens.push(p.to_string());
            types.push(TOKEN_NORMAL);
            scores.push(s);
        }
        use MetaValue as M;
        let mut w = GgufWriter::new();
        w.add("tokenizer.ggml.model", M::Str("llama".into()));
        w.add(
            "tokenizer.ggml.tokens",
            M::Array(8, tokens.into_iter().map(M::Str).collect()),
        );
        w.add(
            "tokenizer.ggml.token_type",
            M::Array(5, types.into_iter().map(M::I32).collect()),
        );
        w.add(
            "tokenizer.ggml.scores",
            M::Array(6, scores.into_iter().map(M::F32).collect()),
        );
        w.add("tokenizer.ggml.bos_token_id", M::U32(1));
        w.add("tokenizer.ggml.eos_token_id", M::U32(2));
        w.add("tokenizer.ggml.unknown_token_id", M::U32(0));
        GgufFile::parse(Path::new("spm.gguf"), w.to_bytes()).unwrap()
    }

    #[test]
    fn sentencepiece_vocab_with_byte_fallback() {
        let g = spm_gguf();
        let parts = from_gguf(&g).unwrap();
        let tok: tokenizers::Tokenizer = parts.tokenizer_json.to_string().parse().unwrap();
        let id = |t: &str| tok.token_to_id(t).unwrap();
        // "▁hello" is one piece; "w" known; "!" falls back to its byte; bos added by default.
        let enc = tok.encode("hello w!", true).unwrap();
        assert_eq!(
            enc.get_ids(),
            &[1, id("▁hello"), id("▁"), id("w"), id("<0x21>")]
        );
        assert_eq!(tok.decode(&enc.get_ids()[1..], false).unwrap(), "hello w!");
        assert_eq!(parts.tokenizer_config["bos_token"], "<s>");
        assert_eq!(parts.tokenizer_config["unk_token"], "<unk>");
    }
}

//! The `tokenizer.*` metadata `export-gguf` writes from a folder's byte-level BPE `tokenizer.json`:
//! tokens with llama.cpp token types (padded up to the embedding rows), merges, the
//! `tokenizer.ggml.pre` its pre-tokenizer matches, the special token ids, the `add_*_token` flags
//! and the chat template.

use std::path::Path;

use serde_json::Value;

use super::add_tokens::AddTokens;
use super::reader::MetaValue;
use super::tokenizer::{
    LLAMA3_REGEX, QWEN2_REGEX, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED,
};
use crate::error::{Error, Result};
use crate::hf::config::ModelConfig;
use crate::hf::tokenizer::ChatTokenizer;

/// llama.cpp's `LLAMA_TOKEN_TYPE_UNUSED`, for padding the vocabulary up to the embedding rows.
const TOKEN_UNUSED: i32 = 5;

/// `tokenizer.ggml.pre` matching a tokenizer.json pre-tokenizer, `None` when llama.cpp has none.
fn detect_pre(pre: &Value) -> Option<&'static str> {
    let items: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        Some(_) => vec![pre],
        None => return None,
    };
    let kinds: Vec<&str> = items
        .iter()
        .filter_map(|p| p.get("type").and_then(Value::as_str))
        .collect();
    let regex = items
        .iter()
        .find_map(|p| p.get("pattern")?.get("Regex")?.as_str());
    match (kinds.as_slice(), regex) {
        (["Digits", "ByteLevel"], None)
            if items[0].get("individual_digits") == Some(&Value::Bool(true)) =>
        {
            Some("smollm")
        }
        (["Split", "ByteLevel"], Some(r)) if r == LLAMA3_REGEX => Some("llama-bpe"),
        (["Split", "ByteLevel"], Some(r)) if r == QWEN2_REGEX => Some("qwen2"),
        (["ByteLevel"], None) => Some("gpt2"),
        _ => None,
    }
}

fn merge_string(m: &Value) -> Option<String> {
    match m {
        Value::String(s) => Some(s.clone()),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(a), Value::String(b)] => Some(format!("{a} {b}")),
            _ => None,
        },
        _ => None,
    }
}

/// Token strings and llama.cpp token types by id: the BPE `vocab` (normal), then `added_tokens`
/// (control when special, else user-defined), then unused `[PAD{i}]` tokens up to `vocab_size`.
fn token_list(
    tj: &Value,
    vocab: &serde_json::Map<String, Value>,
    vocab_size: usize,
    err: &impl Fn(String) -> Error,
) -> Result<(Vec<String>, Vec<i32>)> {
    let mut tokens: Vec<Option<(String, i32)>> = vec![];
    let mut set = |id: u64, s: &str, ty: i32| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| {
                err(format!(
                    "token id {id} is outside the model's vocab_size {vocab_size}"
                ))
            })?;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((s.to_string(), ty));
        Ok(())
    };
    for (s, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("vocab id of {s:?} is not an integer")))?;
        set(id, s, TOKEN_NORMAL)?;
    }
    for a in tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(s)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            return Err(err(format!("malformed added token {a}")));
        };
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        set(
            id,
            s,
            if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            },
        )?;
    }
    // Embedding rows beyond the tokenizer become unused padding tokens, as convert_hf_to_gguf.py does.
    tokens.resize(vocab_size, None);
    Ok(tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED)))
        .unzip())
}

/// The chat template: the folder's `chat_template.jinja` when it has one, else the one
/// `tokenizer_config.json` selects.
fn chat_template(dir: &Path, tcfg: &Value) -> Result<Option<String>> {
    if dir.join("chat_template.jinja").exists() {
        Ok(Some(
            std::fs::read_to_string(dir.join("chat_template.jinja"))
                .map_err(|e| Error::io(dir.join("chat_template.jinja"), e))?,
        ))
    } else {
        match tcfg.get("chat_template") {
            Some(v) => crate::hf::chat_template::select_template(v),
            None => Ok(None),
        }
    }
}

/// The special token ids and the `add_{bos,eos,sep}_token` flags.
fn add_special_tokens(w: &mut Entries, chat: &ChatTokenizer, unk: Option<u32>, flags: AddTokens) {
    w.add(
        "tokenizer.ggml.eos_token_id",
        MetaValue::U32(chat.eos_token_id),
    );
    if let Some(b) = chat.bos_token_id {
        w.add("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(p) = chat.pad_token_id {
        w.add("tokenizer.ggml.padding_token_id", MetaValue::U32(p));
    }
    if let Some(u) = unk {
        w.add("tokenizer.ggml.unknown_token_id", MetaValue::U32(u));
    }
    // A BOS flag without a BOS token would make llama.cpp prepend token 0.
    let flags = [
        ("bos", flags.bos.map(|b| b && chat.bos_token_id.is_some())),
        ("eos", flags.eos),
        ("sep", flags.sep),
    ];
    for (kind, flag) in flags {
        if let Some(b) = flag {
            w.add(
                &format!("tokenizer.ggml.add_{kind}_token"),
                MetaValue::Bool(b),
            );
        }
    }
}

/// The `tokenizer.*` metadata of a folder's byte-level BPE `tokenizer.json`, in writing order.
pub(super) fn tokenizer_metadata(
    dir: &Path,
    cfg: &ModelConfig,
) -> Result<Vec<(String, MetaValue)>> {
    let mut entries = Entries::default();
    let w = &mut entries;
    let tok_path = dir.join("tokenizer.json");
    let tj = crate::fsutil::read_json(&tok_path)?;
    let err = |message: String| Error::Tokenizer {
        path: tok_path.clone(),
        message,
    };
    let model = tj.get("model").ok_or_else(|| err("no `model`".into()))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(err(
            "export-gguf supports byte-level BPE tokenizers only".into()
        ));
    }
    let pre = detect_pre(tj.get("pre_tokenizer").unwrap_or(&Value::Null)).ok_or_else(|| {
        err("its pre-tokenizer matches none of llama.cpp's (smollm, llama-bpe, qwen2, gpt2)".into())
    })?;
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| err("no BPE vocab".into()))?;
    let (names, types) = token_list(&tj, vocab, cfg.vocab_size, &err)?;
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| err("no BPE merges".into()))?
        .iter()
        .map(|m| merge_string(m).ok_or_else(|| err(format!("malformed merge {m}"))))
        .collect::<Result<Vec<_>>>()?;
    let chat = ChatTokenizer::from_dir(dir, &cfg.eos_token_ids)?;
    let cfg_path = dir.join("tokenizer_config.json");
    let tcfg = if cfg_path.exists() {
        crate::fsutil::read_json(&cfg_path)?
    } else {
        Value::Null
    };
    let unk = tcfg
        .get("unk_token")
        .and_then(crate::hf::tokenizer::token_string)
        .and_then(|s| names.iter().position(|n| *n == s))
        .map(|i| i as u32);
    let flags = super::add_tokens::add_tokens(&tj, &tcfg);
    let template = chat_template(dir, &tcfg)?;
    w.add("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
    w.add("tokenizer.ggml.pre", MetaValue::Str(pre.into()));
    w.add("tokenizer.ggml.tokens", strings(names));
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::Array(5, types.into_iter().map(MetaValue::I32).collect()),
    );
    w.add("tokenizer.ggml.merges", strings(merges));
    add_special_tokens(w, &chat, unk, flags);
    if let Some(t) = template {
        w.add("tokenizer.chat_template", MetaValue::Str(t));
    }
    Ok(entries.0)
}

/// Metadata entries in writing order (what the GGUF writer appends).
#[derive(Default)]
struct Entries(Vec<(String, MetaValue)>);

impl Entries {
    fn add(&mut self, key: &str, value: MetaValue) {
        self.0.push((key.to_string(), value));
    }
}

fn strings(items: impl IntoIterator<Item = String>) -> MetaValue {
    MetaValue::Array(8, items.into_iter().map(MetaValue::Str).collect())
}

//! A Hugging Face model card (README.md): its front matter read and written, and the keys it shares
//! with GGUF's `general.*` metadata (`gguf/card.rs` maps them), with the rules llama.cpp's
//! `convert_hf_to_gguf.py` follows so that a GGUF from `export-gguf` is named and labelled as one
//! from llama.cpp's converter:
//!
//! - `general.name`: the card's `name`, else `model_name`, else config.json's `_name_or_path` when it is
//!   a hub id (at most one `/`), else the folder's name; ids are title-cased as llama.cpp does
//!   (`tiny-llama-bf16` → `Tiny Llama Bf16`).
//! - `general.size_label`: the card's, else the parameter count rounded (`135M`, `1.5B`).
//! - The other card keys below travel as they are; `convert` (GGUF → HF) writes them back into a card.
//!
//! llama.cpp also guesses organization / basename / finetune / version / size from the parts of a
//! hub id or folder name, and writes `general.base_model.*`, `general.dataset.*` and the card's
//! `pipeline_tag` among the tags; wgspin does not (those come only from the card keys below).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Model card keys with a GGUF home, as (GGUF key, card keys in the order llama.cpp reads them;
/// the first is what wgspin writes). Lists are `general.languages` / `general.tags`.
pub(crate) const CARD_KEYS: &[(&str, &[&str])] = &[
    ("general.name", &["name", "model_name"]),
    (
        "general.author",
        &["author", "model_author", "model_creator"],
    ),
    ("general.version", &["version", "model_version"]),
    (
        "general.organization",
        &["organization", "model_organization"],
    ),
    ("general.finetune", &["finetune", "model_finetune"]),
    ("general.basename", &["basename", "model_basename"]),
    ("general.description", &["description", "model_description"]),
    ("general.size_label", &["size_label", "model_size_label"]),
    ("general.license", &["license"]),
    ("general.license.name", &["license_name"]),
    ("general.license.link", &["license_link"]),
    ("general.tags", &["tags"]),
    ("general.languages", &["language", "languages"]),
];

/// The file a model card lives in.
pub const CARD_FILE: &str = "README.md";

/// Largest README.md read for its front matter; cards are a few KB.
const MAX_CARD_BYTES: u64 = 1 << 20;

/// A front-matter value: a string or a list of strings (other YAML is skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum CardValue {
    Str(String),
    List(Vec<String>),
}

/// Card fields by card key, in the order [`CARD_KEYS`] lists them.
pub type Card = Vec<(String, CardValue)>;

/// llama.cpp's `Metadata.id_to_title`: dashes to spaces, and each all-lowercase word title-cased
/// unless it is a version (`v1.2`) or starts with a digit.
pub fn id_to_title(id: &str) -> String {
    id.replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_alphabetic) && !w.chars().any(char::is_uppercase);
            let version = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.starts_with('v')
                    && w.len() > 1
                    && w[1..]
                        .split('.')
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())));
            if lower && !version {
                python_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.title()`: a letter is upper-cased after a non-letter, lower-cased after a letter.
fn python_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_letter = false;
    for c in w.chars() {
        if prev_letter {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_letter = c.is_alphabetic();
    }
    out
}

/// llama.cpp's size label: the parameter count in K/M/B/T with at least two significant digits
/// (`100K`, `135M`, `1.5B`).
pub fn size_label(params: u64) -> String {
    let p = params as f64;
    let (scaled, suffix) = if p > 1e12 {
        (p * 1e-12, "T")
    } else if p > 1e9 {
        (p * 1e-9, "B")
    } else if p > 1e6 {
        (p * 1e-6, "M")
    } else {
        (p * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64)
        .trim_start_matches('0')
        .len();
    let decimals = 2usize.saturating_sub(int_digits);
    format!("{scaled:.decimals$}{suffix}")
}

/// The front matter of `dir/README.md` (empty when there is none): top-level `key: value` and
/// `key:` + `- item` lists; quoted strings unquoted; anything else is skipped.
pub fn read_front_matter(dir: &Path) -> Result<BTreeMap<String, CardValue>> {
    let path = dir.join(CARD_FILE);
    let mut fields = BTreeMap::new();
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(fields);
    };
    if !meta.is_file() || meta.len() > MAX_CARD_BYTES {
        return Ok(fields);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut lines = text.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return Ok(fields);
    }
    let mut open_list: Option<String> = None;
    for line in lines {
        if line.trim_end() == "---" {
            break;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ")
            && line.starts_with([' ', '-'])
            && let Some(key) = &open_list
        {
            if let Some(CardValue::List(items)) = fields.get_mut(key) {
                items.push(unquote(item.trim()));
            }
            continue;
        }
        open_list = None;
        if line.starts_with([' ', '\t', '#']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim().to_string(), value.trim());
        if value.is_empty() {
            fields.insert(key.clone(), CardValue::List(vec![]));
            open_list = Some(key);
        } else if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            let items = inner
                .split(',')
                .map(|s| unquote(s.trim()))
                .filter(|s| !s.is_empty());
            fields.insert(key, CardValue::List(items.collect()));
        } else if !value.starts_with(['|', '>']) {
            // Block scalars (`description: |`) span lines this reader does not follow: skipped.
            let value = match value.starts_with(['"', '\'']) {
                true => value,
                false => value.split(" #").next().unwrap_or(value).trim_end(),
            };
            fields.insert(key, CardValue::Str(unquote(value)));
        }
    }
    Ok(fields)
}

fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        serde_json::from_str(s).unwrap_or_else(|_| s[1..s.len() - 1].to_string())
    } else if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else {
        s.to_string()
    }
}

/// The card fields of a folder with a GGUF home: its README.md's, with the name resolved by
/// the rules at the top of this file.
pub fn folder_card(dir: &Path, config_json: &Value) -> Result<Card> {
    let front = read_front_matter(dir)?;
    let mut card = Card::new();
    for (gguf_key, card_keys) in CARD_KEYS {
        let mut value = card_keys.iter().find_map(|k| front.get(*k)).cloned();
        // `language: en` is a one-item list to llama.cpp (GGUF's languages and tags are arrays).
        if let (true, Some(CardValue::Str(s))) = (is_list(gguf_key), &value) {
            value = Some(CardValue::List(vec![s.clone()]));
        }
        let value = match (*gguf_key, value) {
            ("general.name", Some(CardValue::Str(s))) => Some(CardValue::Str(s)),
            ("general.name", _) => Some(CardValue::Str(fallback_name(dir, config_json))),
            (_, v) => v,
        };
        if let Some(v) = value {
            card.push((card_keys[0].to_string(), v));
        }
    }
    Ok(card)
}

fn is_list(gguf_key: &str) -> bool {
    matches!(gguf_key, "general.tags" | "general.languages")
}

/// config.json's `_name_or_path` when it is a hub id, else the folder's name, title-cased.
fn fallback_name(dir: &Path, config_json: &Value) -> String {
    if let Some(id) = config_json.get("_name_or_path").and_then(Value::as_str)
        && !id.is_empty()
        && id.matches('/').count() <= 1
    {
        let name = id.rsplit('/').next().unwrap_or(id);
        return if id.contains(' ') {
            id.to_string()
        } else {
            id_to_title(name)
        };
    }
    // `dir` may be relative (`.`): the name of the folder it resolves to.
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    resolved
        .file_name()
        .map(|n| id_to_title(&n.to_string_lossy()))
        .unwrap_or_else(|| "model".into())
}

/// A README.md with `card` as YAML front matter (strings double-quoted, lists in flow style) and
/// `body` below it.
pub fn card_text(card: &Card, body: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
    let mut text = String::from("---\n");
    for (key, value) in card {
        let rendered = match value {
            CardValue::Str(s) => quote(s),
            CardValue::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|s| quote(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        text.push_str(&format!("{key}: {rendered}\n"));
    }
    text.push_str("---\n\n");
    text.push_str(body);
    if !body.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values are what the gguf-py vendored in llama-cpp-python 0.3.36 returns for the same inputs.
    #[test]
    fn titles_and_size_labels_as_llama_cpp() {
        assert_eq!(id_to_title("tiny-llama-bf16"), "Tiny Llama Bf16");
        assert_eq!(
            id_to_title("SmolLM2-135M-Instruct"),
            "SmolLM2 135M Instruct"
        );
        assert_eq!(
            id_to_title("qwen2.5-0.5b-instruct-v1.2"),
            "Qwen2.5 0.5b Instruct v1.2"
        );
        assert_eq!(id_to_title("gpt2xl"), "Gpt2Xl");
        assert_eq!(size_label(100_424), "100K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_543_714_304), "1.5B");
        assert_eq!(size_label(7_241_732_096), "7.2B");
        assert_eq!(size_label(494_032_768), "494M");
    }

    #[test]
    fn card_round_trips_through_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let card: Card = vec![
            ("name".into(), CardValue::Str("Smol \"LM\": 2".into())),
            ("license".into(), CardValue::Str("apache-2.0".into())),
            (
                "language".into(),
                CardValue::List(vec!["en".into(), "fr".into()]),
            ),
        ];
        std::fs::write(dir.path().join(CARD_FILE), card_text(&card, "Body.")).unwrap();
        assert_eq!(folder_card(dir.path(), &Value::Null).unwrap(), card);
    }

    #[test]
    fn hub_cards_and_fallback_names() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("my-model-7b");
        std::fs::create_dir(&folder).unwrap();
        let name = |cfg: Value| match &folder_card(&folder, &cfg).unwrap()[0].1 {
            CardValue::Str(s) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(name(Value::Null), "My Model 7b");
        assert_eq!(
            name(serde_json::json!({"_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})),
            "SmolLM2 135M Instruct"
        );
        // A local path is not a model id.
        assert_eq!(
            name(serde_json::json!({"_name_or_path": "/home/u/x/y"})),
            "My Model 7b"
        );
        let hub = "---\nlicense: apache-2.0\nlanguage:\n- en\ntags:\n  - a\n  - 'b c'\nname: Hub One\n# note\n---\n# Title\n";
        std::fs::write(folder.join(CARD_FILE), hub).unwrap();
        let card = folder_card(&folder, &Value::Null).unwrap();
        let list = |xs: &[&str]| CardValue::List(xs.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            card,
            vec![
                ("name".into(), CardValue::Str("Hub One".into())),
                ("license".into(), CardValue::Str("apache-2.0".into())),
                ("tags".into(), list(&["a", "b c"])),
                ("language".into(), list(&["en"])),
            ]
        );
    }
}

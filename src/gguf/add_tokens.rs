//! `tokenizer.ggml.add_{bos,eos,sep}_token`: whether llama.cpp's tokenizer adds BOS, EOS and a
//! separator, decided as llama.cpp's converter (gguf-py `SpecialVocab`) decides it, so the flags
//! of an `export-gguf` file equal those of one made by `convert_hf_to_gguf.py`:
//!
//! 1. tokenizer.json's post-processor (each of a `Sequence`): `ByteLevel` adds nothing (unless
//!    later told otherwise), `RobertaProcessing` adds all three, and a `TemplateProcessing` adds BOS
//!    when its single template starts with a special token, EOS when it ends with one, and a
//!    separator when its pair template puts the separator or EOS between `A` and `B`.
//! 2. tokenizer_config.json's `add_*_token` booleans fill in what the post-processor left open
//!    (the post-processor wins where both speak).
//!
//! Where gguf-py would also rewire token ids (an unknown leading or trailing special token), wgspin
//! keeps the ids of tokenizer_config.json.

use serde_json::Value;

/// The flags to write, in the order bos, eos, sep; `None` where nothing says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AddTokens {
    pub bos: Option<bool>,
    pub eos: Option<bool>,
    pub sep: Option<bool>,
}

fn token_string(tcfg: &Value, key: &str) -> Option<String> {
    crate::hf::tokenizer::token_string(tcfg.get(key)?)
}

fn special_id(item: &Value) -> Option<&str> {
    item.get("SpecialToken")?.get("id")?.as_str()
}

fn sequence_id(item: &Value) -> Option<&str> {
    item.get("Sequence")?.get("id")?.as_str()
}

/// The flags of a tokenizer.json document `tj` with its tokenizer_config.json `tcfg` (`Null`
/// when there is none).
pub fn add_tokens(tj: &Value, tcfg: &Value) -> AddTokens {
    let mut f = AddTokens::default();
    let bos = token_string(tcfg, "bos_token");
    let cls = token_string(tcfg, "cls_token");
    let eos = token_string(tcfg, "eos_token");
    let sep = token_string(tcfg, "sep_token");
    let post = tj.get("post_processor").unwrap_or(&Value::Null);
    let processors: Vec<&Value> = match post.get("processors").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None if post.is_object() => vec![post],
        None => vec![],
    };
    for p in processors {
        match p.get("type").and_then(Value::as_str) {
            Some("ByteLevel") => {
                f.bos.get_or_insert(false);
                f.eos.get_or_insert(false);
            }
            Some("RobertaProcessing") => {
                (f.bos, f.eos, f.sep) = (Some(true), Some(true), Some(true));
            }
            Some("TemplateProcessing") => template(p, &mut f, [&bos, &cls, &eos, &sep], tcfg),
            _ => {}
        }
    }
    let flag = |key: &str| tcfg.get(key).and_then(Value::as_bool);
    f.bos = f.bos.or(flag("add_bos_token"));
    f.eos = f.eos.or(flag("add_eos_token"));
    f.sep = f.sep.or(flag("add_sep_token"));
    f
}

fn template(p: &Value, f: &mut AddTokens, tokens: [&Option<String>; 4], tcfg: &Value) {
    let [bos, cls, eos, sep] = tokens;
    let empty = vec![];
    let single = p.get("single").and_then(Value::as_array).unwrap_or(&empty);
    let pair = p.get("pair").and_then(Value::as_array).unwrap_or(&empty);
    let has_config = tcfg.as_object().is_some_and(|o| !o.is_empty());
    let mut first = None;
    let mut last = None;
    if single.len() > 1 {
        first = single.first().and_then(special_id);
        if let Some(t) = first {
            // gguf-py adopts an unknown leading token as BOS (or CLS) when either is unset.
            let known = [bos, cls].iter().any(|k| k.as_deref() == Some(t));
            f.bos = Some(!has_config || known || bos.is_none() || cls.is_none());
        }
        last = single.last().and_then(special_id);
        if last.is_some() {
            // ...and a trailing one as EOS (the previous EOS becoming end-of-turn).
            f.eos = Some(true);
        }
    }
    let start = usize::from(first.is_some() && pair.first().and_then(special_id) == first);
    let stop = if last.is_some() && pair.last().and_then(special_id) == last {
        pair.len().saturating_sub(1)
    } else {
        pair.len()
    };
    let inner = pair.get(start..stop.max(start)).unwrap_or(&[]);
    let (Some(a), Some(b)) = (inner.first(), inner.last()) else {
        return;
    };
    if inner.len() < 3 || sequence_id(a) != Some("A") || sequence_id(b) != Some("B") {
        return;
    }
    let middle = &inner[1..inner.len() - 1];
    let is_sep = |item: &Value| {
        special_id(item).is_some_and(|t| [sep, eos].iter().any(|k| k.as_deref() == Some(t)))
    };
    let mut add_sep = is_sep(&middle[0]) && last.is_none();
    if middle.len() == 2 && is_sep(&middle[1]) {
        add_sep = true;
    }
    f.sep = Some(add_sep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn special(t: &str) -> Value {
        json!({"SpecialToken": {"id": t, "type_id": 0}})
    }
    fn seq(id: &str) -> Value {
        json!({"Sequence": {"id": id, "type_id": 0}})
    }

    /// Expected flags are what `SpecialVocab` of the gguf-py vendored in llama-cpp-python 0.3.36
    /// sets for the same files (run on each tokenizer.json / tokenizer_config.json pair below).
    #[test]
    fn flags_as_gguf_py_sets_them() {
        let tcfg = json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false});
        // SmolLM2: a ByteLevel post-processor; the config agrees.
        let byte_level = json!({"post_processor": {"type": "ByteLevel"}});
        let none = AddTokens {
            bos: Some(false),
            eos: Some(false),
            sep: None,
        };
        assert_eq!(add_tokens(&byte_level, &tcfg), none);
        // Llama 3: BOS from a template, in a Sequence with ByteLevel.
        let llama3 = json!({"post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing", "single": [special("<s>"), seq("A")],
             "pair": [special("<s>"), seq("A"), special("<s>"), seq("B")]}]}});
        // The template overrides ByteLevel's BOS, and overrides tokenizer_config's add_bos_token.
        let t = add_tokens(&llama3, &tcfg);
        assert_eq!(
            (t.bos, t.eos, t.sep),
            (Some(true), Some(false), Some(false))
        );
        let template_only = json!({"post_processor": {"type": "TemplateProcessing",
            "single": [special("<s>"), seq("A"), special("</s>")],
            "pair": [special("<s>"), seq("A"), special("</s>"), seq("B"), special("</s>")]}});
        let t = add_tokens(&template_only, &tcfg);
        assert_eq!((t.bos, t.eos, t.sep), (Some(true), Some(true), Some(false)));
        let bert_like = json!({"post_processor": {"type": "TemplateProcessing",
            "single": [special("<s>"), seq("A")],
            "pair": [special("<s>"), seq("A"), special("</s>"), seq("B")]}});
        // Without a tokenizer_config.json no token is known to be EOS or a separator.
        let t = add_tokens(&bert_like, &Value::Null);
        assert_eq!((t.bos, t.eos, t.sep), (Some(true), None, Some(false)));
        // A leading token that is neither BOS nor CLS, both being set: no BOS.
        let unknown = json!({"post_processor": {"type": "TemplateProcessing",
            "single": [special("<x>"), seq("A")], "pair": []}});
        let named = json!({"bos_token": "<s>", "cls_token": "<c>", "eos_token": "</s>"});
        assert_eq!(
            add_tokens(&unknown, &named),
            AddTokens {
                bos: Some(false),
                eos: None,
                sep: None
            }
        );
        // Only the config: its flags.
        let t = add_tokens(
            &json!({}),
            &json!({"add_bos_token": true, "add_eos_token": false}),
        );
        assert_eq!(
            t,
            AddTokens {
                bos: Some(true),
                eos: Some(false),
                sep: None
            }
        );
    }
}

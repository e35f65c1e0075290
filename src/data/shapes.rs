//! Row shapes of SFT data as Hugging Face datasets store them, parsed from a JSON value (JSONL rows
//! are JSON already; Parquet rows are converted to the same value first, so one parser serves both).
//!
//! A row that is well-formed but unusable (wrong shape, missing turn, empty text) is not an error
//! here: the parser returns the reason as a `String` and the caller records it as skipped.

use serde_json::{Map, Value};

use super::DataFormat;

/// What one usable row yields, before the caller attaches its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub prompt: String,
    pub response: String,
    pub generated: Option<String>,
}

/// Keys that may hold the response of a prompt/response row, in order of preference
/// (`completion`: TRL prompt-completion datasets; `output`: Alpaca).
const RESPONSE_KEYS: [&str; 3] = ["response", "completion", "output"];

/// Which shape a row has, judged by its keys only (not by whether its contents are usable), so a
/// row with, say, an empty assistant turn still decides the format of the file under `Auto`.
/// Spin and messages come first because such rows may also carry a `"prompt"` string
/// (ultrachat_200k has `prompt`, `prompt_id` and `messages`).
pub(crate) fn detect(row: &Value) -> Option<DataFormat> {
    let obj = row.as_object()?;
    if obj.contains_key("real") && obj.contains_key("generated") {
        Some(DataFormat::Spin)
    } else if obj.contains_key("messages") {
        Some(DataFormat::Messages)
    } else if obj.contains_key("conversations") {
        Some(DataFormat::ShareGpt)
    } else if (obj.contains_key("prompt") || obj.contains_key("instruction"))
        && RESPONSE_KEYS.iter().any(|k| obj.contains_key(*k))
    {
        Some(DataFormat::PromptResponse)
    } else {
        None
    }
}

/// Parses a row as `format` (never `Auto`).
pub(crate) fn parse(format: DataFormat, row: &Value) -> Result<Parsed, String> {
    let obj = row
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind(row)))?;
    match format {
        DataFormat::Auto => Err("internal: parse called with Auto".into()),
        DataFormat::PromptResponse => prompt_response(obj),
        DataFormat::Messages => {
            let turns = turns(obj, "messages", "role", "content")?;
            let (prompt, response) = first_exchange(&turns, "messages")?;
            Ok(Parsed {
                prompt,
                response,
                generated: None,
            })
        }
        DataFormat::ShareGpt => {
            let turns = turns(obj, "conversations", "from", "value")?;
            let (prompt, response) = first_exchange(&turns, "conversations")?;
            Ok(Parsed {
                prompt,
                response,
                generated: None,
            })
        }
        DataFormat::Spin => {
            let real = turns(obj, "real", "role", "content")?;
            let generated = turns(obj, "generated", "role", "content")?;
            let (prompt, response) = first_exchange(&real, "real")?;
            let (gen_prompt, gen_response) = first_exchange(&generated, "generated")?;
            // Both sides must answer the same prompt, or the pair compares unrelated responses.
            if gen_prompt.trim() != prompt.trim() {
                return Err(
                    "the user turns of \"real\" and \"generated\" differ (a pair must share its prompt)"
                        .into(),
                );
            }
            Ok(Parsed {
                prompt,
                response,
                generated: Some(gen_response),
            })
        }
    }
}

/// The row's id: `"id"` or `"prompt_id"` (string or number), if present and non-empty.
pub(crate) fn row_id(row: &Value) -> Option<String> {
    let obj = row.as_object()?;
    ["id", "prompt_id"].iter().find_map(|k| match obj.get(*k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// A short name of a JSON value's type, for reasons.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A text field that must be a non-empty string (after trimming; the text itself is kept as is,
/// because whitespace is part of what gets tokenized).
fn text(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None => Err(format!("missing \"{key}\"")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("empty \"{key}\"")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("\"{key}\" is {}, expected a string", kind(v))),
    }
}

/// `{"prompt", "response"|"completion"|"output"}` or Alpaca's `{"instruction", "input", "output"}`.
fn prompt_response(obj: &Map<String, Value>) -> Result<Parsed, String> {
    let prompt = if obj.contains_key("prompt") {
        text(obj, "prompt")?
    } else if obj.contains_key("instruction") {
        let instruction = text(obj, "instruction")?;
        // Alpaca puts the task's input after the instruction; its prompt template separates the
        // two with a blank line, and an empty input means there is none.
        match obj.get("input") {
            Some(Value::String(input)) if !input.trim().is_empty() => {
                format!("{instruction}\n\n{input}")
            }
            _ => instruction,
        }
    } else {
        return Err("missing \"prompt\" (or \"instruction\")".into());
    };
    let key = RESPONSE_KEYS
        .iter()
        .find(|k| obj.contains_key(**k))
        .ok_or("missing \"response\" (or \"completion\", \"output\")")?;
    let response = text(obj, key)?;
    Ok(Parsed {
        prompt,
        response,
        generated: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

struct Turn {
    role: Role,
    content: String,
}

/// Reads `obj[list_key]` as a list of turns `{role_key, content_key}`. Role names cover the
/// OpenAI-style messages and the ShareGPT dialects (human/gpt, chatgpt, bing, model).
fn turns(
    obj: &Map<String, Value>,
    list_key: &str,
    role_key: &str,
    content_key: &str,
) -> Result<Vec<Turn>, String> {
    let list = match obj.get(list_key) {
        None => return Err(format!("missing \"{list_key}\"")),
        Some(Value::Array(list)) => list,
        Some(v) => return Err(format!("\"{list_key}\" is {}, expected a list", kind(v))),
    };
    list.iter()
        .enumerate()
        .map(|(i, turn)| {
            let at = || format!("\"{list_key}\"[{i}]");
            let turn = turn
                .as_object()
                .ok_or_else(|| format!("{} is {}, expected an object", at(), kind(turn)))?;
            let role = match turn.get(role_key) {
                Some(Value::String(r)) => match r.to_ascii_lowercase().as_str() {
                    "system" => Role::System,
                    "user" | "human" => Role::User,
                    "assistant" | "gpt" | "chatgpt" | "model" | "bing" => Role::Assistant,
                    other => return Err(format!("{}: unknown {role_key} {other:?}", at())),
                },
                Some(v) => return Err(format!("{}.{role_key} is {}", at(), kind(v))),
                None => return Err(format!("{}: missing \"{role_key}\"", at())),
            };
            let content = match turn.get(content_key) {
                Some(Value::String(s)) => s.clone(),
                // Multimodal-style content: a list of parts; only text parts carry text here.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                // Parquet has no "absent": a missing struct field reads as null.
                Some(Value::Null) | None => String::new(),
                Some(v) => return Err(format!("{}.{content_key} is {}", at(), kind(v))),
            };
            Ok(Turn { role, content })
        })
        .collect()
}

/// The first user turn and the assistant turn right after it (system turns are skipped; the
/// system prompt is not used yet).
fn first_exchange(turns: &[Turn], list_key: &str) -> Result<(String, String), String> {
    let mut rest = turns.iter().filter(|t| t.role != Role::System);
    let user = rest
        .by_ref()
        .find(|t| t.role == Role::User)
        .ok_or_else(|| format!("\"{list_key}\" has no user turn"))?;
    let assistant = rest
        .next()
        .filter(|t| t.role == Role::Assistant)
        .ok_or_else(|| format!("\"{list_key}\": no assistant turn follows the first user turn"))?;
    if user.content.trim().is_empty() {
        return Err(format!("\"{list_key}\": the first user turn is empty"));
    }
    if assistant.content.trim().is_empty() {
        return Err(format!("\"{list_key}\": the assistant turn is empty"));
    }
    Ok((user.content.clone(), assistant.content.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detect_prefers_messages_over_prompt() {
        let row = json!({"prompt": "p", "prompt_id": "x", "messages": []});
        assert_eq!(detect(&row), Some(DataFormat::Messages));
        assert_eq!(detect(&json!({"prompt": "p"})), None);
        assert_eq!(detect(&json!([1])), None);
    }

    #[test]
    fn alpaca_input_follows_instruction() {
        let row = json!({"instruction": "Translate.", "input": "Hallo", "output": "Hello"});
        let p = parse(DataFormat::PromptResponse, &row).unwrap();
        assert_eq!(p.prompt, "Translate.\n\nHallo");
        assert_eq!(p.response, "Hello");
        let row = json!({"instruction": "Say hi.", "input": "", "output": "Hi"});
        assert_eq!(
            parse(DataFormat::PromptResponse, &row).unwrap().prompt,
            "Say hi."
        );
    }

    #[test]
    fn system_turns_are_skipped() {
        let row = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Really brief."},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "More"},
        ]});
        let p = parse(DataFormat::Messages, &row).unwrap();
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("Hi", "Hello"));
    }

    #[test]
    fn text_parts_are_joined() {
        let row = json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
        ]});
        assert_eq!(parse(DataFormat::Messages, &row).unwrap().prompt, "ab");
    }

    #[test]
    fn ids_from_strings_or_numbers() {
        assert_eq!(row_id(&json!({"id": 7})), Some("7".into()));
        assert_eq!(row_id(&json!({"prompt_id": "abc"})), Some("abc".into()));
        assert_eq!(
            row_id(&json!({"id": "", "prompt_id": "p"})),
            Some("p".into())
        );
        assert_eq!(row_id(&json!({"id": null})), None);
    }
}

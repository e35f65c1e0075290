//! Row shapes of SFT data as Hugging Face datasets store them, parsed from a JSON value (JSONL rows
//! are JSON already; Parquet rows are converted to the same value first, so one parser serves both).
//!
//! A row that is well-formed but unusable (wrong shape, missing turn, empty text) is not an error
//! here: the parser returns the reason as a `String` and the caller records it as skipped.

use serde_json::{Map, Value};

use super::{DataFormat, Turns};
use crate::hf::chat_template::Message;

/// What one usable row yields, before the caller attaches its id: the conversation up to its last
/// assistant turn, split as [`super::SftExample`] holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// The turns before the last user turn (system turns, earlier exchanges), in order.
    pub history: Vec<Message>,
    /// The last user turn, the one the response answers.
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

/// Parses a row as `format` (never `Auto`); a conversation at the exchange `turns` picks (SPIN
/// pairs always at their last: the caller refuses `First` for them).
pub(crate) fn parse(format: DataFormat, which: Turns, row: &Value) -> Result<Parsed, String> {
    let obj = row
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind(row)))?;
    match format {
        DataFormat::Auto => Err("internal: parse called with Auto".into()),
        DataFormat::PromptResponse => prompt_response(obj),
        DataFormat::Messages => {
            let turns = turns(obj, "messages", "role", "content")?;
            Ok(parsed(answer(which, &turns, "messages")?, None))
        }
        DataFormat::ShareGpt => {
            let turns = turns(obj, "conversations", "from", "value")?;
            Ok(parsed(answer(which, &turns, "conversations")?, None))
        }
        DataFormat::Spin => {
            let real = turns(obj, "real", "role", "content")?;
            let generated = turns(obj, "generated", "role", "content")?;
            let real = last_answer(&real, "real")?;
            let generated = last_answer(&generated, "generated")?;
            // Both sides must answer the same conversation, or the pair compares responses to
            // different questions; the prompt is tokenized once, from "real".
            if let Some(at) = first_difference(&real, &generated) {
                return Err(format!(
                    "the turns before the last assistant turn of \"real\" and \"generated\" \
                     differ (at turn {at}; a pair must share its prompt)"
                ));
            }
            let generated = generated.answer.content.clone();
            Ok(parsed(real, Some(generated)))
        }
    }
}

/// The row's id: `"id"` or `"prompt_id"` (string or number), if present and non-empty, and whether
/// it is a `prompt_id`: a hash of the prompt (UltraChat's), which rows asking the same question
/// share, unlike an `id`.
pub(crate) fn row_id(row: &Value) -> Option<(String, bool)> {
    let obj = row.as_object()?;
    ["id", "prompt_id"].iter().find_map(|k| {
        let id = match obj.get(*k) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return None,
        };
        Some((id, *k == "prompt_id"))
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
        history: vec![],
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

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A conversation's split (see [`last_answer`]) as [`Parsed`].
fn parsed(split: Split, generated: Option<String>) -> Parsed {
    let Split {
        history,
        user,
        answer,
    } = split;
    Parsed {
        history: history
            .iter()
            .map(|t| Message {
                role: t.role.name().into(),
                content: t.content.clone(),
            })
            .collect(),
        prompt: user.content.clone(),
        response: answer.content.clone(),
        generated,
    }
}

/// A conversation read up to its last assistant turn.
struct Split<'t> {
    /// The turns before `user`.
    history: &'t [Turn],
    /// The user turn `answer` answers.
    user: &'t Turn,
    answer: &'t Turn,
}

impl Split<'_> {
    /// Every turn before the answer.
    fn prompt(&self) -> impl Iterator<Item = &Turn> {
        self.history.iter().chain(std::iter::once(self.user))
    }
}

/// The turns before the last assistant turn (the prompt: system turns and earlier exchanges
/// included, in order) and that turn (the response). The prompt must end with a user turn, the one
/// answered: templates render a generation prompt after it, and a system or assistant turn there
/// has no single reading. Turns after the last assistant turn (an unanswered user turn) have no
/// response to learn from, so the example ends before them.
fn last_answer<'t>(turns: &'t [Turn], list_key: &str) -> Result<Split<'t>, String> {
    let last = turns
        .iter()
        .rposition(|t| t.role == Role::Assistant)
        .ok_or_else(|| format!("\"{list_key}\" has no assistant turn"))?;
    let answer = &turns[last];
    let Some((user, history)) = turns[..last].split_last() else {
        return Err(format!(
            "\"{list_key}\" has no user turn before its assistant turn"
        ));
    };
    if user.role != Role::User {
        return Err(format!(
            "\"{list_key}\"[{}]: the turn before the last assistant turn is a {} turn, expected \
             the user turn it answers",
            last - 1,
            user.role.name()
        ));
    }
    if user.content.trim().is_empty() {
        return Err(format!("\"{list_key}\": the last user turn is empty"));
    }
    if answer.content.trim().is_empty() {
        return Err(format!("\"{list_key}\": the last assistant turn is empty"));
    }
    Ok(Split {
        history,
        user,
        answer,
    })
}

/// The exchange `which` picks.
fn answer<'t>(which: Turns, turns: &'t [Turn], list_key: &str) -> Result<Split<'t>, String> {
    match which {
        Turns::Last => last_answer(turns, list_key),
        Turns::First => first_answer(turns, list_key),
    }
}

/// The first assistant turn that answers a user turn (the response), that user turn (the prompt)
/// and every turn before it (system turns, or an assistant's opening line), as uclaml/SPIN reads
/// UltraChat: `messages[0]` the prompt, `messages[1]` the answer.
fn first_answer<'t>(turns: &'t [Turn], list_key: &str) -> Result<Split<'t>, String> {
    let at = (1..turns.len())
        .find(|&i| turns[i].role == Role::Assistant && turns[i - 1].role == Role::User)
        .ok_or_else(|| format!("\"{list_key}\" has no assistant turn answering a user turn"))?;
    let (user, answer) = (&turns[at - 1], &turns[at]);
    if user.content.trim().is_empty() {
        return Err(format!("\"{list_key}\": the first user turn is empty"));
    }
    if answer.content.trim().is_empty() {
        return Err(format!(
            "\"{list_key}\": the first assistant answer is empty"
        ));
    }
    Ok(Split {
        history: &turns[..at - 1],
        user,
        answer,
    })
}

/// The index of the first turn where the prompts of two splits differ (in role or content, or one
/// has more turns), or `None` when they are the same.
fn first_difference(a: &Split, b: &Split) -> Option<usize> {
    let same = |x: &Turn, y: &Turn| x.role == y.role && x.content == y.content;
    match a.prompt().zip(b.prompt()).position(|(x, y)| !same(x, y)) {
        Some(i) => Some(i),
        None => {
            let (n, m) = (a.history.len(), b.history.len());
            (n != m).then_some(n.min(m) + 1)
        }
    }
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
        let p = parse(DataFormat::PromptResponse, Turns::Last, &row).unwrap();
        assert_eq!(p.prompt, "Translate.\n\nHallo");
        assert_eq!(p.response, "Hello");
        let row = json!({"instruction": "Say hi.", "input": "", "output": "Hi"});
        assert_eq!(
            parse(DataFormat::PromptResponse, Turns::Last, &row)
                .unwrap()
                .prompt,
            "Say hi."
        );
    }

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    fn turn(role: &str, content: &str) -> Value {
        json!({"role": role, "content": content})
    }

    #[test]
    fn multi_turn_spin_pair_keeps_every_turn() {
        let prefix = [
            turn("system", "Be brief."),
            turn("user", "u1"),
            turn("assistant", "a1"),
            turn("user", "u2"),
        ];
        let side = |answer| {
            let mut t = prefix.to_vec();
            t.push(turn("assistant", answer));
            t
        };
        let row = json!({"real": side("a2"), "generated": side("g2")});
        let p = parse(DataFormat::Spin, Turns::Last, &row).unwrap();
        assert_eq!(
            p,
            Parsed {
                history: vec![
                    msg("system", "Be brief."),
                    msg("user", "u1"),
                    msg("assistant", "a1")
                ],
                prompt: "u2".into(),
                response: "a2".into(),
                generated: Some("g2".into()),
            }
        );
    }

    #[test]
    fn spin_sides_must_share_every_prompt_turn() {
        let real = [
            turn("user", "u1"),
            turn("assistant", "a1"),
            turn("user", "u2"),
            turn("assistant", "a2"),
        ];
        let mut generated = real.to_vec();
        generated[1] = turn("assistant", "other a1");
        let row = json!({"real": real, "generated": generated});
        let e = parse(DataFormat::Spin, Turns::Last, &row).unwrap_err();
        assert!(e.contains("differ") && e.contains("turn 1"), "{e}");
        // A missing system turn is a difference too.
        let mut with_system = vec![turn("system", "s")];
        with_system.extend(real.iter().cloned());
        let row = json!({"real": with_system, "generated": real});
        assert!(
            parse(DataFormat::Spin, Turns::Last, &row)
                .unwrap_err()
                .contains("differ")
        );
    }

    #[test]
    fn conversations_end_at_their_last_answer() {
        let row = json!({"messages": [
            turn("system", "Be brief."),
            turn("user", "Hi"),
            turn("assistant", "Hello"),
            turn("user", "More"),
        ]});
        let p = parse(DataFormat::Messages, Turns::Last, &row).unwrap();
        assert_eq!(p.history, [msg("system", "Be brief.")]);
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("Hi", "Hello"));
        // ShareGPT dialects' roles become the template's.
        let row = json!({"conversations": [
            {"from": "human", "value": "q1"}, {"from": "gpt", "value": "r1"},
            {"from": "human", "value": "q2"}, {"from": "gpt", "value": "r2"},
        ]});
        let p = parse(DataFormat::ShareGpt, Turns::Last, &row).unwrap();
        assert_eq!(p.history, [msg("user", "q1"), msg("assistant", "r1")]);
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("q2", "r2"));
    }

    #[test]
    fn turns_first_reads_the_opening_exchange() {
        let row = json!({"messages": [
            turn("system", "Be brief."),
            turn("user", "q1"),
            turn("assistant", "r1"),
            turn("user", "q2"),
            turn("assistant", "r2"),
        ]});
        let p = parse(DataFormat::Messages, Turns::First, &row).unwrap();
        assert_eq!(p.history, [msg("system", "Be brief.")]);
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("q1", "r1"));
        let p = parse(DataFormat::Messages, Turns::Last, &row).unwrap();
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("q2", "r2"));
        // An assistant's opening line answers nothing; the first answer to a user turn counts.
        let row = json!({"conversations": [
            {"from": "gpt", "value": "Hi, ask away."}, {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "r1"},
        ]});
        let p = parse(DataFormat::ShareGpt, Turns::First, &row).unwrap();
        assert_eq!(p.history, [msg("assistant", "Hi, ask away.")]);
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("q1", "r1"));
        let row = json!({"messages": [turn("user", "q1"), turn("user", "q2")]});
        assert!(
            parse(DataFormat::Messages, Turns::First, &row)
                .unwrap_err()
                .contains("no assistant turn")
        );
    }

    #[test]
    fn the_last_answer_must_follow_a_user_turn() {
        let row = json!({"messages": [
            turn("user", "Hi"),
            turn("system", "Really brief."),
            turn("assistant", "Hello"),
        ]});
        let e = parse(DataFormat::Messages, Turns::Last, &row).unwrap_err();
        assert!(e.contains("[1]") && e.contains("system turn"), "{e}");
        let row = json!({"messages": [turn("system", "s"), turn("assistant", "a")]});
        assert!(parse(DataFormat::Messages, Turns::Last, &row).is_err());
        let row = json!({"messages": [turn("assistant", "a")]});
        assert!(
            parse(DataFormat::Messages, Turns::Last, &row)
                .unwrap_err()
                .contains("no user turn")
        );
    }

    #[test]
    fn single_turn_rows_have_no_history() {
        let row = json!({"messages": [turn("user", "Hi"), turn("assistant", "Hello")]});
        let p = parse(DataFormat::Messages, Turns::Last, &row).unwrap();
        assert!(p.history.is_empty());
        assert_eq!((p.prompt.as_str(), p.response.as_str()), ("Hi", "Hello"));
    }

    #[test]
    fn text_parts_are_joined() {
        let row = json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
        ]});
        assert_eq!(
            parse(DataFormat::Messages, Turns::Last, &row)
                .unwrap()
                .prompt,
            "ab"
        );
    }

    #[test]
    fn ids_from_strings_or_numbers() {
        assert_eq!(row_id(&json!({"id": 7})), Some(("7".into(), false)));
        assert_eq!(
            row_id(&json!({"prompt_id": "abc"})),
            Some(("abc".into(), true))
        );
        assert_eq!(
            row_id(&json!({"id": "", "prompt_id": "p"})),
            Some(("p".into(), true))
        );
        assert_eq!(row_id(&json!({"id": null})), None);
    }
}

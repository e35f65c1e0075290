//! Chat templates: the Jinja template of `tokenizer_config.json` (a string or a list of named
//! templates) or of `chat_template.jinja`, rendered with minijinja the way transformers renders it:
//! `trim_blocks` + `lstrip_blocks`, loop controls, Python string methods, `raise_exception`,
//! `strftime_now`, and a `tojson` that writes like Python's `json.dumps` (no HTML escaping).

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// One chat message as templates see it (`role` is `system`, `user` or `assistant`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: &str) -> Self {
        Message {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template and the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as given to the template.
    special: Vec<(String, String)>,
}

/// Picks the template out of a `chat_template` field: a string, or a list of
/// `{"name", "template"}` where the one named `default` wins.
pub fn select_template(value: &Value) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(items) => {
            let named: Vec<(&str, &str)> = items
                .iter()
                .filter_map(|i| Some((i.get("name")?.as_str()?, i.get("template")?.as_str()?)))
                .collect();
            Ok(named
                .iter()
                .find(|(n, _)| *n == "default")
                .or(named.first())
                .map(|(_, t)| t.to_string()))
        }
        other => Err(Error::ChatTemplate {
            message: format!(
                "chat_template must be a string or a list of named templates, got {other}"
            ),
        }),
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let nl = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                nl(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            nl(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                nl(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            nl(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&v, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

// Errors are shown with `{e}`, not `{e:#}`: minijinja 2.24's source excerpt of the alternate form
// underflows a column subtraction on templates with `\r` line breaks (found by fuzzing), which
// panics; the plain form still names the error kind, detail and line.

/// Template instructions one rendering may run: real chat templates need a few thousand per
/// conversation; a model-supplied template that loops without end stops here with an error.
pub const RENDER_FUEL: u64 = 5_000_000;

impl ChatTemplate {
    /// Compiles `source`; `special` are the special-token strings (`bos_token`, `eos_token`, ...).
    pub fn new(source: &str, special: Vec<(String, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(RENDER_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<JValue, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function(
            "strftime_now",
            |fmt: String| -> std::result::Result<String, minijinja::Error> {
                // An unknown `%` specifier makes chrono's Display fail, which `to_string` would
                // turn into a panic (found by fuzzing): write it out and report the error.
                use std::fmt::Write;
                let mut out = String::new();
                write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("strftime_now: invalid format {fmt:?}"),
                    )
                })?;
                Ok(out)
            },
        );
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::ChatTemplate {
                message: format!("does not compile: {e}"),
            })?;
        Ok(Self { env, special })
    }

    /// Renders the conversation as text.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::ChatTemplate {
                message: e.to_string(),
            })?;
        let mut ctx: std::collections::BTreeMap<String, JValue> = self
            .special
            .iter()
            .map(|(k, v)| (k.clone(), JValue::from(v.clone())))
            .collect();
        ctx.insert("messages".into(), JValue::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        tmpl.render(ctx).map_err(|e| Error::ChatTemplate {
            message: if e.kind() == ErrorKind::OutOfFuel {
                format!(
                    "rendering ran past its budget of {RENDER_FUEL} template steps (a loop \
                     that does not end?); fix the template"
                )
            } else {
                format!("rendering failed: {e}")
            },
        })
    }
}

/// `history` followed by the user turn `prompt`: what a prompt is rendered from.
pub fn prompt_messages(history: &[Message], prompt: &str) -> Vec<Message> {
    let mut turns = history.to_vec();
    turns.push(Message::user(prompt));
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> Vec<(String, String)> {
        vec![
            ("bos_token".into(), "<s>".into()),
            ("eos_token".into(), "</s>".into()),
        ]
    }

    #[test]
    fn strftime_now_with_a_bad_format_is_an_error() {
        let t = ChatTemplate::new("{{ strftime_now('%Q %Y') }}", special()).unwrap();
        let e = t.render(&[Message::user("hi")], false).unwrap_err();
        assert!(e.to_string().contains("invalid format"), "{e}");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", special()).unwrap();
        assert_eq!(t.render(&[], false).unwrap().len(), 4);
    }

    #[test]
    fn trims_blocks_like_transformers() {
        let t = ChatTemplate::new(
            "{{ bos_token }}\n{% for m in messages %}\n  {{ m.role }}: {{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}assistant:{% endif %}",
            special(),
        )
        .unwrap();
        let s = t.render(&[Message::user("  hi ")], true).unwrap();
        // What jinja2 with trim_blocks + lstrip_blocks renders (checked with Python's jinja2).
        assert_eq!(s, "<s>\n  user: hi\nassistant:");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t =
            ChatTemplate::new("{{ raise_exception('roles must alternate') }}", special()).unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}",
            special(),
        )
        .unwrap();
        let s = t.render(&[Message::user("<é>")], false).unwrap();
        assert_eq!(
            s,
            "[{\"role\": \"user\", \"content\": \"<é>\"}]|{\n  \"role\": \"user\",\n  \"content\": \"<é>\"\n}"
        );
    }

    #[test]
    fn named_template_list_prefers_default() {
        let v: Value = serde_json::from_str(
            r#"[{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]"#,
        )
        .unwrap();
        assert_eq!(select_template(&v).unwrap().as_deref(), Some("D"));
    }
}

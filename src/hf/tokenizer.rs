//! Tokenizer and the tokenization rule every wgspin stage shares (scoring, generation, training):
//!
//! - prompt ids = tokenize(chat_template(history + [{user: prompt}], add_generation_prompt=True),
//!   add_special_tokens=False), as transformers' `apply_chat_template(messages[:-1],
//!   add_generation_prompt=True)` renders a conversation before its last assistant turn; or
//!   tokenize(prompt) with special tokens when there is no template (single-turn prompts only:
//!   without a template there is no way to write the earlier turns);
//! - response ids = tokenize(response, add_special_tokens=False) + [eos].

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hf::chat_template::{ChatTemplate, Message, select_template};

/// `tokenizer.json` plus the chat template and special tokens of `tokenizer_config.json`.
pub struct ChatTokenizer {
    inner: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    /// Appended to every response; ends generation.
    pub eos_token_id: u32,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Where the tokenizer came from (tokenizer.json or a GGUF file), for messages.
    origin: PathBuf,
    /// Where the chat template came from (tokenizer_config.json, chat_template.jinja, a GGUF file).
    template_origin: PathBuf,
    /// The model's vocab_size once [`Self::limit_to`] is called: ids at or above it have no
    /// embedding row, so encoding them is an error instead of an out-of-bounds gather.
    vocab_limit: Option<u32>,
    /// The model's context (`max_position_embeddings`) once [`Self::limit_to`] is called.
    context: Option<usize>,
}

/// A special token in tokenizer_config.json: a string or an AddedToken object with `content`.
pub(crate) fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A chat-template error, naming the file the template came from.
fn in_file(origin: &Path, e: Error) -> Error {
    match e {
        Error::ChatTemplate { message } => Error::ChatTemplate {
            message: format!("{}: {message}", origin.display()),
        },
        other => other,
    }
}

impl ChatTokenizer {
    /// Loads from a model folder; `config_eos` (from config.json) is the fallback eos id.
    pub fn from_dir(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::MissingFile {
                path: tok_path,
                hint: "wgspin needs the fast-tokenizer file tokenizer.json; \
                       in Python, `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` writes it."
                    .into(),
            });
        }
        let text = crate::fsutil::read_text(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| Error::Tokenizer {
            path: tok_path.clone(),
            message: format!("{e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = crate::fsutil::read_text(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: cfg_path.clone(),
                source,
            })?
        } else {
            Value::Null
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.exists() {
            Some(crate::fsutil::read_text(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            match cfg.get("chat_template") {
                Some(v) => select_template(v)?,
                None => None,
            }
        };
        let template_file = if jinja_path.exists() {
            &jinja_path
        } else {
            &cfg_path
        };
        let template = source.as_deref().map(|s| (s, template_file.as_path()));
        let mut tok = Self::new(inner, &cfg, template, config_eos, &cfg_path)?;
        tok.origin = tok_path;
        Ok(tok)
    }

    /// Builds from parts: `special_cfg` is a tokenizer_config-like object (`bos_token`, `eos_token`, ...);
    /// `template` is the chat template's source and the file it came from.
    pub fn new(
        inner: tokenizers::Tokenizer,
        special_cfg: &Value,
        template: Option<(&str, &Path)>,
        config_eos: &[u32],
        origin: &Path,
    ) -> Result<Self> {
        let mut special = vec![];
        for key in [
            "bos_token",
            "eos_token",
            "pad_token",
            "unk_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(s) = special_cfg.get(key).and_then(token_string) {
                special.push((key.to_string(), s));
            }
        }
        let id_of = |key: &str| {
            special
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, s)| inner.token_to_id(s))
        };
        let eos_token_id = id_of("eos_token")
            .or(config_eos.first().copied())
            .ok_or_else(|| Error::Tokenizer {
                path: origin.to_path_buf(),
                message: "no eos token: set `eos_token` in tokenizer_config.json or \
                          `eos_token_id` in config.json"
                    .into(),
            })?;
        let bos_token_id = id_of("bos_token");
        let pad_token_id = id_of("pad_token");
        let template_origin = template.map_or(origin, |(_, file)| file).to_path_buf();
        let template = template
            .map(|(src, _)| ChatTemplate::new(src, special.clone()))
            .transpose()
            .map_err(|e| in_file(&template_origin, e))?;
        Ok(Self {
            inner,
            template,
            eos_token_id,
            bos_token_id,
            pad_token_id,
            origin: origin.to_path_buf(),
            template_origin,
            vocab_limit: None,
            context: None,
        })
    }

    /// The model's context in tokens, once [`Self::limit_to`] has been called.
    pub fn context(&self) -> Option<usize> {
        self.context
    }

    /// Holds the tokenizer to a model's limits: its special tokens must be inside the vocabulary
    /// now, and every encoded id from then on; [`Self::context`] reports the context length.
    pub fn limit_to(&mut self, cfg: &crate::hf::config::ModelConfig) -> Result<()> {
        let vocab_size = cfg.vocab_size;
        self.context = Some(cfg.max_position_embeddings);
        let limit = u32::try_from(vocab_size).unwrap_or(u32::MAX);
        for (what, id) in [
            ("eos", Some(self.eos_token_id)),
            ("bos", self.bos_token_id),
            ("pad", self.pad_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id >= limit) {
                return Err(Error::Tokenizer {
                    path: self.origin.clone(),
                    message: format!(
                        "the {what} token id {id} is outside the model's vocabulary \
                         (config vocab_size {vocab_size}); fix the token or the config"
                    ),
                });
            }
        }
        self.vocab_limit = Some(limit);
        Ok(())
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Raw encoding.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let ids = self
            .inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                path: self.origin.clone(),
                message: format!("encoding failed: {e}"),
            })?;
        if let Some(limit) = self.vocab_limit
            && let Some(&id) = ids.iter().find(|&&id| id >= limit)
        {
            let token = self.inner.id_to_token(id).unwrap_or_default();
            return Err(Error::Tokenizer {
                path: self.origin.clone(),
                message: format!(
                    "token {token:?} (id {id}) is outside the model's vocabulary (vocab_size \
                     {limit}): the tokenizer has tokens the embedding has no row for; resize the \
                     embeddings (transformers: model.resize_token_embeddings(len(tokenizer))) or \
                     remove the token from tokenizer.json"
                ),
            });
        }
        Ok(ids)
    }

    /// Token id for padding slots: the pad token, or eos when the model has none (padding is
    /// masked, so any id serves).
    pub fn pad_id(&self) -> u32 {
        self.pad_token_id.unwrap_or(self.eos_token_id)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                path: self.origin.clone(),
                message: format!("decoding failed: {e}"),
            })
    }

    /// Renders a conversation with the chat template.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match &self.template {
            Some(t) => t
                .render(messages, add_generation_prompt)
                .map_err(|e| in_file(&self.template_origin, e)),
            None => Err(Error::ChatTemplate {
                message: "the model has no chat template".into(),
            }),
        }
    }

    /// Prompt ids of a single-turn prompt by the shared rule (see the module header).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.chat_prompt_ids(&[], prompt)
    }

    /// Prompt ids of the conversation `history + [user: prompt]` by the shared rule (see the module
    /// header); never empty, since the model needs a position to predict the first response token
    /// from. With history and no chat template it is an error: dropping the turns would train
    /// and generate on another prompt than the data's.
    pub fn chat_prompt_ids(&self, history: &[Message], prompt: &str) -> Result<Vec<u32>> {
        let ids = match &self.template {
            Some(t) => {
                let text = t
                    .render(
                        &super::chat_template::prompt_messages(history, prompt),
                        true,
                    )
                    .map_err(|e| in_file(&self.template_origin, e))?;
                self.encode(&text, false)?
            }
            None if !history.is_empty() => {
                return Err(Error::ChatTemplate {
                    message: format!(
                        "{}: this prompt has {} turn(s) before its last user turn (system turns \
                         or earlier exchanges), and a multi-turn prompt needs a chat template to \
                         render them; the model has none (set `chat_template` in \
                         tokenizer_config.json or add chat_template.jinja)",
                        self.template_origin.display(),
                        history.len()
                    ),
                });
            }
            None => self.encode(prompt, true)?,
        };
        if !ids.is_empty() {
            return Ok(ids);
        }
        Err(match &self.template {
            Some(_) => Error::ChatTemplate {
                message: format!(
                    "{}: the chat template renders this prompt as no text at all; fix the template",
                    self.template_origin.display()
                ),
            },
            None => Error::Invalid(
                "the prompt is empty and the tokenizer adds no bos token before it".into(),
            ),
        })
    }

    /// Response ids by the shared rule: no special tokens added, eos appended.
    pub fn response_ids(&self, response: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(response, false)?;
        ids.push(self.eos_token_id);
        Ok(ids)
    }
}

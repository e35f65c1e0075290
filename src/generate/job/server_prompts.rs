//! What a generation job sends a server for each prompt: the text local generation would feed the
//! model, without a BOS the server adds itself.

use std::collections::HashSet;

use crate::data::SftExample;
use crate::error::{Error, Result};
use crate::generate::GenRequest;
use crate::generate::server::{ServerApi, ServerPrompt};
use crate::hf::tokenizer::ChatTokenizer;

/// What a server is sent for each request: the prompt text local generation would feed the model
/// (re-rendered, or decoded from the kept ids when the prompt was cut to fit the context) and the
/// bare user turn for the chat API. When the model's tokenizer adds a BOS by itself (as servers
/// tokenizing a completion prompt do: vLLM with the same tokenizer, llama.cpp from the GGUF's
/// add_bos flag), the BOS the chat template rendered is left out of the text, or the server would
/// see two. SmolLM2's BOS is `<|im_start|>`, which its template renders and its tokenizer does not
/// add: there the text is kept whole.
pub(super) fn server_prompts(
    tok: &ChatTokenizer,
    examples: &[SftExample],
    requests: &[GenRequest],
    truncated: &HashSet<u32>,
    api: ServerApi,
) -> Result<Vec<ServerPrompt>> {
    let adds_bos = |special| -> Result<bool> {
        let ids = tok.encode("a", special)?;
        Ok(ids.first().is_some_and(|id| Some(*id) == tok.bos_token_id))
    };
    let bos_text = match tok.bos_token_id {
        Some(b) if adds_bos(true)? && !adds_bos(false)? => {
            Some(tok.decode(&[b], false)?).filter(|t| !t.is_empty())
        }
        _ => None,
    };
    requests
        .iter()
        .map(|r| {
            let ex = &examples[r.index as usize];
            if api == ServerApi::Chat && !ex.history.is_empty() {
                // The chat request carries the user turn alone (the server renders it), so the
                // earlier turns would be lost.
                return Err(Error::Invalid(format!(
                    "example {:?}: a multi-turn prompt cannot be sent to the chat API yet (it \
                     sends the last user turn only); use --server-api completions, which sends \
                     the conversation rendered with the model's chat template",
                    ex.id
                )));
            }
            if api == ServerApi::Chat && truncated.contains(&r.index) {
                return Err(Error::Invalid(format!(
                    "example {:?}: its prompt is longer than the model's context leaves once \
                     --max-new-tokens is reserved, and the chat API cannot cut it (the server \
                     renders the turn): use --server-api completions, which keeps the prompt's \
                     end as local generation does, or a lower --max-new-tokens",
                    ex.id
                )));
            }
            let mut text = if truncated.contains(&r.index) {
                tok.decode(&r.prompt, false)?
            } else if tok.has_chat_template() {
                tok.render_chat(&ex.prompt_messages(), true)?
            } else {
                ex.prompt.clone()
            };
            if let Some(bos) = &bos_text
                && r.prompt.first() == tok.bos_token_id.as_ref()
                && let Some(rest) = text.strip_prefix(bos.as_str())
            {
                text = rest.to_string();
            }
            Ok(ServerPrompt {
                index: r.index,
                text,
                user: ex.prompt.clone(),
            })
        })
        .collect()
}

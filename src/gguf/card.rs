//! A model card's fields ↔ GGUF `general.*` metadata: the GGUF side of [`crate::hf::card`], which
//! owns the card keys and llama.cpp's naming rules.

use super::reader::{GgufFile, MetaValue};
use crate::hf::card::{CARD_KEYS, Card, CardValue, size_label};

/// `general.*` metadata of a card, for a GGUF file, with the size label computed from `params`
/// when the card has none.
pub fn gguf_metadata(card: &Card, params: u64) -> Vec<(String, MetaValue)> {
    let get = |k: &str| card.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let mut out = vec![("general.type".to_string(), MetaValue::Str("model".into()))];
    for (gguf_key, card_keys) in CARD_KEYS {
        let value = match (get(card_keys[0]), *gguf_key) {
            (Some(CardValue::Str(s)), _) => MetaValue::Str(s.clone()),
            (Some(CardValue::List(items)), _) => {
                MetaValue::Array(8, items.iter().cloned().map(MetaValue::Str).collect())
            }
            (None, "general.size_label") if params > 0 => MetaValue::Str(size_label(params)),
            (None, _) => continue,
        };
        out.push((gguf_key.to_string(), value));
    }
    out
}

/// The card fields that a GGUF file's `general.*` metadata holds (for `convert`).
pub fn card_of_gguf(g: &GgufFile) -> Card {
    let mut card = Card::new();
    for (gguf_key, card_keys) in CARD_KEYS {
        let value = match g.metadata.get(*gguf_key) {
            Some(MetaValue::Str(s)) => CardValue::Str(s.clone()),
            Some(MetaValue::Array(_, items)) => CardValue::List(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => continue,
        };
        card.push((card_keys[0].to_string(), value));
    }
    card
}

//! The files of a Hugging Face model folder by name: which ones a checkpoint carries over, which
//! ones loading reads, which ones make a folder a model's. One table, for the loader, the
//! checkpoint writer, model identities and the output checks.

/// Files of a model folder that a checkpoint carries over: configuration, tokenizer and chat
/// template (the names transformers reads); weights and anything else stay behind.
const METADATA_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Generation defaults transformers reads (`GenerationConfig.from_pretrained`).
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// Whether a file named `name` is one a checkpoint carries over ([`METADATA_FILES`]).
pub fn is_metadata(name: &str) -> bool {
    METADATA_FILES.contains(&name)
}

/// Whether a file named `name` belongs to a Hugging Face model folder as checkpoints and
/// `convert` write them: metadata, the model card, the weights and their shard index.
pub fn is_model_file(name: &str) -> bool {
    is_metadata(name)
        || name == super::card::CARD_FILE
        || name == "model.safetensors.index.json"
        || name.ends_with(".safetensors")
}

/// The metadata files of a model folder that loading reads (config, generation defaults,
/// tokenizer, chat template, the shard index); the weights come from the loader's own list.
pub const LOADED_METADATA: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

//! The demo's model, made on the spot: a tiny Llama (2 layers, hidden 64 by default, GQA, tied embeddings)
//! with a character-level tokenizer and a chat template, written as an ordinary Hugging Face
//! folder (transformers loads it too). Weights are drawn from N(0, 0.02) with a fixed seed.

use std::path::Path;

use serde_json::{Value, json};

use wgspin::error::{Error, Result};
use wgspin::fsutil::write_atomic;
use wgspin::hf::names as hf_names;
use wgspin::hf::weights::{HostTensor, StoredDtype, write_safetensors};
use wgspin::rng::SplitMix64 as Rng;

const SPECIALS: [&str; 5] = ["<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"];
const CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789 :.,?!-+=";
const TEMPLATE: &str = "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\
{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// Hidden size of the default demo model (`--hidden`).
pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;

fn vocab() -> Vec<String> {
    SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(CHARS.chars().map(String::from))
        .collect()
}

fn tokenizer_json() -> Value {
    let vocab = vocab();
    let map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"},
    })
}

/// Writes the untrained demo model of width `hidden` (a multiple of 4: four heads) into `dir`.
pub fn write_base_model(dir: &Path, seed: u64, hidden: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let v = vocab().len();
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": v,
        "hidden_size": hidden,
        "intermediate_size": 3 * hidden,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden / 4,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "bos_token_id": null,
        "eos_token_id": 4,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    });
    let tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": TEMPLATE,
        "eos_token": "<|end|>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 64,
    });
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write_atomic(&dir.join("config.json"), pretty(&config).as_bytes())?;
    write_atomic(
        &dir.join("tokenizer.json"),
        pretty(&tokenizer_json()).as_bytes(),
    )?;
    write_atomic(
        &dir.join("tokenizer_config.json"),
        pretty(&tok_config).as_bytes(),
    )?;
    write_atomic(
        &dir.join("generation_config.json"),
        pretty(&json!({"eos_token_id": 4, "pad_token_id": 0})).as_bytes(),
    )?;
    let cfg = wgspin::hf::config::ModelConfig::from_dir(dir)?;
    let mut rng = Rng(seed);
    let tensors: Vec<(String, HostTensor)> = hf_names::expected_tensors(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            // Norm scales start at 1, matrices at N(0, 0.02) as transformers initialises Llama.
            let data = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                (0..n).map(|_| 0.02 * rng.normal()).collect()
            };
            (
                name,
                HostTensor {
                    shape,
                    data,
                    dtype: StoredDtype::F32,
                },
            )
        })
        .collect();
    write_safetensors(
        &dir.join("model.safetensors"),
        tensors.iter().map(|(name, t)| (name, t)),
        StoredDtype::F32,
        wgspin::hf::weights::pt_metadata(),
    )
}

//! The Hugging Face formats, in and out: `config.json` (resolved into a config without
//! `Option`s), the one table of tensor names, safetensors weights, the tokenizer and its chat
//! template, checkpoints that `transformers` loads, PEFT LoRA adapters, and the bundle of all of them on a device.

pub mod arch;
pub mod card;
pub mod chat_template;
pub mod config;
pub mod config_json;
pub mod data_files;
pub mod files;
pub mod hub;
pub mod hub_data;
pub mod names;
pub mod source;
pub mod tokenizer;
pub mod validate;
pub mod weights;
pub mod weights_write;

//! Entry points of the `cargo fuzz` targets (`fuzz/`) and of the test that replays their corpus
//! (`tests/fuzz_corpus.rs`), so both run exactly the same code. Each feeds arbitrary bytes to one
//! reader of untrusted input and to what a command does next with its result, and says whether the
//! reader accepted the bytes. An `Err` is the right answer to bad bytes; a panic, a hang or an
//! allocation the input's size does not justify is a bug.

use std::path::Path;

use crate::data::{DataFormat, parse_dataset};
use crate::gguf::reader::GgufFile;
use crate::hf::chat_template::{ChatTemplate, Message};
use crate::hf::weights::WeightFiles;

/// A target: arbitrary bytes in, whether the reader accepted them out.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs` and of `fuzz/corpus/*`).
pub const TARGETS: [(&str, Target); 4] = [
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("dataset", dataset),
    ("chat_template", chat_template),
];

/// A GGUF file: header, metadata and tensor table, then every tensor dequantized and the
/// tokenizer and Hugging Face config built from the metadata (what `convert` and loading do).
pub fn gguf(bytes: &[u8]) -> bool {
    let Ok(g) = GgufFile::parse(Path::new("fuzz.gguf"), bytes.to_vec()) else {
        return false;
    };
    for t in &g.tensors {
        let values = g.dequantize(t);
        assert_eq!(values.len() as u64, t.dims.iter().product::<u64>());
    }
    if let Ok(tok) = crate::gguf::tokenizer::from_gguf(&g) {
        let _ = crate::gguf::hf_config(&g, &tok);
    }
    true
}

/// A safetensors file: the header, then every tensor widened to f32 (what loading does).
pub fn safetensors(bytes: &[u8]) -> bool {
    let Ok(files) = WeightFiles::from_bytes(Path::new("fuzz.safetensors"), bytes.to_vec()) else {
        return false;
    };
    let names: Vec<String> = files.names().map(str::to_string).collect();
    for name in names {
        if let Ok(t) = files.read(&name) {
            assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
        }
    }
    true
}

/// A data file, JSON lines or Parquet (told apart by content as `--data` does), in every row
/// format; accepted when some format reads a usable row.
pub fn dataset(bytes: &[u8]) -> bool {
    let mut accepted = false;
    for format in DataFormat::ALL {
        if let Ok(d) = parse_dataset(Path::new("fuzz.jsonl"), bytes, format) {
            assert!(!d.examples.is_empty());
            accepted = true;
        }
    }
    accepted
}

/// A chat template and a conversation: the bytes up to the first NUL are the template, the NUL-
/// separated pieces after it the contents of alternating user / assistant messages; rendered with
/// and without the generation prompt, as tokenizing a prompt and a training pair does; accepted
/// when both render.
pub fn chat_template(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let messages: Vec<Message> = parts
        .enumerate()
        .map(|(i, content)| {
            if i % 2 == 0 {
                Message::user(content)
            } else {
                Message::assistant(content)
            }
        })
        .collect();
    let special = vec![
        ("bos_token".to_string(), "<s>".to_string()),
        ("eos_token".to_string(), "</s>".to_string()),
    ];
    let Ok(template) = ChatTemplate::new(source, special) else {
        return false;
    };
    [false, true]
        .into_iter()
        .all(|add_generation_prompt| template.render(&messages, add_generation_prompt).is_ok())
}

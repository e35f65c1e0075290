//! Checkpoints in Hugging Face layout: `config.json`, `model.safetensors` (in the input's dtype
//! unless told otherwise), and the tokenizer / generation files copied from the source model, so
//! `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads them. A checkpoint folder is
//! written beside its final place and renamed into it, so a crash never leaves a half-written one.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hf::files::{GENERATION_CONFIG, is_metadata};
use crate::hf::weights::{HostTensor, StoredDtype, write_safetensors};
use crate::model::Transformer;
use crate::model::named::params_mut;

/// Host copies of every parameter, by Hugging Face name.
pub fn named_host_tensors(
    model: &Transformer,
    dtype: StoredDtype,
) -> Result<Vec<(String, HostTensor)>> {
    let mut m = model.clone();
    let mut out = vec![];
    for (name, p) in params_mut(&mut m) {
        let shape = p.shape();
        let data = p.host_f32(&name)?;
        out.push((name, HostTensor { shape, data, dtype }));
    }
    Ok(out)
}

/// Writes a complete checkpoint folder at `dest`: the model's weights in `dtype`, the metadata
/// files of `source_dir` (a model folder, or a .gguf file whose metadata is converted), `card`
/// appended to its model card, and `extra` files (name, bytes), replacing any folder already there.
pub fn save(
    model: &Transformer,
    source_dir: &Path,
    dest: &Path,
    dtype: StoredDtype,
    card: Option<&str>,
    extra: &[(&str, Vec<u8>)],
) -> Result<()> {
    save_folder(dest, |tmp| {
        if source_dir.is_file() && crate::gguf::reader::is_gguf(source_dir) {
            crate::gguf::write_hf_metadata(source_dir, tmp, dtype)?;
        } else {
            copy_metadata(source_dir, tmp)?;
        }
        if let Some(section) = card {
            append_to_card(tmp, section)?;
        }
        let tensors = named_host_tensors(model, dtype)?;
        write_safetensors(
            &tmp.join("model.safetensors"),
            tensors.iter().map(|(name, t)| (name, t)),
            dtype,
            crate::hf::weights::pt_metadata(),
        )?;
        write_extra(tmp, extra)
    })
}

/// Appends `section` (Markdown) to the model card `dir/README.md`, replacing the file atomically.
pub fn append_to_card(dir: &Path, section: &str) -> Result<()> {
    let path = dir.join(crate::hf::card::CARD_FILE);
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    text.push_str(section);
    crate::fsutil::write_atomic(&path, text.as_bytes())
}

/// Writes `extra` files (name, bytes) into `dir`.
pub fn write_extra(dir: &Path, extra: &[(&str, Vec<u8>)]) -> Result<()> {
    for (file, bytes) in extra {
        crate::fsutil::write_atomic(&dir.join(file), bytes)?;
    }
    Ok(())
}

/// Fills a fresh folder beside `dest` and swaps it in (see [`crate::fsutil::replace_folder`]).
pub use crate::fsutil::replace_folder as save_folder;

/// Puts a checkpoint back after a crash in [`save`]'s swap, and clears what crashed saves left.
/// Call with the output folder locked (no live writer). A missing `parent/name` whose previous
/// copy `.name.old-PID` survived (killed between the two renames) gets that copy back; stale
/// `.name.old-*` and half-written `.name.tmp-*` folders are removed. Returns whether it restored.
pub fn recover(parent: &Path, name: &str) -> Result<bool> {
    let dest = parent.join(name);
    let (old_prefix, tmp_prefix) = (format!(".{name}.old-"), format!(".{name}.tmp-"));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(false);
    };
    let mut olds = vec![];
    let mut tmps = vec![];
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with(&old_prefix) {
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            olds.push((modified, entry.path()));
        } else if file_name.starts_with(&tmp_prefix) {
            tmps.push(entry.path());
        }
    }
    // The newest previous copy is the last complete checkpoint; a tmp may be half written.
    olds.sort();
    let mut restored = false;
    if !dest.exists()
        && let Some((_, newest)) = olds.pop()
    {
        std::fs::rename(&newest, &dest).map_err(|e| Error::io(&newest, e))?;
        restored = true;
    }
    for (_, p) in olds {
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    for p in tmps {
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(restored)
}

/// Copies the non-weight files (config, tokenizer, chat template, generation config) of a model
/// folder into `dest`, and writes a README.md model card that keeps the source's name, license and
/// the other fields GGUF has a home for (so `export-gguf` names the model, not `checkpoint`).
pub fn copy_metadata(source_dir: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let mut copied = copy_files(source_dir, dest)?;
    let config_path = source_dir.join("config.json");
    let config_json = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    // transformers' `generate` reads its defaults from generation_config.json; a source without
    // one gets what save_pretrained derives from config.json.
    let generation = dest.join(GENERATION_CONFIG);
    if !generation.exists() {
        let mut g = serde_json::json!({ "_from_model_config": true });
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config_json.get(key).filter(|v| !v.is_null()) {
                g[key] = v.clone();
            }
        }
        let text = serde_json::to_string_pretty(&g).unwrap_or_default();
        crate::fsutil::write_atomic(&generation, text.as_bytes())?;
        copied.push(generation);
    }
    let fields = crate::hf::card::folder_card(source_dir, &config_json)?;
    let body = format!(
        "Fine-tuned with wgspin from `{}`.\n",
        source_dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let card = dest.join(crate::hf::card::CARD_FILE);
    crate::fsutil::write_atomic(&card, crate::hf::card::card_text(&fields, &body).as_bytes())?;
    copied.push(card);
    Ok(copied)
}

fn copy_files(source_dir: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let mut copied = vec![];
    let entries = std::fs::read_dir(source_dir).map_err(|e| Error::io(source_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(source_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_file() || !is_metadata(&name) {
            continue;
        }
        let to = dest.join(&name);
        std::fs::copy(entry.path(), &to).map_err(|e| Error::io(entry.path(), e))?;
        copied.push(to);
    }
    Ok(copied)
}

//! File helpers shared by every writer: outputs go to a temporary file in the same folder and are
//! renamed into place, so an interrupted run never leaves a corrupt or half-written file behind;
//! and the one bounded reader of metadata text.
//!
//! Kept rather than `tempfile::NamedTempFile::persist`: that crate is only a dev-dependency here,
//! `persist` does not fsync before the rename (a crash after it can leave an empty file under the
//! final name on some file systems), and writers that stream through a library call
//! (`safetensors::serialize_to_file`) need a path, not an open handle.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Temporary sibling of `path` (same folder, so the rename stays on one file system).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` atomically through `write`, which creates and fills the temporary file it is
/// given (for writers that open the file themselves); then fsync + rename. The temporary file is
/// removed if anything fails.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        (|| {
            // Write access: Windows flushes a file only through a handle that may write it.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)?
                .sync_all()?;
            std::fs::rename(&tmp, path)
        })()
        .map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically (temp file + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Fills a fresh folder beside `dest` with `fill` and flushes it to disk, then swaps it in for
/// `dest`, so neither a crash nor a power loss leaves a half-written checkpoint under `dest` (see
/// `load::checkpoint::recover` for a crash inside the swap).
pub fn replace_folder(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dest.exists() && !dest.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a file, not a folder; it is left as it is: choose another output folder",
            dest.display()
        )));
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| fill(&tmp))
        .and_then(|()| sync_tree(&tmp));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Two renames (Windows cannot rename over a folder); at every instant one complete
    // checkpoint exists under `dest` or `old`.
    if dest.exists() {
        std::fs::rename(dest, &old).map_err(|e| Error::io(dest, e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    // The new checkpoint's name on disk before the previous copy goes.
    sync_dir(parent);
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Flushes every file under `dir` to disk, then the folders themselves (their entries), so a
/// folder about to be renamed into place is complete on disk before the rename can be. Folders
/// are synced where the OS allows opening one (not on Windows, whose renames are journaled
/// metadata anyway).
pub fn sync_tree(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            // Write access: Windows flushes a file only through a handle that may write it.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Flushes a folder's entries (a rename or new file in it) where the OS supports it; best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The names in folder `dir` that are not hidden (dot files: locks, `.DS_Store`, a crashed save's
/// leftovers), sorted; empty when `dir` does not exist.
pub fn visible_entries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The first few of `names` for a message ("a, b, c, d, e, ...").
pub fn listing(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = if names.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    format!("{}{more}", shown.join(", "))
}

/// `path` with `suffix` appended to its file name (`gen.jsonl` → `gen.jsonl.lock`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Largest metadata text read whole (config.json, tokenizer files, chat templates, --config): the
/// biggest real tokenizer.json files are tens of MB.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// `std::fs::read_to_string`, but refusing a file past [`MAX_TEXT_BYTES`] instead of reading it
/// all (`/dev/zero` as a config.json would otherwise fill memory).
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TEXT_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TEXT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB, too large for a model's metadata file",
                MAX_TEXT_BYTES >> 20
            ),
        ));
    }
    Ok(text)
}

/// The JSON document in `path`; errors name the file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_text(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

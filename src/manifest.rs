//! What made an output, and who is writing it: the identity of a run's model and data (content
//! hashes, so a file changed in place counts as changed) that a resume or rerun compares before
//! touching anything, and an exclusive lock per output, so two processes never write one folder.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The lock file inside an output folder (or beside an output file, `<file>.lock`).
pub const LOCK_FILE: &str = ".wgspin.lock";

/// Exclusive use of an output; released when dropped (or when the process dies). Dropping it
/// also removes the lock file, and the folder it was created in when nothing else was written
/// there, so a command that refuses leaves no trace in a folder it never wrote.
#[derive(Debug)]
pub struct OutputLock {
    file: Option<File>,
    path: PathBuf,
    /// The folders this lock created to hold its file, deepest first (the output folder and any
    /// of its parents that did not exist yet).
    created: Vec<PathBuf>,
}

impl OutputLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still held, so no other process can take the lock of a file that is
        // about to vanish and believe it owns the output (see the check after `try_lock`).
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
        remove_empty(&self.created);
    }
}

/// Removes `dirs` (deepest first) while they are empty; stops at the first that is not, as it
/// should when the run wrote anything there.
fn remove_empty(dirs: &[PathBuf]) {
    for dir in dirs {
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
    }
}

/// Locks `lock_path` (created if needed) for this process, or says which process holds it.
pub fn lock(lock_path: &Path, what: &Path) -> Result<OutputLock> {
    let parent = lock_path.parent().filter(|p| !p.as_os_str().is_empty());
    let created: Vec<PathBuf> = parent
        .map(|p| {
            p.ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .map(Path::to_path_buf)
                .collect()
        })
        .unwrap_or_default();
    if let Some(parent) = parent {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    // A holder that finished removes the file while still holding it; a process that opened the
    // old file just before then gets its lock on a file no longer there, so it opens again.
    for _ in 0..8 {
        let lock = match lock_once(lock_path, what) {
            Ok(lock) => lock,
            Err(e) => {
                remove_empty(&created);
                return Err(e);
            }
        };
        if is_at(&lock, lock_path) {
            return Ok(OutputLock {
                file: Some(lock),
                path: lock_path.to_path_buf(),
                created,
            });
        }
    }
    remove_empty(&created);
    Err(Error::Invalid(format!(
        "{}: its lock file keeps disappearing; another program is deleting it",
        lock_path.display()
    )))
}

/// Whether the open `file` is the one `path` names now (not one removed from under it, with a
/// new file made under the name since). Unix compares device and inode; Windows keeps a removed
/// file's name taken while any handle is open (a new one cannot be made there), so the name
/// existing is enough.
fn is_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.is_file()
    }
}

fn lock_once(lock_path: &Path, what: &Path) -> Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .map_err(|e| Error::io(lock_path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = holder(&mut file);
            return Err(Error::Invalid(format!(
                "{} is in use by {who}; wait for it to finish or choose another --out",
                what.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(lock_path, e)),
    }
    // The holder's pid, for the message another process prints (where it can read a locked
    // file: not on Windows, whose lock covers reads too).
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(file)
}

/// Who holds the lock `file` (its holder writes its pid into it), for messages; on Windows, whose
/// lock covers reads too, only "another wgspin process".
fn holder(file: &mut File) -> String {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    match pid.trim() {
        "" => "another wgspin process".to_string(),
        pid => format!("wgspin process {pid}"),
    }
}

/// Refuses `path` (an input) while a wgspin process holds its output lock (`<path>.lock`, taken
/// by `generate` for the file it writes): reading it then would see only the rows written so far.
pub fn refuse_if_being_written(path: &Path) -> Result<()> {
    let lock_path = crate::fsutil::with_suffix(path, ".lock");
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
    else {
        return Ok(());
    };
    match file.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = holder(&mut file);
            Err(Error::Invalid(format!(
                "{} is still being written by {who} (it holds {}); wait for it to finish, \
                 then run this again",
                path.display(),
                lock_path.display()
            )))
        }
        // Free (a writer that died leaves its file unlocked) or not lockable here: not written now.
        _ => Ok(()),
    }
}

/// Locks output folder `dir` (created if needed).
pub fn lock_dir(dir: &Path) -> Result<OutputLock> {
    lock(&dir.join(LOCK_FILE), dir)
}

/// Locks output file `file` through `<file>.lock` beside it.
pub fn lock_file(file: &Path) -> Result<OutputLock> {
    lock(&crate::fsutil::with_suffix(file, ".lock"), file)
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// What a model's identity hashes, as the loading layer decides it (`load::ModelSource::files`):
/// the files loading reads, and for an adapter the files of its base.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The folder or file `--model` named.
    pub path: PathBuf,
    /// The files of a folder that loading reads (ignored for a file, which is hashed whole).
    pub read: Vec<PathBuf>,
    /// An adapter's base: an adapter is a model only together with its base.
    pub base: Option<Box<ModelFiles>>,
}

/// Identity of a model: a SHA-256 of the files loading it reads (config, tokenizer and weight
/// files of a folder; the whole file of a GGUF; an adapter's two files and its base's identity).
/// Anything else in the folder (a `generate --out` beside it, notes) leaves it unchanged.
pub fn model_identity(model: &ModelFiles) -> Result<Value> {
    identity(model, Hashed::Read)
}

/// Which files of a model folder an identity hashes.
#[derive(Clone, Copy, PartialEq)]
enum Hashed {
    /// What loading reads (identities marked `"files": "read"`).
    Read,
    /// Every `*.safetensors` and `*.json` (but trainer_state.json) and chat_template.jinja: the
    /// identities of runs made before the mark, which a resume must still recognise.
    Legacy,
}

fn identity(model: &ModelFiles, hashed: Hashed) -> Result<Value> {
    let path = model.path.as_path();
    let mut hasher = Sha256::new();
    if path.is_file() {
        hash_file(&mut hasher, path)?;
    } else {
        let mut files = match hashed {
            Hashed::Read => model.read.clone(),
            Hashed::Legacy => std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    p.is_file()
                        && (name.ends_with(".safetensors")
                            || name.ends_with(".json") && name != "trainer_state.json"
                            || name == "chat_template.jinja")
                })
                .collect(),
        };
        files.sort();
        files.dedup();
        for f in &files {
            hasher.update(
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .as_bytes(),
            );
            hash_file(&mut hasher, f)?;
        }
    }
    // The path is left out on purpose: `./m` and `m`, or a moved folder, are the same model.
    let mut id = json!({ "sha256": format!("{:x}", hasher.finalize()) });
    if hashed == Hashed::Read {
        id["files"] = "read".into();
    }
    if let Some(base) = &model.base {
        id["base"] = identity(base, hashed)?;
    }
    Ok(id)
}

/// `now` (the [`model_identity`] of `model`), or the identity a run made before identities were
/// marked recorded as `saved`, when that is what `model` still hashes to by the old rule: a resume
/// of such a run compares like with like instead of refusing an unchanged model.
pub fn identity_for(model: &ModelFiles, now: Value, saved: Option<&Value>) -> Result<Value> {
    match saved {
        Some(s) if s != &now && s.get("files").is_none() => {
            let legacy = identity(model, Hashed::Legacy)?;
            Ok(if &legacy == s { legacy } else { now })
        }
        _ => Ok(now),
    }
}

/// What a command writes into its output folder: the file that marks a folder as one of its runs
/// and the entries a run creates, so that a typo in `--out` is refused instead of writing into
/// someone's folder, and `--overwrite` removes exactly an earlier run's entries, never a file
/// wgspin did not write.
#[derive(Debug)]
pub struct RunLayout {
    /// The commands that write this layout, for messages ("`wgspin train` or `sft`").
    pub writer: &'static str,
    /// A file only a run of this layout writes (early, before its long stages).
    pub marker: &'static str,
    /// Entries a run writes: exact names, or prefixes ending in `*`.
    pub entries: &'static [&'static str],
}

/// The hidden record, in a run's output folder, of the entries the run created there: what
/// `--overwrite` removes. Names alone would also take a user's own `runs/` or `iter-old/`.
pub const WRITTEN_FILE: &str = ".wgspin-written.json";

/// The entries of `dir` its runs recorded as theirs; `None` when there is no record (a folder
/// written before the record existed).
fn written(dir: &Path) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(dir.join(WRITTEN_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

impl RunLayout {
    fn owns(&self, name: &str) -> bool {
        self.entries.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *e,
        })
    }

    /// Records that this run creates entry `name` of `dir`; called before the entry is written,
    /// so a run killed while writing it still owns what it left.
    pub fn claim(&self, dir: &Path, name: &str) -> Result<()> {
        debug_assert!(self.owns(name), "{name} is not an entry of {}", self.writer);
        let mut names = written(dir).unwrap_or_default();
        if names.insert(name.to_string()) {
            let text = serde_json::to_vec(&names).unwrap_or_default();
            crate::fsutil::write_atomic(&dir.join(WRITTEN_FILE), &text)?;
        }
        Ok(())
    }

    /// Makes output folder `dir` (locked by the caller) ready for a run. A folder with visible
    /// files but no run marker is refused, naming them; with `overwrite`, an earlier run's entries
    /// are removed (files of other origin in a run's folder are left alone). Nothing is removed
    /// when it refuses. Returns whether an earlier run was removed.
    pub fn prepare(&self, dir: &Path, overwrite: bool) -> Result<bool> {
        let shown = crate::fsutil::visible_entries(dir);
        if shown.is_empty() {
            return Ok(false);
        }
        if !dir.join(self.marker).is_file() {
            return Err(Error::Invalid(format!(
                "{} holds files that no {} wrote ({}); choose an empty or new --out \
                 (--overwrite only replaces an earlier wgspin run)",
                dir.display(),
                self.writer,
                crate::fsutil::listing(&shown)
            )));
        }
        if !overwrite {
            return Ok(false);
        }
        // A folder from before the record: its run's entries by name, as they were removed then.
        let ours = written(dir);
        let owned = |n: &String| match &ours {
            Some(names) => names.contains(n),
            None => self.owns(n),
        };
        for name in shown.iter().filter(|n| owned(n)) {
            let path = dir.join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
        let record = dir.join(WRITTEN_FILE);
        if record.exists() {
            std::fs::remove_file(&record).map_err(|e| Error::io(&record, e))?;
        }
        Ok(true)
    }
}

/// SHA-256 of serialisable content (the examples a run reads, whatever file they came from).
pub fn content_hash(value: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("{:x}", Sha256::digest(&bytes))
}

/// The keys of `saved` and `now` whose values differ, as "key: X there, Y now" (recursing into
/// objects so the message names `model.sha256`, not the whole record).
pub fn differences(saved: &Value, now: &Value) -> Vec<String> {
    fn walk(prefix: &str, saved: &Value, now: &Value, out: &mut Vec<String>) {
        match (saved, now) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(
                        &key,
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            (a, b) if a != b => out.push(format!("{prefix}: {a} there, {b} now")),
            _ => {}
        }
    }
    let mut out = vec![];
    walk("", saved, now, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let e = lock_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is in use by"), "{e}");
        // Windows locks the whole file: the pid cannot be read back there.
        #[cfg(unix)]
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(first);
        lock_dir(dir.path()).unwrap();
    }

    const LAYOUT: RunLayout = RunLayout {
        writer: "test",
        marker: "run.json",
        entries: &["run.json", "out.txt", "iter-*"],
    };

    #[test]
    fn prepare_refuses_foreign_folders_and_overwrites_only_its_own_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(!LAYOUT.prepare(d, true).unwrap(), "an empty folder is fine");
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = LAYOUT.prepare(d, true).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt") && e.contains("no test wrote"),
            "{e}"
        );
        assert!(d.join("notes.txt").is_file(), "nothing removed on refusal");

        std::fs::write(d.join("run.json"), "{}").unwrap();
        std::fs::write(d.join("out.txt"), "x").unwrap();
        std::fs::create_dir(d.join("iter-0")).unwrap();
        std::fs::write(d.join("iter-0").join("a"), "x").unwrap();
        assert!(
            !LAYOUT.prepare(d, false).unwrap(),
            "a run of ours is kept without --overwrite"
        );
        assert!(d.join("out.txt").is_file());
        assert!(LAYOUT.prepare(d, true).unwrap());
        assert_eq!(crate::fsutil::visible_entries(d), vec!["notes.txt"]);
    }

    #[test]
    fn overwrite_removes_only_what_the_record_claims() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["run.json", "out.txt"] {
            LAYOUT.claim(d, name).unwrap();
            std::fs::write(d.join(name), "x").unwrap();
        }
        // Named like a run's entry, but the user's: the run never claimed it.
        std::fs::create_dir(d.join("iter-7")).unwrap();
        assert!(LAYOUT.prepare(d, true).unwrap());
        assert_eq!(crate::fsutil::visible_entries(d), vec!["iter-7"]);
        assert!(!d.join(WRITTEN_FILE).exists(), "the record starts over too");
    }

    #[test]
    fn a_lock_leaves_no_trace_in_a_folder_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new");
        drop(lock_dir(&out.join("deeper")).unwrap());
        assert!(!out.exists(), "the folders made for the lock are gone");
        drop(lock_dir(&out).unwrap());
        assert!(!out.exists(), "the folder made for the lock is gone");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("kept"), "x").unwrap();
        drop(lock_dir(&out).unwrap());
        assert_eq!(crate::fsutil::visible_entries(&out), vec!["kept"]);
        assert!(!out.join(LOCK_FILE).exists());
    }

    #[test]
    fn an_input_being_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("gen.jsonl");
        std::fs::write(&data, "{}\n").unwrap();
        refuse_if_being_written(&data).unwrap();
        let held = lock_file(&data).unwrap();
        let e = refuse_if_being_written(&data).unwrap_err().to_string();
        assert!(e.contains("still being written"), "{e}");
        drop(held);
        refuse_if_being_written(&data).unwrap();
    }

    #[test]
    fn a_run_recorded_before_the_mark_still_recognises_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-bf16");
        for e in std::fs::read_dir(&fixture).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        // What loading reads of a plain folder: here, its files but the README.
        let read = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap() != "README.md")
                .collect()
        };
        let files = |d: &Path| ModelFiles {
            path: d.to_path_buf(),
            read: read(d),
            base: None,
        };
        let m = &files(dir.path());
        let old = identity(m, Hashed::Legacy).unwrap();
        let now = model_identity(m).unwrap();
        assert_ne!(old, now);
        assert_eq!(identity_for(m, now.clone(), Some(&old)).unwrap(), old);
        assert_eq!(identity_for(m, now.clone(), Some(&now)).unwrap(), now);
        // Changed since: the old rule no longer matches either, and the refusal shows the new.
        std::fs::write(m.path.join("config.json"), "{}").unwrap();
        let changed = model_identity(m).unwrap();
        assert_eq!(
            identity_for(m, changed.clone(), Some(&old)).unwrap(),
            changed
        );
    }

    #[test]
    fn differences_name_nested_keys() {
        let a = json!({"model": {"path": "m", "sha256": "1"}, "lr": 1});
        let b = json!({"model": {"path": "m", "sha256": "2"}, "lr": 1});
        assert_eq!(
            differences(&a, &b),
            vec!["model.sha256: \"1\" there, \"2\" now"]
        );
        assert!(differences(&a, &a).is_empty());
    }
}

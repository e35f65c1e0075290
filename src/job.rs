//! The skeleton the jobs (`train`/`sft`, `generate`, `spin`) share around their own loops: the
//! locked output folder checked against its command's layout, the record of what made a run
//! (model identity, data hash, settings) compared with the one a run already there saved, and the
//! JSON records written atomically. Each job keeps only what is its own: its loop, its files and
//! the words of its refusals.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::load::ModelSource;
use crate::manifest::{self, ModelFiles, OutputLock, RunLayout};

/// An output folder held for one run: locked for as long as this lives, so two processes never
/// write it, and owned by the command whose [`RunLayout`] it follows.
#[derive(Debug)]
pub struct RunFolder<'a> {
    pub dir: &'a Path,
    layout: &'a RunLayout,
    _lock: OutputLock,
}

impl<'a> RunFolder<'a> {
    /// Locks `dir` (created if needed) for a run of `layout`; nothing in it is checked yet.
    pub fn lock(dir: &'a Path, layout: &'a RunLayout) -> Result<Self> {
        Ok(Self {
            dir,
            layout,
            _lock: manifest::lock_dir(dir)?,
        })
    }

    /// Refuses a folder of foreign files; with `overwrite`, removes an earlier run's entries.
    /// See [`RunLayout::prepare`].
    pub fn prepare(&self, overwrite: bool) -> Result<bool> {
        self.layout.prepare(self.dir, overwrite)
    }

    /// Records `names` as this run's entries before they are written, so `--overwrite` removes
    /// them (and only them) later, even after a crash while writing.
    pub fn claim(&self, names: &[&str]) -> Result<()> {
        names
            .iter()
            .try_for_each(|n| self.layout.claim(self.dir, n))
    }

    /// Claims entry `name` and writes `value` there (see [`write_json`]).
    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> Result<()> {
        self.claim(&[name])?;
        write_json(&self.dir.join(name), value)
    }
}

/// The identity of the model a run starts from (see [`manifest::model_identity`]), hashed once.
pub struct ModelIdentity {
    files: ModelFiles,
    /// The identity by today's rule.
    pub now: Value,
}

impl ModelIdentity {
    /// Hashes the files loading `source` reads.
    pub fn of(source: &ModelSource) -> Result<Self> {
        let files = source.files()?;
        let now = manifest::model_identity(&files)?;
        Ok(Self { files, now })
    }

    /// The identity in the form `saved` (what a run already there recorded) compares with: a run
    /// made before identities were marked keeps its own rule.
    pub fn against(&self, saved: Option<&Value>) -> Result<Value> {
        manifest::identity_for(&self.files, self.now.clone(), saved)
    }
}

/// What differs between a saved record and this run's, as "key: X there, Y now; …"; `None` when
/// nothing does (the run may continue).
pub fn differences(saved: &Value, now: &Value) -> Option<String> {
    let diffs = manifest::differences(saved, now);
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

/// Writes `value` as pretty JSON to `path`, atomically (a crash leaves the old record or the new
/// one, never half of one).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    fsutil::write_atomic(path, text.as_bytes())
}

/// The JSON record at `path`; `None` when there is none. A record that does not parse is an
/// error naming it (it is a run's, and must not be taken for no run).
pub fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_each_changed_key_or_nothing() {
        let saved = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(differences(&saved, &saved), None);
        let now = json!({"a": 1, "b": {"c": 3}});
        assert_eq!(
            differences(&saved, &now).as_deref(),
            Some("b.c: 2 there, 3 now")
        );
    }

    #[test]
    fn a_missing_record_is_none_and_a_torn_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        assert!(read_json(&path).unwrap().is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(read_json(&path).is_err());
        write_json(&path, &json!({"x": 1})).unwrap();
        assert_eq!(read_json(&path).unwrap(), Some(json!({"x": 1})));
    }
}

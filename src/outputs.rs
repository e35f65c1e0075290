//! The one rule every command's outputs follow, checked before anything is locked, created or
//! removed: an output never is, contains or lies inside one of the command's inputs (the model's
//! files, an adapter's base, the data), with or without `--overwrite`; and an existing file or
//! folder that this command would replace is replaced only when `--overwrite` says so.
//!
//! Paths are compared after resolving them (symbolic links, `..`, relative to the working
//! folder), and for outputs that do not exist yet through their nearest existing ancestor, so
//! `./m`, `m/` and a link to `m` are one path.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// One input of a command: what the user passed, the flag it came through, and its resolved path.
#[derive(Debug, Clone)]
struct Input {
    what: String,
    given: PathBuf,
    resolved: PathBuf,
}

/// The inputs of one command, to check its outputs against.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    list: Vec<Input>,
}

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path`, read by the command as `what` (e.g. "--data").
    pub fn add(&mut self, what: &str, path: &Path) -> &mut Self {
        self.list.push(Input {
            what: what.to_string(),
            given: path.to_path_buf(),
            resolved: resolve(path),
        });
        self
    }

    /// Adds a model given as `flag`: its folder or GGUF file, and for a PEFT adapter folder also
    /// the base model it names (an adapter is a model only together with its base). A base that
    /// cannot be found is left to the loader, which says why.
    pub fn add_model(&mut self, flag: &str, path: &Path) -> &mut Self {
        self.add(flag, path);
        if crate::hf::adapter::is_adapter_dir(path)
            && let Ok(base) = crate::hf::adapter::Adapter::open(path).and_then(|a| a.base_path())
        {
            self.add(&format!("the base model of {flag}"), &base);
        }
        self
    }

    /// Refuses `out` (given as `flag`) when it is, contains or lies inside one of the inputs.
    pub fn check(&self, flag: &str, out: &Path) -> Result<()> {
        let target = resolve(out);
        for input in &self.list {
            let how = if target == input.resolved {
                "is"
            } else if input.resolved.starts_with(&target) {
                "contains"
            } else if target.starts_with(&input.resolved) {
                "lies inside"
            } else {
                continue;
            };
            return Err(Error::Invalid(format!(
                "{flag} {} {how} {} ({}), which this command reads; an output never replaces \
                 or writes into an input, with or without --overwrite: choose another {flag}",
                out.display(),
                input.given.display(),
                input.what
            )));
        }
        Ok(())
    }
}

/// Refuses to write file `out` (given as `flag`) over an existing entry unless `overwrite`: a
/// folder is never replaced by a file, and an existing file only with `--overwrite`.
pub fn check_file(flag: &str, out: &Path, overwrite: bool) -> Result<()> {
    if out.is_dir() {
        return Err(Error::Invalid(format!(
            "{flag} {} is a folder; {flag} names the file to write",
            out.display()
        )));
    }
    if out.exists() && !overwrite {
        return Err(Error::Invalid(format!(
            "{flag} {} exists; pass --overwrite to replace it, or choose another {flag}",
            out.display()
        )));
    }
    Ok(())
}

/// Refuses to write folder `out` (given as `flag`) over an existing entry: never over a file, and
/// over a folder with visible entries only with `overwrite` and when it is a folder of `kind`
/// (`is_kind` says whether it is, e.g. a model folder wgspin can load).
pub fn check_folder(
    flag: &str,
    out: &Path,
    overwrite: bool,
    kind: &str,
    is_kind: impl Fn(&Path) -> bool,
) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::Invalid(format!(
            "{flag} {} is a file; {flag} names the folder to write (the file is left as it is)",
            out.display()
        )));
    }
    let held = crate::fsutil::visible_entries(out);
    if held.is_empty() {
        return Ok(());
    }
    let listed: Vec<&str> = held.iter().take(5).map(String::as_str).collect();
    let more = if held.len() > listed.len() {
        ", ..."
    } else {
        ""
    };
    if !overwrite {
        return Err(Error::Invalid(format!(
            "{flag} {} already holds files ({}{more}); pass --overwrite to replace it, or \
             choose an empty or new {flag}",
            out.display(),
            listed.join(", ")
        )));
    }
    if !is_kind(out) {
        return Err(Error::Invalid(format!(
            "{flag} {} holds files that are not {kind} ({}{more}); --overwrite replaces only \
             {kind}: choose an empty or new {flag}",
            out.display(),
            listed.join(", ")
        )));
    }
    Ok(())
}

/// Whether `dir` looks like a Hugging Face model folder (what `merge` and `convert` write, and
/// what their `--overwrite` may replace): a config.json beside safetensors weights.
pub fn is_model_folder(dir: &Path) -> bool {
    let weights = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
    });
    dir.join("config.json").is_file() && weights
}

/// `path` made absolute and resolved: the nearest existing ancestor canonicalized (links and
/// `..` followed), the rest appended with `.` and `..` applied by name.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut existing = absolute.as_path();
    let mut rest = vec![];
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_contain_or_lie_inside_an_input_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("model.safetensors"), "x").unwrap();
        let data = dir.path().join("sft.jsonl");
        std::fs::write(&data, "{}").unwrap();
        let mut inputs = Inputs::new();
        inputs.add("--model", &model).add("--data", &data);

        let refused = |out: PathBuf, how: &str| {
            let e = inputs.check("--out", &out).unwrap_err().to_string();
            assert!(
                e.contains(how) && e.contains("--out"),
                "{}: {e}",
                out.display()
            );
        };
        refused(model.clone(), "is");
        refused(model.join("sub").join(".."), "is");
        refused(dir.path().to_path_buf(), "contains");
        refused(model.join("model.safetensors"), "lies inside");
        refused(model.join("new").join("deeper"), "lies inside");
        refused(data.clone(), "is");
        inputs.check("--out", &dir.path().join("m2")).unwrap();
        inputs
            .check("--out", &dir.path().join("sft.jsonl.out"))
            .unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_an_input_is_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        let mut inputs = Inputs::new();
        inputs.add("--model", &model);
        assert!(inputs.check("--out", &link.join("gen.jsonl")).is_err());
    }

    #[test]
    fn existing_files_and_folders_need_overwrite_and_the_right_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "mine").unwrap();
        assert!(check_file("--out", &file, false).is_err());
        check_file("--out", &file, true).unwrap();
        assert!(check_file("--out", dir.path(), true).is_err());
        check_file("--out", &dir.path().join("new.gguf"), false).unwrap();

        let any = |_: &Path| true;
        let e = check_folder("--out", &file, true, "a model", any).unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
        assert!(check_folder("--out", dir.path(), false, "a model", any).is_err());
        check_folder("--out", dir.path(), true, "a model", any).unwrap();
        let none = |_: &Path| false;
        let e = check_folder("--out", dir.path(), true, "a model folder", none).unwrap_err();
        assert!(e.to_string().contains("not a model folder"), "{e}");
        check_folder("--out", &dir.path().join("new"), false, "a model", none).unwrap();
    }
}

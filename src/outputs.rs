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
    /// the `base` model it names (an adapter is a model only together with its base;
    /// `load::source::adapter_base` finds it).
    pub fn add_model(&mut self, flag: &str, path: &Path, base: Option<&Path>) -> &mut Self {
        self.add(flag, path);
        if let Some(base) = base {
            self.add(&format!("the base model of {flag}"), base);
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

/// Refuses to write model folder `out` (given as `flag`, what `merge` and `convert` write) over
/// an existing entry: never over a file; over a folder with anything in it (hidden entries too:
/// a clone's `.git` is somebody's) only with `overwrite`, and only when everything there is a
/// Hugging Face model's file (config, tokenizer, card, weights): the folder is swapped whole, so
/// a file of other origin would go with it.
pub fn check_model_folder(flag: &str, out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::Invalid(format!(
            "{flag} {} is a file; {flag} names the folder to write (the file is left as it is)",
            out.display()
        )));
    }
    let mut held: Vec<String> = std::fs::read_dir(out)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    held.sort();
    if held.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::Invalid(format!(
            "{flag} {} already holds files ({}); pass --overwrite to replace it, or choose an \
             empty or new {flag}",
            out.display(),
            crate::fsutil::listing(&held)
        )));
    }
    let foreign: Vec<String> = held
        .into_iter()
        .filter(|n| !crate::hf::files::is_model_file(n))
        .collect();
    if !foreign.is_empty() {
        return Err(Error::Invalid(format!(
            "{flag} {} holds files that are not a Hugging Face model's ({}); --overwrite \
             replaces a model folder whole, so it would take them too: move them, or choose an \
             empty or new {flag}",
            out.display(),
            crate::fsutil::listing(&foreign)
        )));
    }
    Ok(())
}

/// `path` made absolute and resolved: the nearest existing ancestor canonicalized (links and
/// `..` followed), the rest appended with `.` and `..` applied by name. A link whose target does
/// not exist yet resolves to that target (writing through it creates the target).
pub fn resolve(path: &Path) -> PathBuf {
    resolve_within(path, 8)
}

fn resolve_within(path: &Path, links: usize) -> PathBuf {
    if links > 0
        && path.canonicalize().is_err()
        && let Ok(target) = std::fs::read_link(path)
    {
        let parent = path.parent().unwrap_or(Path::new(""));
        return resolve_within(&parent.join(target), links - 1);
    }
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

        // The relation, spaced as the message words it (" is " is no other word's part).
        let refused = |out: PathBuf, how: &str| {
            let e = inputs.check("--out", &out).unwrap_err().to_string();
            let how = format!(" {how} ");
            assert!(
                e.contains(&how) && e.contains("--out"),
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

    #[cfg(unix)]
    #[test]
    fn a_dangling_link_into_an_input_is_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let link = dir.path().join("gen.jsonl");
        std::os::unix::fs::symlink(model.join("gen.jsonl"), &link).unwrap();
        let mut inputs = Inputs::new();
        inputs.add("--model", &model);
        let e = inputs.check("--out", &link).unwrap_err().to_string();
        assert!(e.contains("lies inside"), "{e}");
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

        let e = check_model_folder("--out", &file, true).unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        check_model_folder("--out", &model, false).unwrap();
        // Hidden entries count: a folder holding only `.git` is not empty.
        std::fs::create_dir(model.join(".git")).unwrap();
        let e = check_model_folder("--out", &model, false).unwrap_err();
        assert!(e.to_string().contains(".git"), "{e}");
        std::fs::remove_dir(model.join(".git")).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "README.md",
            "tokenizer.json",
        ] {
            std::fs::write(model.join(f), "x").unwrap();
        }
        assert!(check_model_folder("--out", &model, false).is_err());
        check_model_folder("--out", &model, true).unwrap();
        std::fs::write(model.join("notes.txt"), "mine").unwrap();
        let e = check_model_folder("--out", &model, true).unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        check_model_folder("--out", &dir.path().join("new"), false).unwrap();
    }
}

//! Hugging Face Hub datasets: `--data ORG/NAME[@REVISION][:SPLIT]` resolved to the split's files
//! in the Hub's cache (`datasets--ORG--NAME/{blobs,refs,snapshots}`, as `huggingface_hub` lays it
//! out), downloading the ones the cache lacks unless offline.
//!
//! Which files hold the split is `data_files.rs`'s answer from the repo's file list and its dataset
//! card. Online the list comes from the Hub (one request), the card and the split's shards are
//! downloaded when missing (resumed after an interruption), and a Hub that cannot be reached
//! leaves the cached snapshot usable. Offline (`HF_HUB_OFFLINE=1`) the cached snapshot's own files
//! are the list; a split whose shards are numbered (`-00001-of-00003`) must have all of them.
//! Only the asked split is fetched. `@refs/convert/parquet` reads the Parquet the Hub converts every
//! dataset to (for a dataset stored as CSV, say).

use std::path::{Path, PathBuf};

use super::data_files::{CONVERTED, Layout, SplitFiles, converted_layout};
use super::hub::{
    HubEvent, HubId, HubSettings, RepoKind, api_repo, cached_snapshot, fetch, hub_error, is_commit,
    is_unreachable, parse_id,
};
use crate::error::{Error, Result};

const CARD: &str = "README.md";
const KIND: RepoKind = RepoKind::Dataset;

/// A dataset on the Hub, its revision and the split named in the flag, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataId {
    pub id: HubId,
    pub split: Option<String>,
}

/// `ORG/NAME[@REVISION][:SPLIT]`; `None` for anything else (a path).
pub fn parse_data_id(arg: &str) -> Option<DataId> {
    let (repo, split) = match arg.rsplit_once(':') {
        Some((repo, split)) => (repo, Some(split)),
        None => (arg, None),
    };
    let split_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if split.is_some_and(|s| !split_ok(s)) {
        return None;
    }
    // A missing `dir/rows.jsonl` is a mistyped path, not a dataset to ask the Hub for.
    if split.is_none()
        && [".jsonl", ".json", ".parquet"]
            .iter()
            .any(|e| repo.ends_with(e))
    {
        return None;
    }
    parse_id(repo).map(|id| DataId {
        id,
        split: split.map(str::to_string),
    })
}

/// A split resolved to local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubData {
    pub id: HubId,
    /// The commit the files are from.
    pub commit: String,
    /// The card's subset (`config_name`), when the card has `configs`.
    pub subset: Option<String>,
    pub split: String,
    /// The snapshot folder holding the files.
    pub snapshot: PathBuf,
    /// The split's files, in reading order.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Display for HubData {
    /// `ORG/NAME@COMMIT:SPLIT` (with `[SUBSET]` when the card has several), what a run records.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.id.repo, self.commit, self.split)?;
        match &self.subset {
            Some(s) if s != "default" => write!(f, " (subset {s})"),
            _ => Ok(()),
        }
    }
}

/// The dataset's folder in the Hub cache (whether or not it is there).
pub fn cache_dir(id: &HubId, settings: &HubSettings) -> PathBuf {
    super::hub::repo_dir(&settings.cache, id, KIND)
}

/// The files of split `split` (else the one the flag named, else the default split) of subset
/// `subset` of dataset `data`.
pub fn resolve_dataset(
    data: &DataId,
    split: Option<&str>,
    subset: Option<&str>,
    settings: &HubSettings,
    report: &mut dyn FnMut(HubEvent),
) -> Result<HubData> {
    let id = &data.id;
    let split = match (split, data.split.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::Invalid(format!(
                "--split {a} and --data {}:{b} name different splits; give one",
                id.repo
            )));
        }
        (a, b) => a.or(b),
    };
    let invalid = |m: String| Error::Invalid(format!("dataset {id}: {m}"));
    let cached = cached_snapshot(&settings.cache, id, KIND);
    // Offline, or with the Hub out of reach: the snapshot's own files are the repo.
    let from_cache = |snapshot: PathBuf| -> Result<HubData> {
        let files = list_files(&snapshot)?;
        let card = read_card(&snapshot.join(CARD))?;
        let not_cached = |m: String| {
            invalid(format!(
                "{m} in the cached snapshot {} (only what was downloaded is there); run without \
                 HF_HUB_OFFLINE to download the split",
                snapshot.display()
            ))
        };
        let layout = layout(id, &files, card.as_deref(), subset).map_err(not_cached)?;
        let chosen = layout.split(split).map_err(not_cached)?;
        if let Some(missing) = missing_shard(&chosen.files) {
            return Err(invalid(format!(
                "the cached snapshot {} has only some shards of split {:?} ({missing}); download it again \
                 without HF_HUB_OFFLINE",
                snapshot.display(),
                chosen.name
            )));
        }
        Ok(finish(id, &layout, chosen, snapshot))
    };
    if settings.offline || settings.datasets_offline {
        let Some(snapshot) = cached else {
            return Err(Error::Invalid(format!(
                "dataset {id} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set: download it \
                 first (`hf download {} --repo-type dataset --revision {}`; `huggingface-cli download` in older \
                 huggingface_hub; or run without HF_HUB_OFFLINE), or set HF_HUB_CACHE / HF_HOME to the cache \
                 that holds it",
                settings.cache.display(),
                id.repo,
                id.revision
            )));
        };
        return from_cache(snapshot);
    }
    let repo = api_repo(id, settings, KIND)?;
    let info = match repo.info() {
        Ok(info) => info,
        Err(e) if is_unreachable(&e) => {
            let Some(snapshot) = cached else {
                return Err(hub_error(id, settings, KIND, e));
            };
            report(HubEvent::CacheFallback {
                reason: e.to_string(),
            });
            return from_cache(snapshot).map_err(|cached| {
                Error::Invalid(format!(
                    "the Hub at {} cannot be reached ({e}), and the cache cannot serve it: {cached}",
                    settings.endpoint
                ))
            });
        }
        Err(e) => return Err(hub_error(id, settings, KIND, e)),
    };
    let listed: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    if !is_commit(&info.sha) {
        return Err(invalid(format!(
            "the Hub at {} answered with {:?} as the commit, which is not a commit hash",
            settings.endpoint, info.sha
        )));
    }
    let snapshot = super::hub::repo_dir(&settings.cache, id, KIND)
        .join("snapshots")
        .join(&info.sha);
    let get = |file: &str, report: &mut dyn FnMut(HubEvent)| {
        if !safe_relative(file) {
            return Err(invalid(format!(
                "the repo lists a file {file:?} that is not a plain relative path; refusing to download it"
            )));
        }
        fetch(&repo, &snapshot, file, report).map_err(|e| hub_error(id, settings, KIND, e))
    };
    let card = match listed.iter().any(|f| f == CARD) {
        true => read_card(&get(CARD, report)?)?,
        false => None,
    };
    let layout = layout(id, &listed, card.as_deref(), subset).map_err(invalid)?;
    let chosen = layout.split(split).map_err(invalid)?;
    for f in &chosen.files {
        get(f, report)?;
    }
    // Each download lands under the commit its own request saw: a branch that moved meanwhile
    // leaves this snapshot short.
    if let Some(f) = chosen.files.iter().find(|f| !snapshot.join(f).is_file()) {
        return Err(invalid(format!(
            "the revision moved while downloading ({f} is not in snapshot {}); run again",
            info.sha
        )));
    }
    Ok(finish(id, &layout, chosen, snapshot))
}

/// The splits of `id`'s revision: the Hub's Parquet conversion has its own layout.
fn layout(
    id: &HubId,
    files: &[String],
    card: Option<&str>,
    subset: Option<&str>,
) -> std::result::Result<Layout, String> {
    if id.revision == CONVERTED {
        converted_layout(files, subset)
    } else {
        super::data_files::layout(files, card, subset)
    }
}

/// The resolved split, its files as local paths.
fn finish(id: &HubId, layout: &Layout, chosen: SplitFiles, snapshot: PathBuf) -> HubData {
    let commit = snapshot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    HubData {
        id: id.clone(),
        commit,
        subset: layout.subset.clone(),
        split: chosen.name,
        files: chosen
            .files
            .iter()
            .map(|f| f.split('/').fold(snapshot.clone(), |p, s| p.join(s)))
            .collect(),
        snapshot,
    }
}

/// A repo file name that stays inside the snapshot folder on every platform: relative segments,
/// none empty, `.` or `..`, and no `\`, `:` or control characters (a drive, a stream, a way out);
/// nor `#`, `?` or `%`, which the download URL would not carry as written.
fn safe_relative(name: &str) -> bool {
    name.split('/').all(|s| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && !s
                .chars()
                .any(|c| matches!(c, '\\' | ':' | '#' | '?' | '%') || c.is_control())
    })
}

/// The first shard number missing from files named `NAME-0000K-of-0000N…`, as `K of N`.
fn missing_shard(files: &[String]) -> Option<String> {
    let re = regex::Regex::new(r"^(.*)-(\d{5})-of-(\d{5})[^/]*$").expect("a valid regex");
    let mut groups: std::collections::BTreeMap<(String, usize), Vec<usize>> = Default::default();
    for f in files {
        if let Some(c) = re.captures(f) {
            let (Ok(k), Ok(n)) = (c[2].parse::<usize>(), c[3].parse::<usize>()) else {
                continue;
            };
            groups.entry((c[1].to_string(), n)).or_default().push(k);
        }
    }
    groups.into_iter().find_map(|((name, n), have)| {
        (0..n)
            .find(|k| !have.contains(k))
            .map(|k| format!("{name}-{k:05}-of-{n:05} is missing"))
    })
}

/// Every file under `snapshot`, as repo-relative `/`-separated names (hidden entries skipped).
fn list_files(snapshot: &Path) -> Result<Vec<String>> {
    let mut out = vec![];
    let mut stack = vec![(snapshot.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel = format!("{prefix}{name}");
            // Follows the snapshot's links into blobs/.
            if path.is_dir() {
                stack.push((path, format!("{rel}/")));
            } else if path.is_file() {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The dataset card's text, if there is one.
fn read_card(path: &Path) -> Result<Option<String>> {
    if !path.is_file() {
        return Ok(None);
    }
    crate::fsutil::read_text(path)
        .map(Some)
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ids_parse_and_paths_do_not() {
        let d = parse_data_id("HuggingFaceH4/ultrachat_200k:train_sft").unwrap();
        assert_eq!(d.id.repo, "HuggingFaceH4/ultrachat_200k");
        assert_eq!(
            (d.id.revision.as_str(), d.split.as_deref()),
            ("main", Some("train_sft"))
        );
        let d = parse_data_id("org/name@v1.0:test").unwrap();
        assert_eq!(
            (d.id.revision.as_str(), d.split.as_deref()),
            ("v1.0", Some("test"))
        );
        assert_eq!(parse_data_id("org/name").unwrap().split, None);
        for path in [
            "data/train.jsonl",
            "out/pairs.parquet",
            "C:\\data\\x.jsonl",
            "C:/data/train.jsonl",
            "data.jsonl",
            "a/b:",
            "a/b:x/y",
            "./a/b",
        ] {
            assert_eq!(parse_data_id(path), None, "{path}");
        }
    }

    #[test]
    fn repo_names_stay_inside_the_snapshot() {
        assert!(safe_relative("data/train-00000-of-00001.parquet"));
        for bad in [
            "../x", "a//b", "/abs", "C:x", "a\\b", "a/./b", "a/\n", "a#b", "a%20b", "a?b",
        ] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn numbered_shards_must_all_be_there() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            missing_shard(&f(&[
                "d/t-00000-of-00002-a.parquet",
                "d/t-00001-of-00002-b.parquet"
            ])),
            None
        );
        let m = missing_shard(&f(&[
            "d/t-00000-of-00003-a.parquet",
            "d/t-00002-of-00003-b.parquet",
        ]))
        .unwrap();
        assert!(m.contains("00001-of-00003"), "{m}");
    }
}

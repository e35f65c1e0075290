//! Hugging Face Hub model ids: `--model ORG/NAME[@REVISION]` resolved to a folder of the Hub's
//! cache, the layout Python's `huggingface_hub` writes (`models--ORG--NAME/{blobs,refs,snapshots}`),
//! so a model downloaded by either is found by both. Datasets (`--data`) share the cache, the
//! settings, the downloads and the errors: see `hub_data.rs`.
//!
//! Offline (`HF_HUB_OFFLINE=1`) the snapshot of the revision must already hold every file a model
//! needs and nothing touches the network. Online the repo's file list is asked for once; files the
//! cached snapshot lacks are downloaded (through the `hf-hub` crate: a `.part` file resumed with a
//! range request after an interruption, then renamed into the cache) and a complete cached snapshot
//! is used when the Hub cannot be reached. Only what wgspin reads is fetched: config, tokenizer,
//! chat template and safetensors (sharded or not); a repo with pickle weights only is refused
//! before anything downloads.
//!
//! Settings come from the environment as `huggingface_hub` reads them: `HF_HUB_CACHE` (else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`), `HF_ENDPOINT`, `HF_TOKEN` (else the token file
//! `huggingface-cli login` writes), `HF_HUB_OFFLINE`.

use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// Files a model folder needs.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json"];
/// Files read when present.
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
];
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// What a repo holds, as the Hub's URLs and the cache's folder names tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn repo_type(self) -> RepoType {
        match self {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        }
    }

    /// The word for it in messages.
    pub fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}

/// A model repo on the Hub and the revision asked for (`main` when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// `ORG/NAME` or `ORG/NAME@REVISION` as the Hub spells repo ids (letters, digits, `-`, `_`, `.`;
/// no `..`); `None` for anything else (a path).
pub fn parse_id(arg: &str) -> Option<HubId> {
    let (repo, revision) = match arg.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (arg, "main"),
    };
    let part = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let (org, name) = repo.split_once('/')?;
    // A branch, tag or commit, possibly with `/` (`refs/pr/3`), but never a path out of `refs/`.
    let revision_ok = revision.split('/').all(part);
    (part(org) && part(name) && revision_ok).then(|| HubId {
        repo: repo.to_string(),
        revision: revision.to_string(),
    })
}

/// Where the Hub's files go and how to reach it.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The cache folder holding `models--ORG--NAME` folders.
    pub cache: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    /// `HF_DATASETS_OFFLINE`: what the `datasets` library reads for datasets alone.
    pub datasets_offline: bool,
}

impl HubSettings {
    /// The settings `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache = match (var("HF_HUB_CACHE"), var("HF_HOME")) {
            (Some(c), _) => PathBuf::from(c),
            (None, Some(home)) => PathBuf::from(home).join("hub"),
            (None, None) => Cache::default().path().clone(),
        };
        let flag = |k: &str| {
            var(k).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
            })
        };
        let offline = flag("HF_HUB_OFFLINE");
        // huggingface_hub's order: HF_TOKEN, then the file `huggingface-cli login` writes.
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| {
            match var("HF_HOME") {
                Some(home) => PathBuf::from(home),
                None => Cache::default()
                    .path()
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            }
            .join("token")
        });
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                crate::fsutil::read_text(&token_file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        Self {
            cache,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token,
            offline,
            datasets_offline: flag("HF_DATASETS_OFFLINE"),
        }
    }
}

/// What a resolution reports as it goes (the library does not print).
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// A file starts downloading: its name and size in bytes.
    Download { file: String, bytes: u64 },
    /// Bytes of the current file written so far (resumed bytes included).
    Progress { done: u64, total: u64 },
    /// The Hub could not be reached; the cached snapshot is used.
    CacheFallback { reason: String },
}

/// Turns hf-hub's progress calls into [`HubEvent`]s.
pub(crate) struct Reporter<'a> {
    report: &'a mut dyn FnMut(HubEvent),
    total: u64,
    done: u64,
    last: u64,
    started: bool,
}

impl Progress for Reporter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        // hf-hub calls this before the download and again at each (re)started range request.
        if !self.started {
            self.started = true;
            (self.report)(HubEvent::Download {
                file: filename.to_string(),
                bytes: size as u64,
            });
        }
        self.total = size as u64;
        self.done = 0;
        self.last = 0;
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        // A report per 5% (and the last byte) is enough for a progress line.
        if self.done - self.last >= self.total / 20 || self.done == self.total {
            self.last = self.done;
            (self.report)(HubEvent::Progress {
                done: self.done,
                total: self.total,
            });
        }
    }
    fn finish(&mut self) {}
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(report: &'a mut dyn FnMut(HubEvent)) -> Self {
        Self {
            report,
            total: 0,
            done: 0,
            last: 0,
            started: false,
        }
    }
}

/// `models--ORG--NAME` (or `datasets--ORG--NAME`) in `cache`.
pub(crate) fn repo_dir(cache: &Path, id: &HubId, kind: RepoKind) -> PathBuf {
    cache.join(Repo::new(id.repo.clone(), kind.repo_type()).folder_name())
}

/// The cached snapshot folder of `id`'s revision, if its ref (or the commit itself) is there.
pub(crate) fn cached_snapshot(cache: &Path, id: &HubId, kind: RepoKind) -> Option<PathBuf> {
    let dir = repo_dir(cache, id, kind);
    let commit = if is_commit(&id.revision) {
        id.revision.clone()
    } else {
        let text = crate::fsutil::read_text(&dir.join("refs").join(&id.revision)).ok()?;
        // A ref names a commit; anything else is not a snapshot folder's name.
        Some(text.trim().to_string()).filter(|c| is_commit(c))?
    };
    let snapshot = dir.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

/// Whether `s` is a commit hash (a snapshot folder's name; never a way out of the cache).
pub(crate) fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The weight files of a repo whose files are `has`, reading the shard index with `index`
/// (`None`: safetensors absent). Pickle-only repos are refused.
fn weight_files(
    id: &HubId,
    has: &dyn Fn(&str) -> bool,
    index: &mut dyn FnMut() -> Result<PathBuf>,
    listed: &[String],
) -> Result<Vec<String>> {
    if has(SINGLE) {
        return Ok(vec![SINGLE.into()]);
    }
    if has(INDEX) {
        let path = index()?;
        let text = crate::fsutil::read_text(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Invalid(format!("{}: no weight_map object", path.display())))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        if let Some(bad) = shards.iter().find(|s| parse_shard(s).is_none()) {
            return Err(Error::Invalid(format!(
                "{}: shard name {bad:?} is not a file of the repo folder",
                path.display()
            )));
        }
        let mut files = vec![INDEX.to_string()];
        files.extend(shards);
        return Ok(files);
    }
    let pickle = listed
        .iter()
        .any(|f| f.ends_with(".bin") || f.ends_with(".pt") || f.ends_with(".pth"));
    Err(Error::Invalid(if pickle {
        format!(
            "{id}: the repo has pickle weights only (.bin/.pt), which wgspin refuses to load (they can run code); \
             convert them to safetensors first (`save_pretrained(dir, safe_serialization=True)`)"
        )
    } else {
        format!("{id}: the repo has no model.safetensors or model.safetensors.index.json")
    }))
}

/// A shard name that stays inside the snapshot folder on every platform: relative segments of
/// letters, digits, `-`, `_` and `.` (no drive, no `:` stream, no `..`).
fn parse_shard(s: &str) -> Option<&str> {
    let segment = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (s.ends_with(".safetensors") && s.split('/').all(segment)).then_some(s)
}

/// The files of `id` a model folder needs, all present in `snapshot`; else the first missing.
fn complete(snapshot: &Path, id: &HubId) -> std::result::Result<(), String> {
    let has = |f: &str| snapshot.join(f).is_file();
    if let Some(missing) = REQUIRED.iter().find(|f| !has(f)) {
        return Err((*missing).to_string());
    }
    let listed: Vec<String> = vec![];
    let files = weight_files(id, &has, &mut || Ok(snapshot.join(INDEX)), &listed)
        .map_err(|e| e.to_string())?;
    match files.iter().find(|f| !has(f)) {
        Some(missing) => Err(missing.clone()),
        None => Ok(()),
    }
}

/// The cached snapshot of Hub model `id` when it holds every file a model needs (no network).
pub fn cached_model(id: &HubId, settings: &HubSettings) -> Option<PathBuf> {
    cached_snapshot(&settings.cache, id, RepoKind::Model).filter(|s| complete(s, id).is_ok())
}

/// The local folder of Hub model `id`: its cached snapshot, completed by downloads unless offline.
pub fn resolve_model(
    id: &HubId,
    settings: &HubSettings,
    report: &mut dyn FnMut(HubEvent),
) -> Result<PathBuf> {
    let cached = cached_snapshot(&settings.cache, id, RepoKind::Model);
    if settings.offline {
        let Some(snapshot) = cached else {
            return Err(Error::Invalid(format!(
                "{id} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set: download it first \
                 (`huggingface-cli download {}`, or run without HF_HUB_OFFLINE), or set HF_HUB_CACHE / HF_HOME \
                 to the cache that holds it",
                settings.cache.display(),
                id.repo
            )));
        };
        complete(&snapshot, id).map_err(|missing| {
            Error::Invalid(format!(
                "{id}: the cached snapshot {} lacks {missing} and HF_HUB_OFFLINE is set: download the model \
                 again without HF_HUB_OFFLINE",
                snapshot.display()
            ))
        })?;
        return Ok(snapshot);
    }
    let kind = RepoKind::Model;
    let repo = api_repo(id, settings, kind)?;
    let info = match repo.info() {
        Ok(info) => info,
        Err(e) if is_unreachable(&e) => {
            // As huggingface_hub does: a Hub that cannot be reached leaves the cache usable.
            if let Some(snapshot) = cached.filter(|s| complete(s, id).is_ok()) {
                report(HubEvent::CacheFallback {
                    reason: e.to_string(),
                });
                return Ok(snapshot);
            }
            return Err(hub_error(id, settings, kind, e));
        }
        Err(e) => return Err(hub_error(id, settings, kind, e)),
    };
    let listed: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    if !is_commit(&info.sha) {
        return Err(Error::Invalid(format!(
            "{id}: the Hub at {} answered with {:?} as the commit, which is not a commit hash",
            settings.endpoint, info.sha
        )));
    }
    let has = |f: &str| listed.iter().any(|l| l == f);
    let snapshot = repo_dir(&settings.cache, id, kind)
        .join("snapshots")
        .join(&info.sha);
    if let Some(missing) = REQUIRED.iter().find(|f| !has(f)) {
        return Err(Error::Invalid(format!(
            "{id}: the repo has no {missing}; wgspin needs a Hugging Face model folder (config.json, tokenizer.json, \
             tokenizer_config.json, safetensors)"
        )));
    }
    let fetch = |file: &str, report: &mut dyn FnMut(HubEvent)| {
        fetch(&repo, &snapshot, file, report).map_err(|e| hub_error(id, settings, kind, e))
    };
    let mut files: Vec<String> = REQUIRED.iter().map(|f| f.to_string()).collect();
    files.extend(OPTIONAL.iter().filter(|f| has(f)).map(|f| f.to_string()));
    for f in &files {
        fetch(f, report)?;
    }
    let weights = weight_files(id, &has, &mut || fetch(INDEX, report), &listed)?;
    for f in &weights {
        fetch(f, report)?;
    }
    // Each download lands under the commit its own request saw: a branch that moved meanwhile
    // leaves this snapshot short.
    complete(&snapshot, id).map_err(|missing| {
        Error::Invalid(format!(
            "{id}: the revision moved while downloading ({missing} is not in snapshot {}); run again",
            info.sha
        ))
    })?;
    Ok(snapshot)
}

/// The Hub's API for repo `id` of `kind`, with the settings' endpoint, token and cache.
pub(crate) fn api_repo(id: &HubId, settings: &HubSettings, kind: RepoKind) -> Result<ApiRepo> {
    let api = ApiBuilder::from_cache(Cache::new(settings.cache.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(false)
        .with_retries(3)
        .build()
        .map_err(|e| hub_error(id, settings, kind, e))?;
    Ok(api.repo(Repo::with_revision(
        id.repo.clone(),
        kind.repo_type(),
        id.revision.clone(),
    )))
}

/// `file` of the repo: the copy in `snapshot` when there is one, else downloaded into the cache
/// (resumed from a `.part` file a broken download left), reporting its progress.
pub(crate) fn fetch(
    repo: &ApiRepo,
    snapshot: &Path,
    file: &str,
    report: &mut dyn FnMut(HubEvent),
) -> std::result::Result<PathBuf, ApiError> {
    let local = snapshot.join(file);
    if local.is_file() {
        return Ok(local);
    }
    repo.download_with_progress(file, Reporter::new(report))
}

/// Whether `e` says the Hub could not be reached at all (not that it refused).
pub(crate) fn is_unreachable(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(inner) => matches!(**inner, ureq2::Error::Transport(_)),
        ApiError::TooManyRetries(inner) => is_unreachable(inner),
        _ => false,
    }
}

/// A Hub failure as an error that says what to do.
pub(crate) fn hub_error(id: &HubId, settings: &HubSettings, kind: RepoKind, e: ApiError) -> Error {
    let noun = kind.noun();
    let status = match &e {
        ApiError::RequestError(inner) => match &**inner {
            ureq2::Error::Status(code, _) => Some(*code),
            _ => None,
        },
        _ => None,
    };
    let message = match status {
        Some(401 | 403) => format!(
            "{id} at {} needs authorisation (a gated or private repo): {}",
            settings.endpoint,
            if settings.token.is_some() {
                format!(
                    "the token in HF_TOKEN (or the cached login) has no access to it; accept the {noun}'s terms on \
                     its page or use a token that has"
                )
            } else {
                "set HF_TOKEN to a token with access (https://huggingface.co/settings/tokens) or run `huggingface-cli login`"
                    .to_string()
            }
        ),
        Some(404) => format!(
            "{id}: no such {noun} or revision at {} (check the repo id and the @revision)",
            settings.endpoint
        ),
        _ if is_unreachable(&e) => format!(
            "{id}: the Hub at {} cannot be reached ({e}) and the cache at {} has no complete copy; connect, or set \
             HF_HUB_CACHE / HF_HOME to a cache that holds the {noun}",
            settings.endpoint,
            settings.cache.display()
        ),
        _ => format!("{id}: download from {} failed: {e}", settings.endpoint),
    };
    Error::Invalid(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_parse_and_paths_do_not() {
        let id = parse_id("Qwen/Qwen3-0.6B").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("Qwen/Qwen3-0.6B", "main")
        );
        let id = parse_id("google/gemma-3-1b-it@refs/pr/3").unwrap();
        assert_eq!(id.revision, "refs/pr/3");
        assert_eq!(parse_id("a/b@/etc/x"), None);
        assert_eq!(parse_id("a/b@refs//x"), None);
        for shard in [
            "C:/x/e.safetensors",
            "C:e.safetensors",
            "a/../b.safetensors",
            "x:y.safetensors",
            "/a.safetensors",
        ] {
            assert_eq!(parse_shard(shard), None, "{shard}");
        }
        assert!(parse_shard("model-00001-of-00002.safetensors").is_some());
        for path in [
            "models/x/y",
            "./a/b",
            "../a",
            "a/../b",
            "a\\b",
            "/abs/path",
            "C:/x",
            "model.gguf",
            "a/b@",
            "a/b@x..y",
            ".hidden/x",
        ] {
            assert_eq!(parse_id(path), None, "{path}");
        }
    }
}

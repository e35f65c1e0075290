//! Which files of a Hugging Face dataset repo hold a split, decided from the file list and the
//! dataset card as the `datasets` library decides it, so `--data ORG/NAME:SPLIT` reads what
//! `load_dataset("ORG/NAME", split=SPLIT)` reads.
//!
//! 1. The card's YAML front matter (`README.md`), when it has `configs:`: the subset (`config_name`)
//!    asked for, else the one marked `default: true`, else the one named `default`, else the only
//!    one; its `data_files` as a list of `{split, path}` (a path or a list of them, glob patterns),
//!    or a pattern or list of patterns for a single `train` split; `data_dir` as the patterns' base.
//! 2. Otherwise the file names: `data/SPLIT-00000-of-00003*.*` (any split name, as `push_to_hub`
//!    writes them), else the keyword rules for train / validation / test, a folder first
//!    (`valid/…`, `data/test-set/…`), then a file (`train.jsonl`, `data/test-0.parquet`): the
//!    word between `-._ `, digits, `/` or the name's ends; else every data file as `train`.
//!
//! Files of a split are sorted by path within each pattern (each keyword), as `datasets` sorts
//! them. Files `datasets` ignores (hidden, `__` folders, `README.md`, `dataset_info.json`, …) are
//! never data, and a split keeps only the files of the reader most of the subset's files need.

use glob::{MatchOptions, Pattern};
use regex::Regex;
use yaml_rust2::Yaml;

/// Data files of other types: a split of them is refused by name rather than read as nothing.
const OTHER: &[&str] = &[
    ".csv",
    ".tsv",
    ".txt",
    ".arrow",
    ".jsonl.gz",
    ".json.gz",
    ".jsonl.zst",
    ".csv.gz",
    ".zip",
    ".tar",
    ".tar.gz",
    ".xml",
    ".webdataset",
];
/// Longest front matter read from a dataset card (they list every feature and split; a few
/// hundred kilobytes for the largest).
const MAX_CARD_BYTES: usize = 4 << 20;
/// Deepest nesting read from a dataset card (real cards nest a feature's types a few levels).
const MAX_CARD_DEPTH: usize = 64;
/// The keywords of the splits the file-name rule finds, in `datasets`' order.
const KEYWORDS: &[(&str, &[&str])] = &[
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// A split and its files (repo-relative, `/`-separated), in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFiles {
    pub name: String,
    pub files: Vec<String>,
}

/// The splits of one subset of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The card's `config_name` used; `None` when the card has no `configs`.
    pub subset: Option<String>,
    pub splits: Vec<SplitFiles>,
}

impl Layout {
    /// The names of the splits, for messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.splits.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }

    /// Split `wanted`, or the default one (`train`, else the only split); errors list the splits.
    /// Its files are those of the reader most of the subset's files need (as `datasets` picks
    /// one builder and drops the files it does not read), which must be Parquet or JSON.
    pub fn split(&self, wanted: Option<&str>) -> Result<SplitFiles, String> {
        let found = match wanted {
            Some(name) => self.splits.iter().find(|s| s.name == name),
            None => self
                .splits
                .iter()
                .find(|s| s.name == "train")
                .or_else(|| (self.splits.len() == 1).then(|| &self.splits[0])),
        };
        let split = match (found, wanted) {
            (Some(s), _) => s,
            (None, Some(name)) => {
                return Err(format!(
                    "has no split {name:?}; its splits are: {}",
                    self.names()
                ));
            }
            (None, None) => {
                return Err(format!(
                    "has no train split; name one of its splits ({}) as ORG/NAME:SPLIT or with --split",
                    self.names()
                ));
            }
        };
        let mut counts: Vec<(&str, usize)> = vec![];
        for f in self.splits.iter().flat_map(|s| &s.files) {
            if let Some(fam) = family(f) {
                match counts.iter_mut().find(|(k, _)| *k == fam) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((fam, 1)),
                }
            }
        }
        // The most common reader; a tie goes to the one met first.
        let mut best: Option<(&str, usize)> = None;
        for (k, n) in counts {
            if best.is_none_or(|(_, m)| n > m) {
                best = Some((k, n));
            }
        }
        let Some((reader, _)) = best else {
            return Err(format!(
                "split {:?} matches no data file of the repo",
                split.name
            ));
        };
        if reader != "parquet" && reader != "json" {
            return Err(format!(
                "split {:?} is stored as {reader} files, which wgspin does not read; it reads Parquet \
                 (.parquet) and JSON (.jsonl, .json). The Hub's Parquet conversion of the dataset \
                 reads: ORG/NAME@{CONVERTED}:{}",
                split.name, split.name
            ));
        }
        let files: Vec<String> = split
            .files
            .iter()
            .filter(|f| family(f) == Some(reader))
            .cloned()
            .collect();
        if files.is_empty() {
            return Err(format!(
                "split {:?} has no {reader} file of the repo",
                split.name
            ));
        }
        Ok(SplitFiles {
            name: split.name.clone(),
            files,
        })
    }
}

/// The layout of a repo holding `files`, with dataset card `card` (the text of `README.md`) and
/// the subset asked for.
pub fn layout(
    files: &[String],
    card: Option<&str>,
    subset: Option<&str>,
) -> Result<Layout, String> {
    let configs = match card {
        Some(text) => configs(text)?,
        None => vec![],
    };
    if configs.is_empty() {
        // `datasets` names the one subset of a card without `configs` "default".
        if let Some(s) = subset.filter(|s| *s != "default") {
            return Err(format!(
                "has no subsets (its README.md lists no `configs`), so --subset {s:?} names nothing"
            ));
        }
        return Ok(Layout {
            subset: None,
            splits: inferred(files),
        });
    }
    let names = || {
        let n: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        n.join(", ")
    };
    let config = match subset {
        Some(s) => configs
            .iter()
            .find(|c| c.name == s)
            .ok_or_else(|| format!("has no subset {s:?}; its subsets are: {}", names()))?,
        None => configs
            .iter()
            .find(|c| c.default)
            .or_else(|| configs.iter().find(|c| c.name == "default"))
            .or_else(|| (configs.len() == 1).then(|| &configs[0]))
            .ok_or_else(|| {
                format!(
                    "has {} subsets and none is the default: pass --subset with one of {}",
                    configs.len(),
                    names()
                )
            })?,
    };
    let base = config
        .data_dir
        .as_deref()
        .map(|d| d.trim_start_matches("./").trim_matches('/'))
        .filter(|d| !d.is_empty() && *d != ".")
        .map(|d| format!("{d}/"))
        .unwrap_or_default();
    let splits = if config.data_files.is_empty() {
        let inside: Vec<String> = files
            .iter()
            .filter_map(|f| f.strip_prefix(&base).map(str::to_string))
            .collect();
        let mut splits = inferred(&inside);
        for s in &mut splits {
            s.files = s.files.iter().map(|f| format!("{base}{f}")).collect();
        }
        splits
    } else {
        config
            .data_files
            .iter()
            .map(|(name, patterns)| {
                let mut out: Vec<String> = vec![];
                for p in patterns {
                    let pattern = format!("{base}{}", p.trim_start_matches("./"));
                    let mut hits = matching(files, &pattern)?;
                    hits.sort();
                    for f in hits {
                        if !out.contains(&f) {
                            out.push(f);
                        }
                    }
                }
                Ok(SplitFiles {
                    name: name.clone(),
                    files: out,
                })
            })
            .collect::<Result<Vec<_>, String>>()?
    };
    Ok(Layout {
        subset: Some(config.name.clone()),
        splits,
    })
}

/// The revision where the Hub keeps every dataset converted to Parquet, whatever its own files.
pub const CONVERTED: &str = "refs/convert/parquet";

/// The layout of the [`CONVERTED`] revision: `SUBSET/SPLIT/0000.parquet`, no card.
pub fn converted_layout(files: &[String], subset: Option<&str>) -> Result<Layout, String> {
    let shard = Regex::new(r"^([^/]+)/([^/]+)/[^/]+\.parquet$").expect("a valid regex");
    let mut subsets: Vec<(String, Vec<SplitFiles>)> = vec![];
    let mut sorted: Vec<&String> = files.iter().collect();
    sorted.sort();
    for f in sorted {
        let Some(c) = shard.captures(f) else { continue };
        let at = match subsets.iter().position(|(n, _)| n == &c[1]) {
            Some(i) => i,
            None => {
                subsets.push((c[1].to_string(), vec![]));
                subsets.len() - 1
            }
        };
        add(&mut subsets[at].1, &c[2], f);
    }
    let names = || {
        let n: Vec<&str> = subsets.iter().map(|(n, _)| n.as_str()).collect();
        n.join(", ")
    };
    let at = match subset {
        Some(s) => subsets.iter().position(|(n, _)| n == s),
        None => subsets
            .iter()
            .position(|(n, _)| n == "default")
            .or_else(|| (subsets.len() == 1).then_some(0)),
    };
    let Some(at) = at else {
        return Err(match (subset, subsets.is_empty()) {
            (_, true) => format!("has no SUBSET/SPLIT/*.parquet files at {CONVERTED}"),
            (Some(s), false) => format!(
                "has no subset {s:?} at {CONVERTED}; its subsets are: {}",
                names()
            ),
            (None, false) => format!(
                "has several subsets at {CONVERTED}: pass --subset with one of {}",
                names()
            ),
        });
    };
    let (name, splits) = subsets.swap_remove(at);
    Ok(Layout {
        subset: Some(name),
        splits,
    })
}

/// The files that glob `pattern` matches (`*` within a path segment, `**` across them; a `**`
/// inside a segment, as fsspec reads it, is a `*`). A pattern without wildcards must name a file.
fn matching(files: &[String], pattern: &str) -> Result<Vec<String>, String> {
    let fixed: Vec<String> = pattern
        .split('/')
        .map(|seg| match seg {
            "**" => seg.to_string(),
            _ => seg.replace("**", "*"),
        })
        .collect();
    let fixed = fixed.join("/");
    let glob = Pattern::new(&fixed).map_err(|e| {
        format!("the README.md's data_files pattern {pattern:?} is not a glob: {e}")
    })?;
    let opts = MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let hits: Vec<String> = files
        .iter()
        .filter(|f| is_candidate(f) && glob.matches_with(f, opts))
        .cloned()
        .collect();
    if hits.is_empty() && !pattern.contains(['*', '?', '[']) {
        return Err(format!(
            "its README.md's data_files names {pattern:?}, which the repo does not have"
        ));
    }
    Ok(hits)
}

/// Splits from file names alone (no `configs` in the card).
fn inferred(files: &[String]) -> Vec<SplitFiles> {
    let data: Vec<&String> = files
        .iter()
        .filter(|f| is_candidate(f))
        .filter(|f| family(f).is_some())
        .collect();
    fn sorted(mut v: Vec<&String>) -> Vec<&String> {
        v.sort();
        v
    }
    let mut splits: Vec<SplitFiles> = vec![];
    // What `push_to_hub` writes: data/SPLIT-00000-of-00001-HASH.parquet, any split name.
    let sharded = Regex::new(r"^data/([^/]+?)-\d{5}-of-\d{5}[^/]*\.[^/]+$").expect("a valid regex");
    for f in sorted(data.clone()) {
        if let Some(c) = sharded.captures(f) {
            add(&mut splits, &c[1], f);
        }
    }
    if !splits.is_empty() {
        return splits;
    }
    // The keyword rules, a folder named for the split first, then a file: the word between
    // `-._ `, digits, `/` or the name's ends. Each keyword's files sorted, the keywords in order.
    let sep = "[-._ 0-9]";
    let in_dir = |word: &str| {
        Regex::new(&format!(r"(^|/)([^/]*{sep})?{word}({sep}[^/]*)?/")).expect("a valid regex")
    };
    let in_name =
        |word: &str| Regex::new(&format!(r"(^|/|{sep}){word}{sep}[^/]*$")).expect("a valid regex");
    for rule in [&in_dir as &dyn Fn(&str) -> Regex, &in_name] {
        for (split, words) in KEYWORDS {
            for word in *words {
                let re = rule(word);
                for f in sorted(data.iter().copied().filter(|f| re.is_match(f)).collect()) {
                    if !splits.iter().any(|s| s.files.contains(f)) {
                        add(&mut splits, split, f);
                    }
                }
            }
        }
        if !splits.is_empty() {
            return splits;
        }
    }
    for f in sorted(data) {
        add(&mut splits, "train", f);
    }
    splits
}

/// Whether `datasets` would consider a repo file as data at all: not hidden, not in a `__`
/// folder, not one of the files it ignores by name.
fn is_candidate(file: &str) -> bool {
    const IGNORED: &[&str] = &[
        "README.md",
        "config.json",
        "dataset_info.json",
        "dataset_infos.json",
        "dummy_data.zip",
        "dataset_dict.json",
    ];
    let name = file.rsplit('/').next().unwrap_or(file);
    !file
        .split('/')
        .any(|s| s.starts_with('.') || s.starts_with("__"))
        && !IGNORED.contains(&name)
}

/// The reader a data file needs, as `datasets` groups extensions into builders: `parquet`,
/// `json` (.json and .jsonl), or the other type's own extension; `None` for a file that is not data.
fn family(file: &str) -> Option<&'static str> {
    if file.ends_with(".parquet") {
        Some("parquet")
    } else if file.ends_with(".jsonl") || file.ends_with(".json") {
        Some("json")
    } else {
        OTHER.iter().copied().find(|e| file.ends_with(e))
    }
}

/// Adds `file` to split `name` of `splits`, starting the split when it is new.
fn add(splits: &mut Vec<SplitFiles>, name: &str, file: &str) {
    match splits.iter_mut().find(|s| s.name == name) {
        Some(s) => s.files.push(file.to_string()),
        None => splits.push(SplitFiles {
            name: name.to_string(),
            files: vec![file.to_string()],
        }),
    }
}

/// One entry of the card's `configs`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    name: String,
    default: bool,
    data_dir: Option<String>,
    /// (split, patterns), in the card's order.
    data_files: Vec<(String, Vec<String>)>,
}

/// The `configs` of a dataset card (none when it has no front matter or no such key).
fn configs(card: &str) -> Result<Vec<Config>, String> {
    let Some(front) = front_matter(card) else {
        return Ok(vec![]);
    };
    if front.len() > MAX_CARD_BYTES {
        return Err(format!(
            "its README.md's YAML header is over {} MiB; wgspin reads at most that much",
            MAX_CARD_BYTES >> 20
        ));
    }
    // yaml-rust2 expands an alias by copying what it names, so a few lines of nested aliases
    // grow without bound; dataset cards have no reason to use them.
    let mut parser = yaml_rust2::parser::Parser::new_from_str(front);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((yaml_rust2::Event::StreamEnd, _)) => break,
            Ok((
                yaml_rust2::Event::SequenceStart(..) | yaml_rust2::Event::MappingStart(..),
                mark,
            )) => {
                // Deep nesting would make the tree's recursive drop overflow the stack.
                depth += 1;
                if depth > MAX_CARD_DEPTH {
                    return Err(format!(
                        "its README.md's YAML header nests deeper than {MAX_CARD_DEPTH} levels (line {})",
                        mark.line() + 1
                    ));
                }
            }
            Ok((yaml_rust2::Event::SequenceEnd | yaml_rust2::Event::MappingEnd, _)) => {
                depth = depth.saturating_sub(1);
            }
            Ok((yaml_rust2::Event::Alias(_), mark)) => {
                return Err(format!(
                    "its README.md's YAML header uses an alias (line {}), which wgspin does not expand",
                    mark.line() + 1
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("its README.md's YAML header does not parse: {e}")),
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(front)
        .map_err(|e| format!("its README.md's YAML header does not parse: {e}"))?;
    let Some(list) = docs.first().map(|d| &d["configs"]) else {
        return Ok(vec![]);
    };
    let Yaml::Array(list) = list else {
        return match list {
            Yaml::BadValue | Yaml::Null => Ok(vec![]),
            _ => Err("its README.md's `configs` is not a list".into()),
        };
    };
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let at = |what: &str| format!("its README.md's configs[{i}]: {what}");
            let name = scalar(&c["config_name"]).unwrap_or_else(|| "default".into());
            let default = matches!(c["default"], Yaml::Boolean(true));
            let data_dir = scalar(&c["data_dir"]);
            let data_files = match &c["data_files"] {
                Yaml::BadValue | Yaml::Null => vec![],
                Yaml::String(_) => vec![("train".to_string(), patterns(&c["data_files"]))],
                Yaml::Array(items) if items.iter().all(|x| scalar(x).is_some()) => {
                    vec![("train".to_string(), patterns(&c["data_files"]))]
                }
                Yaml::Array(items) => items
                    .iter()
                    .map(|item| {
                        let split = scalar(&item["split"])
                            .ok_or_else(|| at("a data_files entry has no `split`"))?;
                        let paths = patterns(&item["path"]);
                        if paths.is_empty() {
                            return Err(at(&format!("split {split:?} has no `path`")));
                        }
                        Ok((split, paths))
                    })
                    .collect::<Result<Vec<_>, String>>()?,
                Yaml::Hash(map) => map
                    .iter()
                    .map(|(k, v)| {
                        let split =
                            scalar(k).ok_or_else(|| at("a data_files key is not a name"))?;
                        Ok((split, patterns(v)))
                    })
                    .collect::<Result<Vec<_>, String>>()?,
                _ => return Err(at("`data_files` is neither a path, a list nor a mapping")),
            };
            Ok(Config {
                name,
                default,
                data_dir,
                data_files,
            })
        })
        .collect()
}

/// The YAML between a card's opening `---` line and the next one.
fn front_matter(card: &str) -> Option<&str> {
    let card = card.strip_prefix('\u{feff}').unwrap_or(card);
    let rest = card
        .strip_prefix("---\n")
        .or_else(|| card.strip_prefix("---\r\n"))?;
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some(&rest[..at]);
        }
        at += line.len();
    }
    None
}

/// A YAML scalar as text (names and split names may be written as numbers or booleans).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A pattern or a list of patterns.
fn patterns(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

#[cfg(test)]
#[path = "data_files_tests.rs"]
mod tests;

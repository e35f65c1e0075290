//! SFT and SPIN-pair data: reads JSON lines (`.jsonl`/`.json`, or one JSON array of rows) or
//! Parquet files holding the row shapes Hugging Face datasets use (prompt/response, chat
//! messages, SPIN real/generated pairs, ShareGPT conversations) into one list of examples with
//! unique ids.
//!
//! Two kinds of bad input are told apart: a corrupt file (malformed JSON, unreadable Parquet) is an
//! error naming the file and line/row, because reading on would silently drop data; a well-formed
//! row that is not usable (other shape, missing turn, empty text) is skipped and reported in
//! [`Dataset::skipped`], because real datasets contain a few such rows.

pub mod export;
mod jsonl;
mod parquet;
mod shapes;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hf::chat_template::Message;

/// Which row shape a file holds. `Auto` detects it from the first usable row.
///
/// Precisely: `Auto` takes the shape of the first row whose keys match a shape (rows before it are
/// skipped as unknown), judged by keys alone, so a row of the right shape with, say, an empty answer
/// still decides the format and is then skipped. Later rows of another shape are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataFormat {
    #[default]
    Auto,
    PromptResponse,
    Messages,
    Spin,
    ShareGpt,
}

impl DataFormat {
    /// Every format with its command-line name.
    pub const ALL: [DataFormat; 5] = [
        DataFormat::Auto,
        DataFormat::PromptResponse,
        DataFormat::Messages,
        DataFormat::Spin,
        DataFormat::ShareGpt,
    ];

    /// The command-line name (`--format`), as `FromStr` reads it.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Auto => "auto",
            DataFormat::PromptResponse => "prompt-response",
            DataFormat::Messages => "messages",
            DataFormat::Spin => "spin",
            DataFormat::ShareGpt => "sharegpt",
        }
    }

    /// What a row of this shape looks like, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            DataFormat::Auto => "any of the shapes below",
            DataFormat::PromptResponse => {
                "{\"prompt\", \"response\"|\"completion\"|\"output\"} or {\"instruction\", \"input\", \"output\"}"
            }
            DataFormat::Messages => "{\"messages\": [{\"role\", \"content\"}, ...]}",
            DataFormat::Spin => {
                "{\"real\": [{\"role\", \"content\"}, ...], \"generated\": [{\"role\", \"content\"}, ...]}"
            }
            DataFormat::ShareGpt => "{\"conversations\": [{\"from\", \"value\"}, ...]}",
        }
    }
}

impl std::str::FromStr for DataFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        DataFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = DataFormat::ALL.iter().map(|f| f.name()).collect();
                Error::Invalid(format!(
                    "unknown data format {s:?}; expected one of: {}",
                    names.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for DataFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which exchange of a multi-turn conversation (chat `messages`, ShareGPT) becomes the example.
///
/// `Last` (the default) keeps the whole conversation: the prompt is every turn before the last
/// assistant turn, the response that turn. `First` is what uclaml/SPIN trains on: the prompt is
/// the first user turn (with the system turns before it) and the response the assistant turn that
/// answers it; later turns are dropped. SPIN pairs are always read at their last turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Turns {
    #[default]
    Last,
    First,
}

impl Turns {
    /// The command-line name (`--turns`).
    pub fn name(self) -> &'static str {
        match self {
            Turns::Last => "last",
            Turns::First => "first",
        }
    }
}

/// How data files are read: the row shape, which turn of a conversation, and how many examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOptions {
    pub format: DataFormat,
    pub turns: Turns,
    /// Stop reading once this many usable examples are read (the rest of the files is never
    /// opened or decoded); `None` reads everything.
    pub limit: Option<usize>,
}

/// One usable example: a conversation up to its last assistant turn. `prompt` is the last user
/// turn and `history` every turn before it (system turns, earlier exchanges), so the model is
/// asked `history + [user: prompt]`; `response` is the assistant turn that answers it.
/// `generated` is set only for SPIN rows (their generated side's last assistant turn).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SftExample {
    pub id: String,
    /// Empty for single-turn rows, and then not serialized, so the content hash of single-turn
    /// data (what a resumed run compares) is what it was before conversations kept their turns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    pub prompt: String,
    pub response: String,
    pub generated: Option<String>,
}

impl SftExample {
    /// What the model is asked: the history, then the user turn.
    pub fn prompt_messages(&self) -> Vec<Message> {
        prompt_messages(&self.history, &self.prompt)
    }

    /// The whole conversation with `answer` as its last assistant turn.
    pub fn conversation(&self, answer: &str) -> Vec<Message> {
        let mut turns = self.prompt_messages();
        turns.push(Message::assistant(answer));
        turns
    }

    /// A SPIN pair whose two responses are the same text: its loss has no gradient.
    pub fn is_tie(&self) -> bool {
        self.generated.as_deref() == Some(self.response.as_str())
    }
}

pub use crate::hf::chat_template::prompt_messages;

/// A row that was skipped, and why. `line` is the 1-based JSONL line, or the 1-based Parquet row,
/// of `Dataset::files[file]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: usize,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// The first file read (the only one, but for a dataset of several shards).
    pub path: PathBuf,
    /// Every file read, in reading order (a `--limit` may have stopped before the last ones).
    pub files: Vec<PathBuf>,
    /// The resolved format, never `Auto`.
    pub format: DataFormat,
    pub examples: Vec<SftExample>,
    pub skipped: Vec<Skipped>,
    /// SPIN pairs whose generated response equals the real one (see [`SftExample::is_tie`]): a
    /// legitimate outcome, but when every pair is one, training on the file does nothing.
    pub ties: usize,
    /// Rows whose `prompt_id` (a hash of the prompt) an earlier row has: their ids get `#2`, `#3`, ….
    pub repeated_prompts: usize,
}

/// How many skip reasons the "no usable rows" error quotes.
const REASONS_SHOWN: usize = 3;

/// Reads a `.jsonl`/`.json` (JSON lines) or `.parquet` file.
///
/// The container is recognised by content (Parquet's `PAR1` magic), not by extension, so a renamed
/// file still reads. Errors: a missing file, malformed JSON or an unreadable Parquet row (naming
/// file and line/row), duplicate ids (naming both lines), or no usable row at all.
pub fn read_dataset(path: &Path, format: DataFormat) -> Result<Dataset> {
    read_files(
        &[path.to_path_buf()],
        ReadOptions {
            format,
            ..Default::default()
        },
    )
}

/// Reads several data files as one dataset (the shards of a split, in order), each as
/// [`read_dataset`] reads one: ids unique across all of them, the format decided by the first
/// usable row. Files are read a row at a time (Parquet a row group at a time), so memory holds the
/// examples kept, not the files; with `opts.limit` reading stops at that many examples.
pub fn read_files(paths: &[PathBuf], opts: ReadOptions) -> Result<Dataset> {
    let Some(first) = paths.first() else {
        return Err(Error::Invalid("no data files to read".into()));
    };
    let mut builder = Builder::new(first, opts, paths.len() > 1);
    for (i, path) in paths.iter().enumerate() {
        if builder.is_full() {
            break;
        }
        let is_parquet = parquet::is_parquet(path)?;
        builder.start_file(i, path, if is_parquet { "row" } else { "line" });
        let mut sink = |line, row: Value| builder.add(line, &row);
        if is_parquet {
            parquet::read_rows(path, open(path)?, &mut sink)?;
        } else {
            let file = std::io::BufReader::new(open(path)?);
            jsonl::read_rows(path, file, &mut sink)?;
        }
    }
    builder.finish()
}

/// [`read_dataset`] of a file already in memory (`name` is only used in messages and
/// [`Dataset::path`]): the same container detection, row shapes, limits and errors.
pub fn parse_dataset(name: &Path, bytes: &[u8], format: DataFormat) -> Result<Dataset> {
    let is_parquet = bytes.starts_with(parquet::MAGIC);
    let opts = ReadOptions {
        format,
        ..Default::default()
    };
    let mut builder = Builder::new(name, opts, false);
    builder.start_file(0, name, if is_parquet { "row" } else { "line" });
    let mut sink = |line, row: Value| builder.add(line, &row);
    if is_parquet {
        let owned = ::bytes::Bytes::copy_from_slice(bytes);
        parquet::read_rows(name, owned, &mut sink)?;
    } else {
        jsonl::read_rows(name, bytes, &mut sink)?;
    }
    builder.finish()
}

/// Opens a data file; a missing one gets a hint on what `--data` takes.
fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            hint: "Pass --data a JSON lines (.jsonl) or Parquet (.parquet) file, e.g. with one \
                   {\"prompt\", \"response\"} or {\"messages\": [...]} object per row."
                .into(),
        },
        _ => Error::io(path, e),
    })
}

/// A prompt and its human-written response (the input of `wgspin logprobs`); `history` holds
/// the turns before the prompt of a multi-turn row, as in [`SftExample`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PromptResponse {
    #[serde(default)]
    pub history: Vec<Message>,
    pub prompt: String,
    pub response: String,
}

/// Reads every row of a data file as prompt/response pairs, in file order.
///
/// Stricter than [`read_dataset`]: scoring writes one output per input row, so a row that would be
/// skipped is an error naming its line instead of a silent gap.
pub fn read_prompt_responses(path: &Path) -> Result<Vec<PromptResponse>> {
    read_prompt_responses_from(&[path.to_path_buf()], DataFormat::Auto, Turns::Last)
}

/// [`read_prompt_responses`] of several files (a Hub dataset's shards), in order, with the row
/// shape and the turn of a conversation to score.
pub fn read_prompt_responses_from(
    paths: &[PathBuf],
    format: DataFormat,
    turns: Turns,
) -> Result<Vec<PromptResponse>> {
    let opts = ReadOptions {
        format,
        turns,
        limit: None,
    };
    let data = read_files(paths, opts)?;
    if let Some(s) = data.skipped.first() {
        return Err(Error::Data {
            path: data.files[s.file].clone(),
            line: s.line,
            message: s.reason.clone(),
        });
    }
    Ok(data
        .examples
        .into_iter()
        .map(|e| PromptResponse {
            history: e.history,
            prompt: e.prompt,
            response: e.response,
        })
        .collect())
}

/// Accumulates rows in file order: resolves the format, parses, records skips, checks ids.
struct Builder {
    requested: DataFormat,
    turns: Turns,
    limit: Option<usize>,
    /// Every file started so far, and the one being read (the last).
    files: Vec<PathBuf>,
    /// Whether rows come from several files (messages then name the file).
    many: bool,
    /// What `Skipped::line` counts in the current file ("line" or "row"), for messages.
    unit: &'static str,
    /// The resolved format and where it was decided (`None` until a row has a known shape).
    resolved: Option<(DataFormat, String)>,
    examples: Vec<SftExample>,
    skipped: Vec<Skipped>,
    /// id → where the example that has it was read.
    ids: HashMap<String, String>,
    rows: usize,
    repeated_prompts: usize,
}

impl Builder {
    fn new(first: &Path, opts: ReadOptions, many: bool) -> Self {
        Builder {
            requested: opts.format,
            turns: opts.turns,
            limit: opts.limit,
            files: vec![first.to_path_buf()],
            many,
            unit: "line",
            resolved: (opts.format != DataFormat::Auto).then(|| (opts.format, String::new())),
            examples: vec![],
            skipped: vec![],
            ids: HashMap::new(),
            rows: 0,
            repeated_prompts: 0,
        }
    }

    /// Starts file `index` of the list (`path`), whose rows `unit` counts.
    fn start_file(&mut self, index: usize, path: &Path, unit: &'static str) {
        self.files.truncate(index);
        self.files.push(path.to_path_buf());
        self.unit = unit;
    }

    fn path(&self) -> &Path {
        self.files
            .last()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""))
    }

    /// `line` of the current file as messages name it: the unit alone for a single file, with
    /// the file's name when rows come from several.
    fn place(&self, line: usize) -> String {
        if !self.many {
            format!("{} {line}", self.unit)
        } else {
            format!("{} {line} of {}", self.unit, self.path().display())
        }
    }

    fn is_full(&self) -> bool {
        self.limit.is_some_and(|n| self.examples.len() >= n)
    }

    fn skip(&mut self, line: usize, reason: String) {
        self.skipped.push(Skipped {
            file: self.files.len() - 1,
            line,
            reason,
        });
    }

    /// Adds one row; `Break` once the limit is reached (the reader stops there).
    fn add(&mut self, line: usize, row: &Value) -> Result<ControlFlow<()>> {
        self.add_row(line, row)?;
        Ok(if self.is_full() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }

    fn add_row(&mut self, line: usize, row: &Value) -> Result<()> {
        self.rows += 1;
        let (format, decided_at) = match &self.resolved {
            Some((f, at)) => (*f, at.clone()),
            None => match shapes::detect(row) {
                Some(f) => {
                    let at = self.place(line);
                    self.resolved = Some((f, at.clone()));
                    (f, at)
                }
                None => {
                    self.skip(line, format!("not a known row shape ({})", known_keys(row)));
                    return Ok(());
                }
            },
        };
        if format == DataFormat::Spin && self.turns != Turns::Last {
            return Err(Error::Data {
                path: self.path().to_path_buf(),
                line,
                message: format!(
                    "--turns {} applies to SFT conversations; SPIN pairs (\"real\"/\"generated\") are \
                     always compared at their last turn: leave --turns at last",
                    self.turns.name()
                ),
            });
        }
        let parsed = match shapes::parse(format, self.turns, row) {
            Ok(p) => p,
            Err(reason) => {
                // Say when the row is simply of another shape than the file's: that is the likely
                // cause, and more useful than the missing key it leads to.
                let reason = match shapes::detect(row) {
                    Some(other) if other != format && self.requested == DataFormat::Auto => {
                        format!("a {other} row in a {format} file (detected from {decided_at})")
                    }
                    Some(other) if other != format => {
                        format!("a {other} row, but the format is {format}")
                    }
                    _ => format!("not a {format} row: {reason}"),
                };
                self.skip(line, reason);
                return Ok(());
            }
        };
        let (mut id, is_prompt_hash) = shapes::row_id(row).unwrap_or_else(|| {
            let id = match self.files.len() {
                // Shards number their rows from 1 each; the file's position keeps them apart.
                n if self.many => format!("file-{n}-row-{line}"),
                _ => format!("row-{line}"),
            };
            (id, false)
        });
        // A repeated prompt hash is a question asked twice: its rows are numbered in reading
        // order (`ID#2`, …), which a rerun over the same files repeats.
        if is_prompt_hash && self.ids.contains_key(&id) {
            let base = id.clone();
            let mut k = 2;
            while self.ids.contains_key(&id) {
                id = format!("{base}#{k}");
                k += 1;
            }
            self.repeated_prompts += 1;
        }
        // Generation resumes by id, so two rows with one id would make one of them never run (or
        // run twice); renaming them silently would break resuming against an earlier run.
        let here = self.place(line);
        if let Some(first) = self.ids.insert(id.clone(), here) {
            return Err(Error::Data {
                path: self.path().to_path_buf(),
                line,
                message: format!(
                    "duplicate id {id:?} (also on {first}); ids must be unique because generation resumes by id"
                ),
            });
        }
        self.examples.push(SftExample {
            id,
            history: parsed.history,
            prompt: parsed.prompt,
            response: parsed.response,
            generated: parsed.generated,
        });
        Ok(())
    }

    fn finish(self) -> Result<Dataset> {
        match &self.resolved {
            Some((format, _)) if !self.examples.is_empty() => Ok(Dataset {
                path: self.files[0].clone(),
                format: *format,
                ties: self.examples.iter().filter(|e| e.is_tie()).count(),
                repeated_prompts: self.repeated_prompts,
                files: self.files,
                examples: self.examples,
                skipped: self.skipped,
            }),
            _ => Err(Error::Dataset {
                path: self.files[0].clone(),
                message: self.no_rows_message(),
            }),
        }
    }

    fn no_rows_message(&self) -> String {
        let accepted: Vec<String> = DataFormat::ALL[1..]
            .iter()
            .map(|f| format!("{f}: {}", f.describe()))
            .collect();
        let mut msg = if self.rows == 0 {
            "no rows (the file is empty)".to_string()
        } else {
            let reasons: Vec<String> = self
                .skipped
                .iter()
                .take(REASONS_SHOWN)
                .map(|s| format!("{} {}: {}", self.unit, s.line, s.reason))
                .collect();
            format!(
                "no usable rows: all {} rows were skipped ({}{})",
                self.rows,
                reasons.join("; "),
                if self.skipped.len() > REASONS_SHOWN {
                    "; ..."
                } else {
                    ""
                }
            )
        };
        if self.requested == DataFormat::Auto {
            msg.push_str(". Accepted row shapes: ");
            msg.push_str(&accepted.join("; "));
        } else {
            msg.push_str(&format!(
                ". The format {} expects rows {}",
                self.requested,
                self.requested.describe()
            ));
        }
        msg
    }
}

/// The top-level keys of a row (or its JSON type), to show what an unknown row holds.
fn known_keys(row: &Value) -> String {
    match row.as_object() {
        Some(obj) if obj.is_empty() => "an empty object".into(),
        Some(obj) => {
            let keys: Vec<_> = obj.keys().take(8).map(|k| format!("{k:?}")).collect();
            format!("keys {}", keys.join(", "))
        }
        None => "not a JSON object".into(),
    }
}

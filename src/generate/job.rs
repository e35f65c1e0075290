//! `wgspin generate` as a library call: SFT examples in, SPIN pairs out, resumable.
//!
//! Output rows are SPIN's own format, so the official pipeline reads them too:
//! `{"id", "real": [..turns, user, assistant], "generated": [..turns, user, assistant],
//! "finish_reason", "generated_tokens"}`, both sides the example's whole conversation (system
//! turns and earlier exchanges, then the last user turn) with the human or the generated last
//! assistant turn. Each row is appended and flushed as soon as its request finishes, so a
//! killed run loses at most the rows in flight. Rerunning the same job keeps the rows already in
//! the file whose `real` conversation is still the data's (prompt turns and human response), drops
//! the others (an edited row) and a torn last line, and generates only what is missing; because
//! every request has its own random stream, the result equals an uninterrupted run. At the end the
//! file is rewritten atomically in input order.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::server::{Reply, ServerClient};
use super::{FinishReason, Finished, GenOptions, GenRequest, generate};
use crate::data::SftExample;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::hf::chat_template::Message;
use crate::hf::tokenizer::ChatTokenizer;
use crate::job::ModelIdentity;
use crate::load::ModelSource;
use crate::load::bundle::ModelBundle;
use crate::model::Transformer;
use crate::model::precision::dtype_name;

mod server_prompts;

use server_prompts::server_prompts;

/// Where a generation job stands, reported after every finished request.
#[derive(Debug, Clone)]
pub struct GenProgress {
    /// Requests finished, including those found in the file on resume.
    pub done: usize,
    pub total: usize,
    /// Tokens generated in this run.
    pub tokens: usize,
    pub elapsed: Duration,
}

/// What a generation job did.
#[derive(Debug, Clone, Default)]
pub struct GenSummary {
    pub total: usize,
    /// Rows already present in the output file and kept.
    pub resumed: usize,
    /// Rows present in the output file whose example changed since (its prompt turns or its
    /// human response): dropped and generated again, so no row keeps a stale `real`.
    pub regenerated: usize,
    /// Rows generated in this run.
    pub generated: usize,
    /// Tokens generated in this run (stop tokens included).
    pub tokens: usize,
    pub finished_eos: usize,
    pub finished_length: usize,
    /// Prompts that lost their beginning to fit the context with --max-new-tokens.
    pub truncated_prompts: usize,
    pub seconds: f64,
}

impl GenSummary {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// A SPIN-format output row of a single-turn prompt.
pub fn spin_row(
    id: &str,
    prompt: &str,
    real: &str,
    generated: &str,
    finish: &str,
    n: usize,
) -> Value {
    let prompt = [Message::user(prompt)];
    chat_row(id, &prompt, real, generated, finish, n)
}

/// A SPIN-format output row: `prompt` (every turn before the answer), then the human (`real`) or
/// the generated assistant turn on each side.
pub fn chat_row(
    id: &str,
    prompt: &[Message],
    real: &str,
    generated: &str,
    finish: &str,
    n: usize,
) -> Value {
    json!({
        "id": id,
        "real": conversation(prompt, real),
        "generated": conversation(prompt, generated),
        "finish_reason": finish,
        "generated_tokens": n,
    })
}

fn conversation(prompt: &[Message], answer: &str) -> Value {
    let turn = |role: &str, content: &str| json!({"role": role, "content": content});
    let turns = prompt.iter().map(|m| turn(&m.role, &m.content));
    turns.chain([turn("assistant", answer)]).collect()
}

/// What [`recover`] found in an output file.
#[derive(Default)]
struct Recovered {
    /// Rows to keep, by id.
    rows: HashMap<String, String>,
    /// Rows whose example's conversation or human response changed since they were written.
    stale: usize,
    /// The length to cut the file to when its last line was torn by a crash.
    torn: Option<u64>,
}

/// The rows already in `out` by id, checked against `examples`: a row whose id is not in the data
/// is an error (the file is another job's), a row whose `real` conversation is not the one its
/// example writes now is stale (the data was edited) and left out, to be generated again. Reads
/// only: the caller cuts or rewrites once it has decided to continue the file.
fn recover(out: &Path, examples: &[SftExample]) -> Result<Recovered> {
    let bytes = match std::fs::read(out) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(e) => return Err(Error::io(out, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let torn = (complete < bytes.len()).then_some(complete as u64);
    let by_id: HashMap<&str, &SftExample> = examples.iter().map(|e| (e.id.as_str(), e)).collect();
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let mut rows = HashMap::new();
    let mut stale = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| Error::Data {
            path: out.to_path_buf(),
            line: i + 1,
            message: format!(
                "{message}. This file is not the output of this generation job: replace it with \
                 --overwrite or choose another --out"
            ),
        };
        let row: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON row ({e})")))?;
        let id = row
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("row without a string \"id\"".into()))?;
        let ex = by_id
            .get(id)
            .ok_or_else(|| bad(format!("row id {id:?} is not in the data")))?;
        // The whole conversation, not only the prompt: a row whose human response was edited
        // would otherwise keep the old one as its `real` side.
        if row.get("real") != Some(&conversation(&ex.prompt_messages(), &ex.response)) {
            rows.remove(id);
            stale.insert(id.to_string());
            continue;
        }
        // A later line of one id is the newer row (an interrupted run appends, then rewrites).
        stale.remove(id);
        rows.insert(id.to_string(), line.to_string());
    }
    Ok(Recovered {
        rows,
        stale: stale.len(),
        torn,
    })
}

/// `<out>.run.json`: the model identity, sampling settings and compute dtype (or server) that
/// made `out`'s rows.
pub fn run_record_path(out: &Path) -> std::path::PathBuf {
    crate::fsutil::with_suffix(out, ".run.json")
}

/// Who writes the responses.
pub enum Opponent<'a> {
    /// The model on this machine's device.
    Local(&'a Transformer),
    /// An OpenAI-compatible server that serves the same model.
    Server(&'a ServerClient),
}

/// A generation job's model side: the tokenizer that renders, truncates and measures prompts,
/// what `--model` named (its identity goes into the run record), and who generates.
pub struct GenModel<'a> {
    pub tokenizer: &'a ChatTokenizer,
    pub source: ModelSource,
    pub opponent: Opponent<'a>,
}

impl<'a> GenModel<'a> {
    /// The bundle's own model generates.
    pub fn local(bundle: &'a ModelBundle) -> Self {
        Self {
            tokenizer: &bundle.tokenizer,
            source: bundle.source(),
            opponent: Opponent::Local(&bundle.model),
        }
    }
}

/// Generates a response (from `model.opponent`) for every example whose id is not yet in `out`,
/// then rewrites `out` in input order. With `overwrite`, an existing `out` (and its run record) is
/// removed first instead of continued or refused.
pub fn run_generate_with(
    model: &GenModel,
    examples: &[SftExample],
    out: &Path,
    opts: &GenOptions,
    overwrite: bool,
    progress: impl FnMut(&GenProgress),
) -> Result<GenSummary> {
    let start = Instant::now();
    // Before the lock and the run record: a refused run leaves no file behind.
    check_job(examples, opts)?;
    let _lock = crate::manifest::lock_file(out)?;
    let kept = continue_output(model, examples, out, opts, overwrite)?;
    let tok = model.tokenizer;
    let mut summary = GenSummary {
        total: examples.len(),
        resumed: kept.rows.len(),
        regenerated: kept.stale,
        ..Default::default()
    };
    let (requests, truncated) = requests_for(tok, examples, &kept.rows, opts)?;
    summary.truncated_prompts = truncated.len();
    let mut rows = RowWriter::open(out, examples, kept.rows, summary, start, progress)?;
    match model.opponent {
        Opponent::Local(transformer) => {
            generate(transformer, &requests, opts, |f: Finished| {
                let text_ids: &[u32] = match f.tokens.last() {
                    Some(t) if opts.stop_ids.contains(t) => &f.tokens[..f.tokens.len() - 1],
                    _ => &f.tokens,
                };
                let text = tok.decode(text_ids, true)?;
                rows.write(f.index, &text, f.finish_reason, f.tokens.len())
            })?;
        }
        Opponent::Server(client) => {
            let prompts = server_prompts(tok, examples, &requests, &truncated, client.api())?;
            client.generate(&prompts, opts, |r: Reply| {
                // Counted as local generation counts: the response's tokens, plus the stop token.
                let n =
                    tok.encode(&r.text, false)?.len() + usize::from(r.finish == FinishReason::Eos);
                rows.write(r.index, &r.text, r.finish, n)
            })?;
        }
    }
    rows.finish()
}

/// Refuses a job whose rows could not be resumed by id, or whose options are invalid.
fn check_job(examples: &[SftExample], opts: &GenOptions) -> Result<()> {
    opts.validate()?;
    if u32::try_from(examples.len()).is_err() {
        return Err(Error::Invalid("more than 2³² prompts in one job".into()));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = examples.iter().find(|e| !seen.insert(e.id.as_str())) {
        return Err(Error::Invalid(format!(
            "id {:?} appears twice in the data; ids must be unique to resume",
            dup.id
        )));
    }
    Ok(())
}

/// What made `out`'s rows: the model identity, sampling settings and who generates. A resume
/// must not mix two models' or two samplers' answers in one file.
fn run_record(model: &ModelIdentity, opponent: &Opponent, opts: &GenOptions) -> Value {
    let mut record = json!({
        "model": model.now,
        "sampling": opts.sampling,
        "max_new_tokens": opts.max_new_tokens,
    });
    match opponent {
        Opponent::Server(client) => record["server"] = client.identity(),
        // The dtype decides near-ties, so rows of an f16 run and an f32 run differ.
        Opponent::Local(m) => record["dtype"] = dtype_name(m.compute).into(),
    }
    record
}

/// The run record `out` was made with, in today's shape; `None` when there is none.
fn saved_record(record_path: &Path) -> Option<Value> {
    std::fs::read_to_string(record_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|mut saved| {
            // Records written before generation had a dtype come from f32 runs.
            if let Some(fields) = saved.as_object_mut()
                && !fields.contains_key("server")
            {
                fields.entry("dtype").or_insert_with(|| "f32".into());
            }
            saved
        })
}

/// Makes `out` (locked by the caller) ready to continue: removed first with `overwrite`; else its
/// rows are kept when this run's record matches the one that made them (refused otherwise), stale
/// rows and a torn last line dropped. Writes this run's record. Returns the rows kept.
fn continue_output(
    model: &GenModel,
    examples: &[SftExample],
    out: &Path,
    opts: &GenOptions,
    overwrite: bool,
) -> Result<Recovered> {
    let identity = ModelIdentity::of(&model.source)?;
    let mut record = run_record(&identity, &model.opponent, opts);
    let record_path = run_record_path(out);
    if overwrite {
        for path in [out, record_path.as_path()] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(path, e));
                }
                _ => {}
            }
        }
    }
    let kept = recover(out, examples)?;
    if !kept.rows.is_empty() || kept.stale > 0 || kept.torn.is_some() {
        let saved = saved_record(&record_path);
        let refuse = |why: String| {
            Err(Error::Invalid(format!(
                "{} holds {} rows {why}; rerun with the same --model, sampling, --dtype and \
                 --server flags to continue it, or start over with --overwrite or another --out",
                out.display(),
                kept.rows.len()
            )))
        };
        if let Some(s) = &saved {
            record["model"] = identity.against(s.get("model"))?;
        }
        match saved.map(|saved| crate::job::differences(&saved, &record)) {
            None => return refuse(format!("without a run record ({})", record_path.display())),
            Some(Some(diffs)) => {
                return refuse(format!("made by another model or sampler ({diffs})"));
            }
            Some(None) => {}
        }
    }
    if kept.stale > 0 {
        // Stale rows leave the file now, so a run killed before the final rewrite cannot leave
        // them behind (the torn line, if any, goes with them).
        fsutil::write_atomic(out, in_input_order(examples, &kept.rows).as_bytes())?;
    } else if let Some(len) = kept.torn {
        // A line cut short by a crash: drop it, it will be generated again.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(|e| Error::io(out, e))?;
        f.set_len(len).map_err(|e| Error::io(out, e))?;
    }
    crate::job::write_json(&record_path, &record)?;
    Ok(kept)
}

/// The requests for the examples without a row in `kept`, longest first, and the indices of
/// those whose prompt lost its beginning to fit the context.
fn requests_for(
    tok: &ChatTokenizer,
    examples: &[SftExample],
    kept: &HashMap<String, String>,
    opts: &GenOptions,
) -> Result<(Vec<GenRequest>, HashSet<u32>)> {
    // Room for the prompt in the model's context once the response has its --max-new-tokens.
    let prompt_room = match tok.context() {
        Some(ctx) if opts.max_new_tokens >= ctx => {
            return Err(Error::Invalid(format!(
                "--max-new-tokens {} leaves no room for a prompt in the model's context of {ctx} \
                 tokens (max_position_embeddings); lower it",
                opts.max_new_tokens
            )));
        }
        Some(ctx) => ctx - opts.max_new_tokens,
        None => usize::MAX,
    };
    let mut requests = vec![];
    let mut truncated = HashSet::new();
    for (i, ex) in examples.iter().enumerate() {
        if kept.contains_key(&ex.id) {
            continue;
        }
        let mut prompt = tok
            .chat_prompt_ids(&ex.history, &ex.prompt)
            .map_err(|e| Error::Invalid(format!("example {:?}: {e}", ex.id)))?;
        // SPIN's rule for a prompt too long: keep its end, where the question usually is.
        if prompt.len() > prompt_room {
            // ...after the BOS token, which the model always saw first.
            let keep_bos = usize::from(tok.bos_token_id.is_some_and(|b| prompt[0] == b));
            let cut = prompt.len() - prompt_room;
            prompt.drain(keep_bos..keep_bos + cut);
            truncated.insert(i as u32);
        }
        requests.push(GenRequest {
            index: i as u32,
            prompt,
        });
    }
    // Longest first: prompts prefilled together have similar lengths, and a prompt too long for
    // the device fails at the start rather than hours in.
    requests.sort_by_key(|r| std::cmp::Reverse(r.prompt.len()));
    Ok((requests, truncated))
}

/// The output file as rows finish: each appended and flushed at once, counted, and reported.
struct RowWriter<'a, P: FnMut(&GenProgress)> {
    out: &'a Path,
    file: std::fs::File,
    examples: &'a [SftExample],
    /// Every row by id, kept and new, for the final rewrite in input order.
    lines: HashMap<String, String>,
    summary: GenSummary,
    done: usize,
    start: Instant,
    progress: P,
}

impl<'a, P: FnMut(&GenProgress)> RowWriter<'a, P> {
    fn open(
        out: &'a Path,
        examples: &'a [SftExample],
        lines: HashMap<String, String>,
        summary: GenSummary,
        start: Instant,
        mut progress: P,
    ) -> Result<Self> {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .map_err(|e| Error::io(out, e))?;
        let done = summary.resumed;
        progress(&GenProgress {
            done,
            total: summary.total,
            tokens: 0,
            elapsed: start.elapsed(),
        });
        Ok(Self {
            out,
            file,
            examples,
            lines,
            summary,
            done,
            start,
            progress,
        })
    }

    fn write(&mut self, index: u32, text: &str, finish: FinishReason, n: usize) -> Result<()> {
        let ex = &self.examples[index as usize];
        let prompt = ex.prompt_messages();
        let row = chat_row(&ex.id, &prompt, &ex.response, text, finish.as_str(), n);
        let line = row.to_string();
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(self.out, e))?;
        self.lines.insert(ex.id.clone(), line);
        let summary = &mut self.summary;
        summary.generated += 1;
        summary.tokens += n;
        match finish {
            FinishReason::Eos => summary.finished_eos += 1,
            FinishReason::Length => summary.finished_length += 1,
        }
        self.done += 1;
        (self.progress)(&GenProgress {
            done: self.done,
            total: summary.total,
            tokens: summary.tokens,
            elapsed: self.start.elapsed(),
        });
        Ok(())
    }

    /// Rewrites the file atomically in input order, as a finished job leaves it.
    fn finish(self) -> Result<GenSummary> {
        drop(self.file);
        fsutil::write_atomic(
            self.out,
            in_input_order(self.examples, &self.lines).as_bytes(),
        )?;
        Ok(GenSummary {
            seconds: self.start.elapsed().as_secs_f64(),
            ..self.summary
        })
    }
}

/// The rows of `examples` found in `rows` (by id), one per line, in the order of `examples`.
fn in_input_order(examples: &[SftExample], rows: &HashMap<String, String>) -> String {
    let mut ordered = String::new();
    for ex in examples {
        if let Some(l) = rows.get(&ex.id) {
            ordered.push_str(l);
            ordered.push('\n');
        }
    }
    ordered
}

/// Whether `out` already holds a row for every one of `examples` (a finished job; its rows are
/// checked against the data as a resume checks them).
pub fn has_every_row(out: &Path, examples: &[SftExample]) -> Result<bool> {
    let rows = recover(out, examples)?.rows;
    Ok(examples.iter().all(|e| rows.contains_key(&e.id)))
}

/// Rewrites `out` atomically in the order of `examples`, as a finished generation job leaves it.
pub fn reorder_rows(out: &Path, examples: &[SftExample]) -> Result<()> {
    let rows = recover(out, examples)?.rows;
    fsutil::write_atomic(out, in_input_order(examples, &rows).as_bytes())
}

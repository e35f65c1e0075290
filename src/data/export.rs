//! SPIN pairs in the layouts the Python stacks read, so an iteration's pairs go to TRL, uclaml/SPIN
//! or LLaMA-Factory without a conversion script:
//! - `trl`: TRL's conversational preference rows, `prompt` / `chosen` / `rejected` message lists
//!   (what `DPOTrainer` takes directly): the shared turns (system turns, earlier exchanges, the
//!   last user turn) in `prompt`, the last assistant turns alone in `chosen` / `rejected`;
//! - `spin`: uclaml/SPIN's rows, `real` / `generated` as whole conversations (every turn, then the
//!   human or the generated assistant turn), what its `spin/run_spin.py` reads;
//! - `sharegpt`: LLaMA-Factory's ShareGPT preference rows, a `conversations` list of
//!   `{from, value}` (the shared turns: a leading `system` turn, then `human` / `gpt` turns that
//!   alternate, as LLaMA-Factory's converter requires) with `chosen` / `rejected` `gpt` turns.
//!
//! As JSON lines or Parquet. The Parquet columns are nested the way pyarrow writes a list of
//! structs (`<col>.list.element.<field>`, strings as UTF-8 byte arrays), so pyarrow and `datasets`
//! read them back as lists of dicts.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use serde_json::{Value, json};

use super::SftExample;
use crate::error::{Error, Result};
use crate::hf::chat_template::Message;

/// The row layout of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PairFormat {
    /// TRL conversational preference: prompt / chosen / rejected message lists.
    Trl,
    /// uclaml/SPIN: real / generated conversations.
    Spin,
    /// LLaMA-Factory ShareGPT preference: conversations + chosen / rejected turns.
    Sharegpt,
}

/// One column of a layout: a list of turns, or a single turn, each turn a struct of two strings.
struct Column {
    name: &'static str,
    list: bool,
    /// The turn's two string fields (role/content or from/value).
    keys: [&'static str; 2],
}

const MESSAGE: [&str; 2] = ["role", "content"];
const SHAREGPT_TURN: [&str; 2] = ["from", "value"];

const fn list(name: &'static str, keys: [&'static str; 2]) -> Column {
    Column {
        name,
        list: true,
        keys,
    }
}

const fn turn(name: &'static str, keys: [&'static str; 2]) -> Column {
    Column {
        name,
        list: false,
        keys,
    }
}

const TRL: [Column; 3] = [
    list("prompt", MESSAGE),
    list("chosen", MESSAGE),
    list("rejected", MESSAGE),
];
const SPIN: [Column; 2] = [list("real", MESSAGE), list("generated", MESSAGE)];
const SHAREGPT: [Column; 3] = [
    list("conversations", SHAREGPT_TURN),
    turn("chosen", SHAREGPT_TURN),
    turn("rejected", SHAREGPT_TURN),
];

impl PairFormat {
    fn columns(self) -> &'static [Column] {
        match self {
            PairFormat::Trl => &TRL,
            PairFormat::Spin => &SPIN,
            PairFormat::Sharegpt => &SHAREGPT,
        }
    }
}

fn message(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

fn messages(turns: &[Message]) -> Value {
    turns.iter().map(|m| message(&m.role, &m.content)).collect()
}

/// The shared turns as LLaMA-Factory's ShareGPT converter reads them: a system turn only first
/// (it becomes the system prompt), then `human` at even and `gpt` at odd positions; anything else
/// it drops as "invalid role tag", so such a conversation is refused here instead.
fn sharegpt_turns(ex: &SftExample) -> Result<Value> {
    let turns = ex.prompt_messages();
    let lead = usize::from(turns.first().is_some_and(|m| m.role == "system"));
    let mut out = vec![];
    for (i, m) in turns.iter().enumerate() {
        let from = match (i.checked_sub(lead).map(|j| j % 2), m.role.as_str()) {
            (None, _) => "system",
            (Some(0), "user") => "human",
            (Some(1), "assistant") => "gpt",
            _ => {
                return Err(Error::Invalid(format!(
                    "example {:?}: its turns do not fit LLaMA-Factory's ShareGPT layout (turn {i} \
                     is a {} turn; it takes one leading system turn, then user and assistant \
                     turns that alternate); export it as trl or spin",
                    ex.id, m.role
                )));
            }
        };
        out.push(sharegpt_turn(from, &m.content));
    }
    Ok(Value::Array(out))
}

fn sharegpt_turn(from: &str, value: &str) -> Value {
    json!({"from": from, "value": value})
}

/// The row of `ex` in `format`; an example without a generated response is an error naming it.
pub fn pair_row(format: PairFormat, ex: &SftExample) -> Result<Value> {
    let generated = ex.generated.as_deref().ok_or_else(|| {
        Error::Invalid(format!(
            "example {:?} has no generated response; export SPIN pairs (the output of `wgspin \
             generate`)",
            ex.id
        ))
    })?;
    let real = ex.response.as_str();
    Ok(match format {
        PairFormat::Trl => json!({
            "prompt": messages(&ex.prompt_messages()),
            "chosen": [message("assistant", real)],
            "rejected": [message("assistant", generated)],
        }),
        PairFormat::Spin => json!({
            "real": messages(&ex.conversation(real)),
            "generated": messages(&ex.conversation(generated)),
        }),
        PairFormat::Sharegpt => json!({
            "conversations": sharegpt_turns(ex)?,
            "chosen": sharegpt_turn("gpt", real),
            "rejected": sharegpt_turn("gpt", generated),
        }),
    })
}

/// Writes `examples` as `format` rows to `out`: Parquet when its name ends in `.parquet`, JSON
/// lines otherwise. Atomic (temp file + rename). Returns the number of rows.
pub fn export_pairs(examples: &[SftExample], format: PairFormat, out: &Path) -> Result<usize> {
    let rows: Vec<Value> = examples
        .iter()
        .map(|e| pair_row(format, e))
        .collect::<Result<_>>()?;
    let parquet = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if parquet {
        crate::fsutil::write_atomic_with(out, |tmp| write_parquet(tmp, format, &rows))?;
    } else {
        let mut text = String::new();
        for row in &rows {
            text.push_str(&row.to_string());
            text.push('\n');
        }
        crate::fsutil::write_atomic(out, text.as_bytes())?;
    }
    Ok(rows.len())
}

/// The Parquet schema of a layout, as pyarrow writes `list<struct<..>>` and `struct<..>` columns.
fn schema(format: PairFormat) -> String {
    let mut s = String::from("message schema {\n");
    for c in format.columns() {
        let fields: String = c
            .keys
            .iter()
            .map(|k| format!("OPTIONAL BYTE_ARRAY {k} (STRING);"))
            .collect();
        if c.list {
            s += &format!(
                "OPTIONAL group {} (LIST) {{ REPEATED group list {{ OPTIONAL group element {{ {fields} }} }} }}\n",
                c.name
            );
        } else {
            s += &format!("OPTIONAL group {} {{ {fields} }}\n", c.name);
        }
    }
    s + "}"
}

/// Rows per row group: small enough to keep one group's strings in memory twice over.
const ROW_GROUP: usize = 8192;

fn write_parquet(path: &Path, format: PairFormat, rows: &[Value]) -> Result<()> {
    let err = |e: parquet::errors::ParquetError| Error::Dataset {
        path: path.to_path_buf(),
        message: format!("writing Parquet failed: {e}"),
    };
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(&schema(format)).map_err(err)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("wgspin {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(err)?;
    for group in rows.chunks(ROW_GROUP) {
        let mut rg = writer.next_row_group().map_err(err)?;
        // Leaves come in schema order: each column's fields in turn.
        for c in format.columns() {
            for key in c.keys {
                let (values, defs, reps) = leaf(group, c, key);
                let mut col = rg.next_column().map_err(err)?.ok_or_else(|| {
                    err(parquet::errors::ParquetError::General(
                        "schema ended early".into(),
                    ))
                })?;
                col.typed::<ByteArrayType>()
                    .write_batch(&values, Some(&defs), c.list.then_some(&reps[..]))
                    .map_err(err)?;
                col.close().map_err(err)?;
            }
        }
        rg.close().map_err(err)?;
    }
    writer.close().map_err(err)?;
    Ok(())
}

/// Values and definition / repetition levels of one leaf (`column.key`) over `rows`. Every column
/// is present in every row and every field in every turn, so levels are the maximum except for an
/// empty list (defined only down to the list).
fn leaf(rows: &[Value], c: &Column, key: &str) -> (Vec<ByteArray>, Vec<i16>, Vec<i16>) {
    let (mut values, mut defs, mut reps) = (vec![], vec![], vec![]);
    let text =
        |turn: &Value| ByteArray::from(turn[key].as_str().unwrap_or_default().as_bytes().to_vec());
    for row in rows {
        let v = &row[c.name];
        if !c.list {
            values.push(text(v));
            defs.push(2);
            continue;
        }
        let turns = v.as_array().map(Vec::as_slice).unwrap_or_default();
        if turns.is_empty() {
            defs.push(1);
            reps.push(0);
        }
        for (i, turn) in turns.iter().enumerate() {
            values.push(text(turn));
            defs.push(4);
            reps.push(i16::from(i > 0));
        }
    }
    (values, defs, reps)
}

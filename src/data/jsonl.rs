//! JSON lines: one JSON value per line, blank lines ignored; or, as `datasets` also reads `.json`
//! files, one JSON array of rows. Rows are handed on one at a time (an array's elements as they
//! are parsed) so a large file is never held in memory as JSON values.

use std::io::{BufRead, Read};
use std::ops::ControlFlow;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Longest line read; a row is one prompt and a response or two.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Calls `sink(line, row)` for every non-blank line (1-based line numbers) of `reader`, the
/// contents of `path`, until `sink` says `Break`. A line that is not valid JSON stops the read with
/// an error naming the file and line.
pub(super) fn read_rows(
    path: &Path,
    mut reader: impl BufRead,
    sink: &mut dyn FnMut(usize, Value) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut seen_row = false;
    let mut buf = Vec::new();
    for i in 0.. {
        let line_no = i + 1;
        buf.clear();
        // At most one line's worth, so a file without newlines (or /dev/zero) cannot fill memory.
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if buf.len() > MAX_LINE_BYTES {
            return Err(Error::Data {
                path: path.to_path_buf(),
                line: line_no,
                message: format!(
                    "longer than {} MiB (is this a JSON lines file?)",
                    MAX_LINE_BYTES >> 20
                ),
            });
        }
        let line = std::str::from_utf8(&buf).map_err(|_| Error::Data {
            path: path.to_path_buf(),
            line: line_no,
            message: "not valid UTF-8 (is this a JSON lines file?)".into(),
        })?;
        // A UTF-8 byte-order mark (some Windows tools write one) is not JSON.
        let text = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if text.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(text);
        // As `datasets` does: a file whose first line opens an array (or is an array of objects)
        // is one JSON array of rows (re-read from its start, blank lines kept for line numbers).
        if !seen_row && opens_array(text, &parsed) {
            let mut head = "\n".repeat(i).into_bytes();
            head.extend_from_slice(text.as_bytes());
            head.push(b'\n');
            return read_array(path, std::io::Cursor::new(head).chain(reader), sink);
        }
        let row: Value = parsed.map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: line_no,
            message: invalid_line(&e, text, seen_row),
        })?;
        seen_row = true;
        if sink(line_no, row)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Whether a file's first row `text` (parsed as `parsed`) opens one JSON array of rows: it does
/// not parse alone but starts with `[`, or it is `[{…}, {…}]` on one line (rows are objects).
fn opens_array(text: &str, parsed: &serde_json::Result<Value>) -> bool {
    match parsed {
        Err(_) => text.trim_start().starts_with('['),
        Ok(Value::Array(items)) => !items.is_empty() && items.iter().all(Value::is_object),
        Ok(_) => false,
    }
}

/// What a line that is not JSON gets told (a pretty-printed object spans lines: say what a row
/// looks like).
fn invalid_line(e: &serde_json::Error, text: &str, seen_row: bool) -> String {
    if !seen_row && text.trim_start().starts_with('{') {
        format!(
            "invalid JSON: {e}. wgspin reads JSON lines (one object per line) or one JSON array of \
             objects; convert a pretty-printed file with `jq -c '.[]' in.json > out.jsonl`"
        )
    } else {
        format!(
            "invalid JSON: {e} (expected one JSON object per line, e.g. {{\"prompt\": ..., \"response\": ...}})"
        )
    }
}

/// One JSON array of rows: `sink(index, row)` for each element (1-based) as it is parsed, until
/// `sink` says `Break`. Malformed JSON is an error naming the file, line and column.
fn read_array(
    path: &Path,
    reader: impl BufRead,
    sink: &mut dyn FnMut(usize, Value) -> Result<ControlFlow<()>>,
) -> Result<()> {
    use serde::de::{Deserializer as _, SeqAccess, Visitor};

    struct Rows<'a> {
        sink: &'a mut dyn FnMut(usize, Value) -> Result<ControlFlow<()>>,
        /// What stopped the read: the sink's own error, or its `Break`.
        stopped: Option<Result<()>>,
    }
    impl<'de> Visitor<'de> for &mut Rows<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of rows")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            let mut index = 0;
            while let Some(row) = seq.next_element::<Value>()? {
                index += 1;
                match (self.sink)(index, row) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(())) => {
                        self.stopped = Some(Ok(()));
                        return Err(serde::de::Error::custom("stopped"));
                    }
                    Err(e) => {
                        self.stopped = Some(Err(e));
                        return Err(serde::de::Error::custom("stopped"));
                    }
                }
            }
            Ok(())
        }
    }

    let mut rows = Rows {
        sink,
        stopped: None,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = (&mut de).deserialize_seq(&mut rows).and_then(|()| de.end());
    match (rows.stopped, parsed) {
        (Some(stopped), _) => stopped,
        (None, Ok(())) => Ok(()),
        (None, Err(e)) => Err(Error::Data {
            path: path.to_path_buf(),
            line: e.line(),
            message: format!("invalid JSON in the file's array of rows: {e}"),
        }),
    }
}

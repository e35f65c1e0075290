//! JSON lines: one JSON value per line, blank lines ignored. Rows are handed on one at a time so a
//! large file is never held in memory as JSON values.

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
        let row: Value = serde_json::from_str(text).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: line_no,
            message: if !seen_row && text.trim_start().starts_with('[') {
                // A whole-file JSON array (pretty-printed) fails on its first line; say what to do.
                format!(
                    "invalid JSON: {e}. This looks like one JSON array; wgspin reads JSON lines \
                     (one object per line), e.g. convert with `jq -c '.[]' in.json > out.jsonl`"
                )
            } else {
                format!(
                    "invalid JSON: {e} (expected one JSON object per line, e.g. {{\"prompt\": ..., \"response\": ...}})"
                )
            },
        })?;
        seen_row = true;
        if sink(line_no, row)?.is_break() {
            break;
        }
    }
    Ok(())
}

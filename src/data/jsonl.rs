//! JSON lines: one JSON value per line, blank lines ignored. Rows are handed on one at a time so a
//! large file is never held in memory as JSON values.

use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Calls `sink(line, row)` for every non-blank line (1-based line numbers). A line that is not
/// valid JSON stops the read with an error naming the file and line.
pub(super) fn read_rows(
    path: &Path,
    sink: &mut dyn FnMut(usize, Value) -> Result<()>,
) -> Result<()> {
    let file = super::open(path)?;
    let mut seen_row = false;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::Data {
                path: path.to_path_buf(),
                line: line_no,
                message: "not valid UTF-8 (is this a JSON lines file?)".into(),
            },
            _ => Error::io(path, e),
        })?;
        // A UTF-8 byte-order mark (some Windows tools write one) is not JSON.
        let text = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
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
        sink(line_no, row)?;
    }
    Ok(())
}

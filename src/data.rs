//! Input rows for scoring: JSONL lines `{"prompt": str, "response": str}` (extra fields ignored).
//! A malformed line is an error naming the file and line number.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PromptResponse {
    pub prompt: String,
    pub response: String,
}

/// Reads every non-blank line of a JSONL file.
pub fn read_prompt_responses(path: &Path) -> Result<Vec<PromptResponse>> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            hint: "Pass --data a JSONL file with one {\"prompt\", \"response\"} object per line."
                .into(),
        },
        _ => Error::io(path, e),
    })?;
    let mut rows = vec![];
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: PromptResponse = serde_json::from_str(&line).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!(
                "expected a JSON object with string fields \"prompt\" and \"response\": {e}"
            ),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

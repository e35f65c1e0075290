//! TensorBoard event files (`--report-to tensorboard`): each logged training step as scalars under
//! TRL's names, so a wgspin run sits beside TRL runs in one TensorBoard.
//!
//! Written here rather than with a crate: the one Rust crate for it (tensorboard-rs) has been
//! inactive since 2022 and pulls protobuf 2 and an image codec, while scalars need only two small
//! protobuf messages in TFRecord framing:
//! - a record is `len: u64 LE | masked crc32c(len) | data | masked crc32c(data)`;
//! - `Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }`,
//!   `Summary { repeated Value value = 1; }`, `Value { string tag = 1; float simple_value = 2; }`.
//!
//! The first record of a file carries `file_version = "brain.Event:2"`, as TensorFlow writes it;
//! the second a `SessionLog { status = START }` (Event field 7) at the first step this process will
//! log, which makes TensorBoard drop every point of an interrupted run from that step on.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The folder of a training output that holds the event files (TRL's default `logging_dir`).
pub const RUNS_DIR: &str = "runs";

/// metrics.jsonl keys → the names TRL's trainers log (DPO's chosen / rejected for SPIN's real /
/// generated), under the `train/` prefix the Hugging Face Trainer adds.
const TRL_NAMES: &[(&str, &str)] = &[
    ("loss", "train/loss"),
    ("lr", "train/learning_rate"),
    ("grad_norm", "train/grad_norm"),
    ("epoch", "train/epoch"),
    ("rewards/real", "train/rewards/chosen"),
    ("rewards/generated", "train/rewards/rejected"),
    ("rewards/margins", "train/rewards/margins"),
    ("rewards/accuracies", "train/rewards/accuracies"),
    ("logps/real", "train/logps/chosen"),
    ("logps/generated", "train/logps/rejected"),
    ("tokens/s", "train/tokens_per_second"),
    ("loss_scale", "train/loss_scale"),
];

/// The TensorBoard tag of a metrics.jsonl key (`None` for keys that are not scalars to plot).
pub fn trl_name(key: &str) -> Option<&'static str> {
    TRL_NAMES.iter().find(|(k, _)| *k == key).map(|(_, t)| *t)
}

/// An open event file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created). Every process writes its own file, named as
    /// TensorFlow names them (`events.out.tfevents.<seconds>.<host>.<n>`); TensorBoard reads the
    /// files of a folder in name order as one run, so `n` counts the files already there: a
    /// resumed run's file sorts after the interrupted one's even within the same second. Its
    /// session start at `first_step` makes TensorBoard drop the interrupted run's points from
    /// there on, as metrics.jsonl drops its rows.
    pub fn create(dir: &Path, first_step: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let earlier = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("tfevents"))
            .count();
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.wgspin.{earlier:04}",
            now.as_secs()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = Self { file, path };
        let mut event = vec![];
        field_double(&mut event, 1, now.as_secs_f64());
        field_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        let mut start = vec![];
        field_double(&mut start, 1, now.as_secs_f64());
        start.push(2 << 3);
        varint(&mut start, first_step);
        // SessionLog { status = START (1) }: field 1, varint.
        field_bytes(&mut start, 7, &[1 << 3, 1]);
        w.record(&start)?;
        Ok(w)
    }

    /// Writes one metrics.jsonl row (`{"step", "loss", ...}`) as an event of scalars with TRL's
    /// names; keys without one are left out.
    pub fn metrics_row(&mut self, row: &Value) -> Result<()> {
        let step = row.get("step").and_then(Value::as_u64).unwrap_or(0);
        let scalars: Vec<(&str, f64)> = row
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((trl_name(k)?, v.as_f64()?)))
            .collect();
        self.scalars(step, &scalars)
    }

    /// Writes `values` (tag, value) at `step`, stamped with the current time, and flushes.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut summary = vec![];
        for (tag, v) in values {
            let mut value = vec![];
            field_bytes(&mut value, 1, tag.as_bytes());
            // Key of field 2 with wire type 5 (32-bit): TensorBoard's scalars are f32.
            value.push((2 << 3) | 5);
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &value);
        }
        let mut event = vec![];
        field_double(&mut event, 1, wall);
        // Field 2, varint: the step as int64 (two's complement for negatives, never here).
        event.push(2 << 3);
        varint(&mut event, step);
        field_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of data holding CRCs is not
/// degenerate.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2): strings, bytes, embedded messages.
fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A 64-bit field (wire type 1): doubles.
fn field_double(out: &mut Vec<u8>, field: u64, v: f64) {
    varint(out, (field << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorboards() {
        // Values from tensorboard 2.21's own masked_crc32c (compat.tensorflow_stub).
        assert_eq!(masked_crc(b"wgspin"), 0xb945_e45c);
        assert_eq!(masked_crc(&0u64.to_le_bytes()), 0x0798_0329);
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut v = vec![];
        varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
    }
}

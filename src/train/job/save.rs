//! The writing side of a training run: `metrics.jsonl` (and TensorBoard events) a row per logging
//! step, and the checkpoint saved with its card, `trainer_state.json` and, while the run is not
//! finished, the optimizer state to resume from.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{METRICS_FILE, OPTIMIZER_FILE, RUNS_DIR, STATE_FILE};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::hf::weights::StoredDtype;
use crate::load::checkpoint;
use crate::report::ReportTo;
use crate::report::tensorboard::EventWriter;
use crate::train::card::{CardFacts, RunNotes, training_section};
use crate::train::{StepMetrics, TrainConfig, Trainer};

type Compute = burn::tensor::DType;

/// `metrics.jsonl`, appended a row per logging step (and the TensorBoard events beside it).
pub(super) struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    events: Option<EventWriter>,
}

impl MetricsLog {
    /// Opens the log of a run at `resume_step`: rows past it came from work that was lost, and
    /// are dropped.
    pub(super) fn open(
        out: &Path,
        resume_step: usize,
        notes: &RunNotes,
        trainer: &Trainer,
    ) -> Result<Self> {
        let path = out.join(METRICS_FILE);
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| (s as usize) <= resume_step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fsutil::write_atomic(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let events = match notes.report_to {
            ReportTo::Tensorboard if !trainer.is_done() => Some(EventWriter::create(
                &out.join(RUNS_DIR),
                trainer.state.step as u64 + 1,
            )?),
            _ => None,
        };
        Ok(Self { path, file, events })
    }

    pub(super) fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let row = m.to_json();
        writeln!(self.file, "{row}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        if let Some(w) = self.events.as_mut() {
            w.metrics_row(&row)?;
        }
        Ok(())
    }
}

/// What a save of the run needs beside the trainer; holds the output folder's lock.
pub(super) struct Saver<'a> {
    pub(super) ckpt: PathBuf,
    pub(super) out: &'a Path,
    pub(super) model_path: &'a Path,
    pub(super) base_name: String,
    pub(super) identity: Value,
    pub(super) compute: Compute,
    pub(super) notes: &'a RunNotes,
    pub(super) cfg: &'a TrainConfig,
    /// The input's stored dtype, and the folder its config and tokenizer files come from.
    pub(super) dtype: StoredDtype,
    pub(super) source_dir: PathBuf,
    pub(super) _folder: crate::job::RunFolder<'a>,
}

impl Saver<'_> {
    /// Saves the checkpoint (with its card and `trainer_state.json`); a run not `complete` keeps
    /// its optimizer state to resume from.
    pub(super) fn save(
        &self,
        trainer: &Trainer,
        complete: bool,
        last: Option<&StepMetrics>,
    ) -> Result<()> {
        let card = self.card(trainer, last);
        let state = json!({
            "step": trainer.state.step,
            "total_steps": trainer.state.plan.total_steps,
            "complete": complete,
            "source_model": self.model_path.to_string_lossy(),
            "identity": self.identity,
            "config": serde_json::to_value(&trainer.state.cfg).unwrap_or(Value::Null),
            "loss_scaler": trainer.state.scaler,
        });
        let mut extra = vec![(
            STATE_FILE,
            serde_json::to_string_pretty(&state)
                .unwrap_or_default()
                .into_bytes(),
        )];
        if !complete {
            extra.push((OPTIMIZER_FILE, self.optimizer_bytes(trainer)?));
        }
        if self.cfg.lora.enabled() {
            return crate::load::adapter::save(
                &trainer.state.model,
                &self.cfg.lora,
                &self.base_name,
                &self.ckpt,
                Some(&card),
                &extra,
            );
        }
        // A resumable checkpoint keeps the f32 master weights (a bf16 round trip would change
        // the continued run); the finished one is stored like the input.
        let save_dtype = if complete {
            self.dtype
        } else {
            StoredDtype::F32
        };
        checkpoint::save(
            &trainer.state.model,
            &self.source_dir,
            &self.ckpt,
            save_dtype,
            Some(&card),
            &extra,
        )
    }

    /// The model card's training section.
    fn card(&self, trainer: &Trainer, last: Option<&StepMetrics>) -> String {
        let compute = self.compute;
        training_section(&CardFacts {
            base: &self.model_path.to_string_lossy(),
            identity: &self.identity,
            cfg: &trainer.state.cfg,
            compute: serde_json::to_value(compute)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{compute:?}")),
            notes: self.notes,
            step: trainer.state.step,
            total_steps: trainer.state.plan.total_steps,
            last,
        })
    }

    /// The optimizer's state as saved beside the weights.
    fn optimizer_bytes(&self, trainer: &Trainer) -> Result<Vec<u8>> {
        let tmp = self
            .out
            .join(format!(".optimizer.tmp-{}", std::process::id()));
        trainer.state.optimizer.save(&tmp, &trainer.state.model)?;
        let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let _ = std::fs::remove_file(&tmp);
        Ok(bytes)
    }
}

//! The "Training" section of a checkpoint's model card (README.md), as TRL writes one for the
//! Hub: what the model was trained from and on (with content hashes, so a card names exactly
//! which model and data), how (SPIN iteration, loss and β, or SFT; optimizer, schedule, batch,
//! precision, LoRA), how far, the last logged metrics, and the command that ran it. `wgspin spin`
//! adds the held-out evaluation of each iteration once it has run.

use serde_json::Value;

use super::TrainConfig;
use super::trainer::StepMetrics;

/// Heading of the section `spin` appends after evaluating an iteration.
pub const EVAL_HEADING: &str = "## Held-out evaluation";

/// What a training run records beyond its settings, for its model card and reports. None of it
/// changes the result, so none of it is compared on resume.
#[derive(Debug, Clone, Default)]
pub struct RunNotes {
    /// Where metrics go besides metrics.jsonl.
    pub report_to: crate::report::ReportTo,
    /// The data file, as the user named it.
    pub data: Option<String>,
    /// The command line that started the run.
    pub command: Option<String>,
    /// The SPIN iteration t this run trains (θ_t → θ_{t+1}), under `wgspin spin`.
    pub iteration: Option<usize>,
}

/// What the card states about one run.
pub struct CardFacts<'a> {
    /// `--model` as given.
    pub base: &'a str,
    /// The run identity recorded in trainer_state.json (model and data hashes).
    pub identity: &'a Value,
    pub cfg: &'a TrainConfig,
    /// The precision training computed in (`--dtype auto` resolved for the device).
    pub compute: String,
    pub notes: &'a RunNotes,
    pub step: usize,
    pub total_steps: usize,
    pub last: Option<&'a StepMetrics>,
}

/// The Markdown "Training" section.
pub fn training_section(f: &CardFacts) -> String {
    let cfg = f.cfg;
    let json = serde_json::to_value(cfg).unwrap_or(Value::Null);
    let word = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    // Hex digests are ASCII, so the byte cut is a char boundary.
    let hash = |what: &str, v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|h| h.is_ascii())
            .map(|h| format!(" ({what} `{}`)", &h[..h.len().min(16)]))
            .unwrap_or_default()
    };
    let mut rows: Vec<(&str, String)> = vec![(
        "base model",
        format!(
            "`{}`{}",
            f.base,
            hash(
                "sha256",
                f.identity.get("model").and_then(|m| m.get("sha256"))
            )
        ),
    )];
    let data_hash = f
        .identity
        .get("pairs_sha256")
        .or_else(|| f.identity.get("data_sha256"));
    let data_name = f.notes.data.as_deref().unwrap_or("(not recorded)");
    // A hash of the examples as read (the same rows in another file format hash the same).
    rows.push((
        "data",
        format!("`{data_name}`{}", hash("content sha256", data_hash)),
    ));
    let method = cfg.objective.card_method(cfg, f.notes.iteration);
    rows.push(("method", method));
    rows.push((
        "optimizer",
        format!(
            "{}, lr {:e}, {} schedule with warmup ratio {}, weight decay {}, max grad norm {}",
            word("optimizer"),
            cfg.lr,
            word("schedule"),
            cfg.warmup_ratio,
            cfg.weight_decay,
            cfg.max_grad_norm
        ),
    ));
    rows.push((
        "batch",
        format!(
            "{} × {} gradient accumulation, {} epochs, max length {} (prompt {}), data seed {}",
            cfg.batch_size,
            cfg.grad_accum,
            cfg.epochs,
            cfg.max_length,
            cfg.max_prompt_length,
            cfg.data_seed
        ),
    ));
    let lora = if cfg.lora.enabled() {
        format!(
            "; LoRA rank {}, alpha {}, dropout {} on {}",
            cfg.lora.rank,
            cfg.lora.alpha(),
            cfg.lora.dropout,
            crate::model::lora::target_list(&cfg.lora.targets)
        )
    } else {
        "; all parameters".to_string()
    };
    let checkpointing = if cfg.gradient_checkpointing {
        ", gradient checkpointing"
    } else {
        ""
    };
    rows.push(("precision", format!("{}{lora}{checkpointing}", f.compute)));
    rows.push(("steps", format!("{} of {}", f.step, f.total_steps)));
    if let Some(m) = f.last {
        rows.push(("last step", last_step(m)));
    }
    let mut text = format!(
        "## Training\n\nTrained with wgspin {}.\n\n| | |\n|---|---|\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in rows {
        text.push_str(&format!("| {k} | {} |\n", v.replace('|', "\\|")));
    }
    if let Some(cmd) = &f.notes.command {
        text.push_str(&format!("\nCommand:\n\n```sh\n{cmd}\n```\n"));
    }
    text
}

/// The "last step" row: the loss and, where the objective logs them, TRL's reward statistics.
fn last_step(m: &StepMetrics) -> String {
    let row = m.to_json();
    let keys = [
        "loss",
        "rewards/accuracies",
        "rewards/margins",
        "rewards/real",
        "rewards/generated",
    ];
    let metrics: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            row.get(*k)
                .and_then(Value::as_f64)
                .map(|v| format!("{k} {v:.4}"))
        })
        .collect();
    format!("step {}: {}", m.step, metrics.join(", "))
}

/// The held-out evaluation section `spin` appends: each metric of the iteration's eval.json.
pub fn eval_section(iteration: usize, eval: &Value) -> String {
    let mut text = format!(
        "\n{EVAL_HEADING}\n\nIteration {iteration}, on held-out prompts (real responses vs θ{iteration}'s):\n\n| metric | value |\n|---|---|\n"
    );
    if let Some(map) = eval.as_object() {
        for (k, v) in map {
            if let Some(x) = v.as_f64() {
                text.push_str(&format!("| {k} | {x:.4} |\n"));
            }
        }
    }
    text
}

//! The game of a `wgspin spin` folder, read back for `report.html`: per iteration, a sample of
//! held-out prompts with the human answer, θ_t's generated answer and the reward margin θ_{t+1}
//! gives the pair. The held-out prompts are the same in every iteration, so the sample (chosen by
//! a seed) follows the same prompts through the run; the prompts whose margin moved most since
//! the previous iteration are added, since they show what training changed.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::html::{GameIteration, Round};
use crate::data::{DataFormat, read_dataset};

/// The settings a `wgspin spin` run was started with (written by the CLI before the first stage).
pub const CONFIG_FILE: &str = "spin_config.json";
/// Per held-out pair of an iteration: its id and θ_{t+1}'s reward margin (`iter-T/`).
pub const EVAL_MARGINS_FILE: &str = "eval_margins.jsonl";
/// An iteration's held-out pairs: the human answer and θ_t's (`iter-T/`).
pub const EVAL_GENERATED_FILE: &str = "eval_generated.jsonl";
/// An iteration's held-out results (`iter-T/`): reward accuracy and margin, loss, log-likelihoods.
pub const EVAL_FILE: &str = "eval.json";

/// Prompts per iteration chosen by the seed.
pub const SAMPLED: usize = 6;
/// Prompts per iteration added because their margin moved most.
pub const MOVED: usize = 3;

/// θ_{t+1}'s margin per held-out pair id, from `iter-T/eval_margins.jsonl`.
fn margins(dir: &Path) -> HashMap<String, f64> {
    super::plot::read_jsonl(&dir.join(EVAL_MARGINS_FILE))
        .into_iter()
        .filter_map(|v| {
            Some((
                v.get("id")?.as_str()?.to_string(),
                v.get("margin")?.as_f64()?,
            ))
        })
        .collect()
}

/// An id's place in the seed's order: the same id gets the same place in every iteration.
fn rank(seed: u64, id: &str) -> u64 {
    let mut h = crate::rng::SplitMix64(seed);
    for b in id.bytes() {
        h = crate::rng::SplitMix64(h.next() ^ u64::from(b));
    }
    h.next()
}

/// The game of the spin run in `dir`: one entry per iteration whose held-out answers exist
/// (generated so far), in order.
pub fn spin_game(dir: &Path, seed: u64) -> Vec<GameIteration> {
    let mut out: Vec<GameIteration> = vec![];
    let mut chosen: Vec<String> = vec![];
    let mut before: HashMap<String, f64> = HashMap::new();
    for t in 0.. {
        let it = dir.join(format!("iter-{t}"));
        if !it.is_dir() {
            break;
        }
        // Still being generated, or not yet: nothing of this iteration to show.
        let Ok(ds) = read_dataset(&it.join(EVAL_GENERATED_FILE), DataFormat::Spin) else {
            break;
        };
        if chosen.is_empty() {
            let mut ids: Vec<&str> = ds.examples.iter().map(|e| e.id.as_str()).collect();
            ids.sort_by_key(|id| rank(seed, id));
            chosen = ids.iter().take(SAMPLED).map(|s| s.to_string()).collect();
        }
        let now = margins(&it);
        let sampled: HashSet<&str> = chosen.iter().map(String::as_str).collect();
        let mut moved: Vec<(f64, &str)> = now
            .iter()
            .filter(|(id, _)| !sampled.contains(id.as_str()))
            .filter_map(|(id, m)| Some(((m - before.get(id)?).abs(), id.as_str())))
            .collect();
        moved.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        let moved: HashSet<&str> = moved.iter().take(MOVED).map(|&(_, id)| id).collect();
        let rounds = ds
            .examples
            .iter()
            .filter(|e| sampled.contains(e.id.as_str()) || moved.contains(e.id.as_str()))
            .map(|e| Round {
                id: e.id.clone(),
                prompt: e.prompt.clone(),
                human: e.response.clone(),
                generated: e.generated.clone().unwrap_or_default(),
                margin: now.get(&e.id).copied(),
                moved: moved.contains(e.id.as_str()),
            })
            .collect();
        let reward_accuracy = std::fs::read_to_string(it.join(EVAL_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("reward_accuracy")?.as_f64());
        out.push(GameIteration {
            iteration: t,
            reward_accuracy,
            rounds,
        });
        before = now;
    }
    out
}

/// What the game shows, in plain words (the page puts it beside the section).
pub const EXPLAIN: &str = "SPIN is a game between the model and its earlier self. In iteration t \
the opponent θt (frozen) answers every prompt; the main player θt+1 is trained to prefer the \
human answer over θt's own. Below, for held-out prompts the training never saw (the same prompts \
in every iteration, chosen by the seed, plus the ones whose margin moved most), the human answer \
and θt's answer side by side, with the words where they differ marked. The margin is how much \
more θt+1 favours the human answer than θt did, relative to θt: above 0 it tells them apart. \
When θt writes exactly the human answer, the pair is a tie: nothing is left to learn from it. \
SPIN has converged when θt+1 can no longer tell real from generated (held-out reward accuracy \
near 50%).";

/// The page of a `spin` (or `train`) output folder as it stands: the settings from its
/// `spin_config.json`, the held-out results per iteration, the game and the curves.
pub fn run_page(
    dir: &Path,
    status: Option<super::html::Status>,
    command: Option<&str>,
) -> super::html::Page {
    let config: Value = std::fs::read_to_string(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let at = |path: &[&str]| -> Option<String> {
        let mut v = &config;
        for k in path {
            v = v.get(*k)?;
        }
        Some(match v {
            Value::String(s) => s.clone(),
            Value::Null => return None,
            other => other.to_string(),
        })
    };
    let mut glance: Vec<(String, String)> = [
        ("model", &["model"][..]),
        ("data", &["data"]),
        ("iterations", &["spin", "iterations"]),
        ("held-out prompts", &["spin", "eval_size"]),
        ("loss, β", &["train", "loss"]),
        ("learning rate", &["train", "lr"]),
        ("LoRA rank (0 = full)", &["train", "lora", "rank"]),
        ("dtype", &["train", "dtype"]),
        ("sampling", &["sampling"]),
    ]
    .iter()
    .filter_map(|(label, path)| Some((label.to_string(), at(path)?)))
    .collect();
    if let Some(c) = command {
        glance.push(("command".into(), c.to_string()));
    }
    glance.insert(0, ("output folder".into(), dir.display().to_string()));
    let seed = config
        .pointer("/sampling/seed")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let game = spin_game(dir, seed);
    let results: Vec<Vec<String>> = game
        .iter()
        .filter_map(|g| {
            Some(vec![
                g.iteration.to_string(),
                format!("{:.1}%", 100.0 * g.reward_accuracy?),
            ])
        })
        .collect();
    let mut tables = vec![];
    if !results.is_empty() {
        tables.push(super::html::Table {
            caption: "Held-out reward accuracy per iteration".into(),
            explain: "How often θt+1 prefers the human answer over θt's own on the held-out \
                      prompts; 50% means it can no longer tell them apart (SPIN has converged)."
                .into(),
            head: vec!["iteration t".into(), "reward accuracy".into()],
            rows: results,
        });
    }
    let charts = super::plot::run_panels(dir).ok().map(|panels| {
        (
            super::plot::svg(&format!("wgspin: {}", dir.display()), &panels),
            "Training curves per optimizer step, steps counted across iterations, and the \
             held-out reward accuracy per iteration. Each panel says what it shows."
                .to_string(),
        )
    });
    let kind = if config.is_null() { "training" } else { "SPIN" };
    super::html::Page {
        title: format!("wgspin {kind} run: {}", dir.display()),
        status,
        glance,
        tables,
        charts,
        game,
        game_explain: EXPLAIN.into(),
        ..Default::default()
    }
}

/// Writes `dir/report.html` for the run folder `dir` as it stands; returns its path.
pub fn write_run_page(
    dir: &Path,
    status: Option<super::html::Status>,
    command: Option<&str>,
) -> crate::error::Result<std::path::PathBuf> {
    super::html::write(dir, &run_page(dir, status, command))
}

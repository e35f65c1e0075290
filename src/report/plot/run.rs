//! The panels of a `wgspin spin` output folder: loss, reward margins and reward accuracy per
//! training step across iterations, and held-out metrics per iteration.

use std::path::Path;

use serde_json::Value;

use super::{Panel, Series, svg};
use crate::error::{Error, Result};

/// The rows of a JSON lines file a run wrote, skipping what does not parse (a torn last line);
/// none when it is missing.
pub(crate) fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Panels of a `wgspin spin` output folder: per-step training curves (steps counted across
/// iterations) and the held-out metrics per iteration.
pub fn run_panels(dir: &Path) -> Result<Vec<Panel>> {
    let mut iters = vec![];
    for t in 0.. {
        let d = dir.join(format!("iter-{t}"));
        if !d.is_dir() {
            break;
        }
        iters.push(d);
    }
    if iters.is_empty() && !dir.join("metrics.jsonl").exists() {
        return Err(Error::Invalid(format!(
            "{}: no iter-*/metrics.jsonl or metrics.jsonl; pass the --out folder of `wgspin spin` or `wgspin train`",
            dir.display()
        )));
    }
    if iters.is_empty() {
        iters.push(dir.to_path_buf());
    }
    let chance = || Some((0.5, "chance (50%)".to_string()));
    let keys = [
        (
            "loss",
            Panel {
                title: "SPIN loss".into(),
                caption: "How badly the model still confuses the human answers with its own \
                          earlier generations (lower is better). It starts over at each new \
                          iteration, when the opponent becomes the latest model."
                    .into(),
                ..Panel::default()
            },
        ),
        (
            "rewards/margins",
            Panel {
                title: "reward margin (real − generated)".into(),
                caption: "How much more the model favours the human answer than its opponent's \
                          generation, relative to the opponent; above 0 means it tells them apart."
                    .into(),
                reference_y: Some((0.0, "no preference".into())),
                ..Panel::default()
            },
        ),
        (
            "rewards/accuracies",
            Panel {
                title: "reward accuracy (training pairs)".into(),
                caption: "Share of each batch's training pairs where the model prefers the human \
                          answer to its opponent's; 50% is a coin flip."
                    .into(),
                reference_y: chance(),
                y_percent: true,
                ..Panel::default()
            },
        ),
    ];
    let mut panels: Vec<Panel> = keys
        .iter()
        .map(|(_, p)| Panel {
            x_label: "optimizer step".into(),
            ..p.clone()
        })
        .collect();
    let mut offset = 0.0;
    for (t, d) in iters.iter().enumerate() {
        let rows = read_jsonl(&d.join("metrics.jsonl"));
        for (panel, (key, _)) in panels.iter_mut().zip(&keys) {
            let points = rows
                .iter()
                .filter_map(|r| Some((offset + r.get("step")?.as_f64()?, r.get(*key)?.as_f64()?)))
                .collect();
            panel
                .series
                .push(Series::line(format!("iteration {t}"), points));
        }
        offset += rows
            .last()
            .and_then(|r| r.get("step")?.as_f64())
            .unwrap_or(0.0);
    }
    let evals: Vec<Value> = iters
        .iter()
        .filter_map(|d| {
            serde_json::from_str(
                &std::fs::read_to_string(d.join(super::super::game::EVAL_FILE)).ok()?,
            )
            .ok()
        })
        .collect();
    if !evals.is_empty() {
        let series = |key: &str, name: &str| {
            let points = evals
                .iter()
                .enumerate()
                .filter_map(|(t, e)| Some((t as f64 + 1.0, e.get(key)?.as_f64()?)))
                .collect();
            Series::line(name, points)
        };
        panels.push(Panel {
            title: "held-out reward accuracy (θ_{t+1} vs θ_t)".into(),
            x_label: "iteration".into(),
            series: vec![series("reward_accuracy", "reward accuracy")],
            caption: "Share of held-out prompts where the trained model prefers the human answer \
                      over its own; SPIN has converged when this nears 50%."
                .into(),
            reference_y: chance(),
            y_percent: true,
        });
    }
    Ok(panels)
}

/// Writes `dir/report.svg` for a run folder; returns its path.
pub fn report_for_run(dir: &Path) -> Result<std::path::PathBuf> {
    let panels = run_panels(dir)?;
    let path = dir.join("report.svg");
    crate::fsutil::write_atomic(
        &path,
        svg(&format!("wgspin: {}", dir.display()), &panels).as_bytes(),
    )?;
    Ok(path)
}

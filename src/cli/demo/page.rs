//! The demo's `report.html`: what a class watches on a projector. The verdict in plain words
//! first, then the settings, the table of every stage, the game (one seed's held-out prompts
//! with the human answer beside the model's own, per SPIN iteration) and the charts, each with
//! `--explain`'s words beside it. Rewritten after every stage while the demo runs.

use std::path::Path;

use wgspin::report::html::{Page, Status, Table};
use wgspin::report::stats::{Interval, mean_sd, verdict};

use super::outcome::{DemoOutcome, StageResult};
use super::report::{TITLE, paired_by_round, panels, shown_seed};
use super::run::DemoConfig;

/// `--explain`, stage 1.
pub const SFT_STAGE: &str = "SFT (converged): supervised fine-tuning on (prompt, human answer) \
pairs, an epoch at a time. When neither exact match nor log-likelihood on a validation split has \
improved for a few epochs (a plateau), training goes back to the best epoch and the learning rate \
drops tenfold, down to the rate continued SFT uses; a plateau at that rate ends SFT, and the best \
epoch is kept. This is the model SPIN starts from, as in the SPIN paper: more SFT on the same data \
has stopped helping it.";
/// `--explain`, stage 2.
pub const SPIN_STAGE: &str = "SPIN iteration t: the current model (the opponent) answers every \
training prompt; a copy of it (the main player) is trained to tell the human answers from its \
own, raising the likelihood of the first and lowering that of the second relative to the \
opponent. The trained player becomes the next opponent. No new human data is used.";
/// `--explain`, stage 3.
pub const CONTINUED_STAGE: &str = "Continued SFT t: the same converged model trained further on \
the human answers alone, with the same number of sequences through forward and backward as SPIN \
iteration t.";
/// `--explain`, the table.
pub const READING: &str = "Exact match is the share of test prompts (never used for any \
decision) answered exactly right, (valid.) the same on the validation split; test ll/tok is the \
mean log-likelihood per token of the human answers (higher is better); reward acc is how often \
the player prefers the human answer over the opponent's on test prompts: SPIN has converged when \
it nears 50% (the player can no longer tell them apart). The last lines pair SPIN and continued \
SFT seed by seed and say whether the difference is larger than the seeds' spread (95% interval).";

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Test exact match per stage, mean and sample std over seeds, in the order stages first appear.
pub fn stage_means(rows: &[StageResult]) -> Vec<(String, f64, f64)> {
    let mut stages: Vec<&str> = vec![];
    for r in rows {
        if !stages.contains(&r.stage.as_str()) {
            stages.push(&r.stage);
        }
    }
    stages
        .into_iter()
        .filter_map(|s| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.stage == s)
                .map(|r| r.exact_match)
                .collect();
            mean_sd(&v).map(|(m, sd)| (s.to_string(), m, sd))
        })
        .collect()
}

/// The page for the demo in `out` as far as `outcome` goes.
pub fn page(
    out: &Path,
    cfg: &DemoConfig,
    outcome: &DemoOutcome,
    status: Option<Status>,
    command: &str,
) -> Page {
    let rows = &outcome.results;
    let paired = paired_by_round(rows, |r| r.exact_match);
    let verdict_text = paired.last().map(|(round, i)| {
        format!(
            "After {round} rounds: {}.",
            verdict("SPIN", "continued SFT", i)
        )
    });
    let glance = glance(out, cfg, command);
    let tables = tables(cfg, rows, &paired);
    // The game of the seed whose curves the charts show (once its SPIN has begun).
    let seed = shown_seed(rows).or(cfg.seeds.first().copied());
    let game = seed
        .map(|s| wgspin::report::game::spin_game(&out.join(format!("seed-{s}")).join("spin"), s))
        .unwrap_or_default();
    let game_explain = format!(
        "{SPIN_STAGE}\n\nSeed {}: {}",
        seed.unwrap_or_default(),
        wgspin::report::game::EXPLAIN
    );
    let charts = (!rows.is_empty()).then(|| {
        (
            wgspin::report::plot::svg(TITLE, &panels(out, outcome)),
            format!("{CONTINUED_STAGE} Each panel says what it shows."),
        )
    });
    Page {
        title: "wgspin demo: SPIN against continued SFT".into(),
        status,
        glance,
        glance_explain: SFT_STAGE.into(),
        verdict: verdict_text,
        tables,
        charts,
        game,
        game_explain,
    }
}

/// The page's "run at a glance": task, model, examples, seeds, SPIN settings, folder, command.
fn glance(out: &Path, cfg: &DemoConfig, command: &str) -> Vec<(String, String)> {
    let seeds: Vec<String> = cfg.seeds.iter().map(u64::to_string).collect();
    vec![
        ("task".to_string(), cfg.task.describe().to_string()),
        (
            "model".into(),
            format!("a tiny Llama made on the spot (hidden {})", cfg.hidden),
        ),
        (
            "examples".into(),
            format!(
                "{} training / {} validation / {} test",
                cfg.train_examples, cfg.validation_examples, cfg.test_examples
            ),
        ),
        ("seeds".into(), seeds.join(", ")),
        (
            "SPIN".into(),
            format!(
                "{} iterations, lr {:e}, β {}",
                cfg.spin_iterations, cfg.spin_lr, cfg.beta
            ),
        ),
        ("output folder".into(), out.display().to_string()),
        ("command".into(), command.to_string()),
    ]
}

/// Every stage of every seed, then (with more than one seed) the mean per stage and SPIN −
/// continued SFT paired by seed.
fn tables(cfg: &DemoConfig, rows: &[StageResult], paired: &[(usize, Interval)]) -> Vec<Table> {
    let mut tables = vec![Table {
        caption: "Every stage, every seed".into(),
        explain: READING.into(),
        head: [
            "seed",
            "stage",
            "exact match",
            "(valid.)",
            "test ll/tok",
            "reward acc",
            "margin",
            "time",
        ]
        .map(String::from)
        .to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.seed.to_string(),
                    r.stage.clone(),
                    pct(r.exact_match),
                    pct(r.validation_exact_match),
                    format!("{:.4}", r.heldout_loglik_per_token),
                    r.reward_accuracy.map(pct).unwrap_or_else(|| "-".into()),
                    r.reward_margin
                        .map(|m| format!("{m:.3}"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.1}s", r.seconds),
                ]
            })
            .collect(),
    }];
    if cfg.seeds.len() > 1 {
        let means = stage_means(rows);
        tables.push(Table {
            caption: format!(
                "Mean ± std over {} seeds (test exact match)",
                cfg.seeds.len()
            ),
            explain: String::new(),
            head: vec!["stage".into(), "exact match".into()],
            rows: means
                .into_iter()
                .map(|(s, m, sd)| vec![s, format!("{:.1}% ± {:.1}", 100.0 * m, 100.0 * sd)])
                .collect(),
        });
        tables.push(Table {
            caption: "SPIN − continued SFT, paired by seed".into(),
            explain: "Test exact-match points, mean over seeds with its 95% t-interval; an \
                      interval that holds 0 means no significant difference."
                .into(),
            head: vec!["round".into(), "difference".into()],
            rows: paired
                .iter()
                .map(|(k, i)| {
                    vec![
                        k.to_string(),
                        format!("{:+.1} ± {:.1}", i.mean, i.half_width),
                    ]
                })
                .collect(),
        });
    }
    tables
}

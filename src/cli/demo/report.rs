//! The demo's report.svg: what a class reads. Every curve is the mean over seeds with a ±1 std
//! band (sample std), on integer rounds; each panel has a caption in plain words.

use std::path::{Path, PathBuf};

use wgspin::error::Result;
use wgspin::report::plot::{Panel, Series, run_panels, svg};
use wgspin::report::stats::{Interval, mean_sd, paired_interval};

use super::outcome::{DemoOutcome, StageResult};

/// Mean and ±1 std band per x of the values given for each x; `share` clips the band to
/// [0, 1], where a share lives.
fn curve(name: &str, share: bool, xs: impl Iterator<Item = (f64, Vec<f64>)>) -> Series {
    let clip = |y: f64| if share { y.clamp(0.0, 1.0) } else { y };
    let (points, band) = xs
        .filter_map(|(x, v)| mean_sd(&v).map(|(m, sd)| ((x, m), (x, clip(m - sd), clip(m + sd)))))
        .unzip();
    Series::line(name, points).with_band(band)
}

/// A method's curve over rounds; round 0 is the converged SFT model both start from.
fn by_round(
    rows: &[StageResult],
    name: &str,
    method: &str,
    share: bool,
    f: fn(&StageResult) -> f64,
) -> Series {
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
    curve(
        name,
        share,
        (0..=rounds).map(|k| {
            let v = rows
                .iter()
                .filter(|r| r.round == k && (r.method == method || r.method == "start"))
                .map(f)
                .collect();
            (k as f64, v)
        }),
    )
}

/// Per round, SPIN − continued SFT paired by seed (same data, same converged start), in points of
/// `metric`, with its 95% t-interval.
pub fn paired_by_round(
    rows: &[StageResult],
    metric: fn(&StageResult) -> f64,
) -> Vec<(usize, Interval)> {
    let last_round = rows.iter().map(|r| r.round).max().unwrap_or(0);
    (1..=last_round)
        .filter_map(|round| {
            let diffs: Vec<f64> = rows
                .iter()
                .filter(|r| r.round == round && r.method == "spin")
                .filter_map(|spin| {
                    rows.iter()
                        .find(|r| r.round == round && r.method == "sft" && r.seed == spin.seed)
                        .map(|sft| 100.0 * (metric(spin) - metric(sft)))
                })
                .collect();
            paired_interval(&diffs).map(|i| (round, i))
        })
        .collect()
}

/// SPIN − continued SFT per round, paired by seed, with its 95% t-interval as the band: the
/// figure of the verdict sentence. Round 0 is the shared start, a difference of 0.
fn paired_panel(rows: &[StageResult]) -> Panel {
    let paired = paired_by_round(rows, |r| r.exact_match);
    let (mut points, mut band) = (vec![(0.0, 0.0)], vec![(0.0, 0.0, 0.0)]);
    for (round, i) in &paired {
        let x = *round as f64;
        points.push((x, i.mean));
        band.push((x, i.mean - i.half_width, i.mean + i.half_width));
    }
    Panel {
        title: "SPIN − continued SFT, paired by seed".into(),
        x_label: "round".into(),
        series: vec![Series::line("SPIN − continued SFT (test points)", points).with_band(band)],
        caption: "Difference in test exact match, in points, mean over seeds with its 95% \
                  t-interval. An interval that holds 0 means no significant difference."
            .into(),
        reference_y: Some((0.0, "no difference".into())),
        ..Default::default()
    }
}

/// The seed whose SPIN is shown (curves, the page's game): the one whose converged model is
/// nearest 50% right, as at the floor or the ceiling nearly every generated answer ties with the
/// human one and the curves are flat.
pub fn shown_seed(rows: &[StageResult]) -> Option<u64> {
    rows.iter()
        .filter(|r| r.method == "start")
        .min_by(|a, b| {
            (a.exact_match - 0.5)
                .abs()
                .total_cmp(&(b.exact_match - 0.5).abs())
        })
        .map(|r| r.seed)
}

/// The title of the demo's charts.
pub const TITLE: &str = "wgspin demo: SPIN vs continued SFT from converged SFT";

/// `report.svg`: [`panels`] drawn as one SVG; returns its path.
pub fn write_report(out: &Path, outcome: &DemoOutcome) -> Result<PathBuf> {
    let path = out.join("report.svg");
    wgspin::fsutil::write_atomic(&path, svg(TITLE, &panels(out, outcome)).as_bytes())?;
    Ok(path)
}

/// Test exact match and log-likelihood per round (SPIN vs continued SFT), SPIN's held-out reward
/// accuracy heading to 50%, the SFT plateau, and the shown seed's SPIN curves.
pub fn panels(out: &Path, outcome: &DemoOutcome) -> Vec<Panel> {
    let rows = &outcome.results;
    let seeds = outcome.sft_curves.len();
    let both = |share: bool, f: fn(&StageResult) -> f64| {
        vec![
            by_round(rows, "SPIN", "spin", share, f),
            by_round(rows, "continued SFT", "sft", share, f),
        ]
    };
    let round_axis = "round (SPIN iteration t / continued SFT with its compute)";
    let mut panels = vec![
        Panel {
            title: "Test exact match".into(),
            x_label: round_axis.into(),
            series: both(true, |r| r.exact_match),
            caption: format!(
                "Share of test prompts answered exactly right, mean over {seeds} seeds, band ±1 \
                 std. Round 0 is the converged SFT model both methods start from."
            ),
            y_percent: true,
            ..Default::default()
        },
        paired_panel(rows),
        Panel {
            title: "Test log-likelihood per token of the human answers".into(),
            x_label: round_axis.into(),
            series: both(false, |r| r.heldout_loglik_per_token),
            caption: "Higher is better. Continued SFT raises it directly; SPIN raises it \
                      relative to the model's own answers."
                .into(),
            ..Default::default()
        },
    ];
    let spin: Vec<&StageResult> = rows.iter().filter(|r| r.method == "spin").collect();
    let iterations = spin.iter().map(|r| r.round).max().unwrap_or(0);
    panels.push(Panel {
        title: "SPIN: held-out reward accuracy".into(),
        x_label: "SPIN iteration".into(),
        series: vec![curve(
            "SPIN",
            true,
            (1..=iterations).map(|k| {
                let v = spin
                    .iter()
                    .filter(|r| r.round == k)
                    .filter_map(|r| r.reward_accuracy)
                    .collect();
                (k as f64, v)
            }),
        )],
        caption: "How often the trained model prefers the human answer over its own on test \
                  prompts. Near 50% it can no longer tell them apart: SPIN has converged. An \
                  answer identical to the human one is a tie and counts as not preferred."
            .into(),
        reference_y: Some((0.5, "chance (50%)".into())),
        y_percent: true,
    });
    // One line per seed: seeds stop at different epochs, so a mean would jump where one stops.
    let per_seed = outcome
        .sft_curves
        .iter()
        .map(|c| {
            let points = c
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.validation_exact_match))
                .collect();
            Series::line(format!("seed {}", c.seed), points)
        })
        .collect();
    panels.push(Panel {
        title: "SFT to convergence: validation exact match".into(),
        x_label: "SFT epoch".into(),
        series: per_seed,
        caption: "One line per seed. At each plateau (no new best of validation exact match or \
                  log-likelihood for a few epochs) the learning rate drops tenfold, down to \
                  continued SFT's; a plateau there ends SFT. The best epoch is the start."
            .into(),
        y_percent: true,
        ..Default::default()
    });
    if let Some(seed) = shown_seed(rows) {
        let spin_dir = out.join(format!("seed-{seed}")).join("spin");
        if let Ok(p) = run_panels(&spin_dir) {
            panels.extend(p.into_iter().map(|p| Panel {
                title: format!("seed {seed}: {}", p.title),
                ..p
            }));
        }
    }
    panels
}

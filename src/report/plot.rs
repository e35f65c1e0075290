//! Plots as plain SVG: small multiples of line charts (one panel per metric), written without a
//! plotting dependency so the report renders in any browser and the crate builds fast everywhere.
//! `report_for_run` draws a `wgspin spin` output folder: loss, reward margins and reward
//! accuracy per training step across iterations, and held-out metrics per iteration.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// One named line: points (x, y).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart panel.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 420.0;
const H: f64 = 260.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

fn panel_svg(p: &Panel, ox: f64, oy: f64, out: &mut String) {
    let (l, r, t, b) = (56.0, 12.0, 28.0, 40.0);
    let pts: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let _ = write!(
        out,
        r##"<g transform="translate({ox},{oy})"><rect width="{W}" height="{H}" fill="white" stroke="#ccc"/><text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"##,
        W / 2.0,
        esc(&p.title)
    );
    if pts.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#888">no data</text></g>"##,
            W / 2.0,
            H / 2.0
        );
        return;
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (W - l - r);
    let sy = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (H - t - b);
    // Axes, ticks and labels.
    let _ = write!(
        out,
        r##"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="#333"/>"##,
        H - b,
        W - r,
        H - b,
        H - b
    );
    for i in 0..=4 {
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10">{}</text><text x="{:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"##,
            W - r,
            l - 4.0,
            sy(fy) + 3.0,
            nice(fy),
            sx(fx),
            H - b + 14.0,
            nice(fx),
            y = sy(fy)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
        (l + W - r) / 2.0,
        H - 6.0,
        esc(&p.x_label)
    );
    for (k, s) in p.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"##,
            path.join(" ")
        );
        if s.points.len() <= 12 {
            for p in &path {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    out,
                    r##"<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>"##
                );
            }
        }
        let _ = write!(
            out,
            r##"<rect x="{}" y="{}" width="10" height="3" fill="{color}"/><text x="{}" y="{}" font-size="10">{}</text>"##,
            l + 8.0,
            t + 6.0 + 13.0 * k as f64,
            l + 22.0,
            t + 10.0 + 13.0 * k as f64,
            esc(&s.name)
        );
    }
    out.push_str("</g>");
}

/// An SVG document of `panels`, two per row.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let cols = 2;
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (
        cols as f64 * (W + 10.0) + 10.0,
        rows as f64 * (H + 10.0) + 44.0,
    );
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif"><rect width="{w}" height="{h}" fill="#fafafa"/><text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"##,
        w / 2.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let (c, r) = (i % cols, i / cols);
        panel_svg(
            p,
            10.0 + c as f64 * (W + 10.0),
            40.0 + r as f64 * (H + 10.0),
            &mut out,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn read_jsonl(path: &Path) -> Vec<Value> {
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
    let keys = [
        ("loss", "SPIN loss"),
        ("rewards/margins", "reward margin (real − generated)"),
        ("rewards/accuracies", "reward accuracy (training pairs)"),
    ];
    let mut panels: Vec<Panel> = keys
        .iter()
        .map(|(_, title)| Panel {
            title: title.to_string(),
            x_label: "optimizer step".into(),
            series: vec![],
        })
        .collect();
    let mut offset = 0.0;
    for (t, d) in iters.iter().enumerate() {
        let rows = read_jsonl(&d.join("metrics.jsonl"));
        for (panel, (key, _)) in panels.iter_mut().zip(keys) {
            panel.series.push(Series {
                name: format!("iteration {t}"),
                points: rows
                    .iter()
                    .filter_map(|r| {
                        Some((offset + r.get("step")?.as_f64()?, r.get(key)?.as_f64()?))
                    })
                    .collect(),
            });
        }
        offset += rows
            .last()
            .and_then(|r| r.get("step")?.as_f64())
            .unwrap_or(0.0);
    }
    let evals: Vec<Value> = iters
        .iter()
        .filter_map(|d| {
            serde_json::from_str(&std::fs::read_to_string(d.join("eval.json")).ok()?).ok()
        })
        .collect();
    if !evals.is_empty() {
        let series = |key: &str, name: &str| Series {
            name: name.into(),
            points: evals
                .iter()
                .enumerate()
                .filter_map(|(t, e)| Some((t as f64 + 1.0, e.get(key)?.as_f64()?)))
                .collect(),
        };
        panels.push(Panel {
            title: "held-out reward accuracy (θ_{t+1} vs θ_t)".into(),
            x_label: "iteration".into(),
            series: vec![series("reward_accuracy", "reward accuracy")],
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

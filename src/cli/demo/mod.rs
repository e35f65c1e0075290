//! `wgspin demo` (and `wgspin` with no subcommand): the built-in SPIN demo with its live table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

mod model;
mod run;
mod task;

use run::{DemoConfig, DemoEvent, StageResult, run_demo};
use wgspin::report::progress::Progress;
use wgspin::report::stats::{paired_interval, verdict};
use wgspin::spin::SpinEvent;

use super::args::DeviceArgs;
use super::report::TrainReporter;

fn pct(x: f64) -> String {
    format!("{:5.1}%", 100.0 * x)
}

fn print_table(rows: &[StageResult]) {
    eprintln!();
    eprintln!(
        "{:<5} {:<22} {:>11} {:>16} {:>10} {:>9} {:>8}",
        "seed", "stage", "exact match", "held-out ll/tok", "reward acc", "margin", "time"
    );
    for r in rows {
        eprintln!(
            "{:<5} {:<22} {:>11} {:>16.4} {:>10} {:>9} {:>7.1}s",
            r.seed,
            r.stage,
            pct(r.exact_match),
            r.heldout_loglik_per_token,
            r.reward_accuracy.map(pct).unwrap_or_else(|| "-".into()),
            r.reward_margin
                .map(|m| format!("{m:.3}"))
                .unwrap_or_else(|| "-".into()),
            r.seconds
        );
    }
    eprintln!();
}

fn summary(rows: &[StageResult]) {
    let seeds: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.seed).collect();
    if seeds.len() < 2 {
        return;
    }
    eprintln!(
        "mean ± std over {} seeds (held-out exact match):",
        seeds.len()
    );
    let mut stages: Vec<&str> = vec![];
    for r in rows {
        if !stages.contains(&r.stage.as_str()) {
            stages.push(&r.stage);
        }
    }
    for s in stages {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.stage == s)
            .map(|r| r.exact_match)
            .collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        eprintln!("  {s:<22} {:5.1}% ± {:4.1}", 100.0 * m, 100.0 * sd);
    }
    paired_comparison(rows);
}

/// Per round, SPIN − continued SFT paired by seed (same data, same weak start) with its 95%
/// t-interval, then one sentence on the last round.
fn paired_comparison(rows: &[StageResult]) {
    let last_round = rows.iter().map(|r| r.round).max().unwrap_or(0);
    let mut last = None;
    for round in 1..=last_round {
        let diffs: Vec<f64> = rows
            .iter()
            .filter(|r| r.round == round && r.method == "spin")
            .filter_map(|spin| {
                rows.iter()
                    .find(|r| r.round == round && r.method == "sft" && r.seed == spin.seed)
                    .map(|sft| 100.0 * (spin.exact_match - sft.exact_match))
            })
            .collect();
        if let Some(i) = paired_interval(&diffs) {
            if round == 1 {
                eprintln!(
                    "SPIN − continued SFT, paired by seed (exact-match points, 95% t-interval):"
                );
            }
            eprintln!("  round {round}: {:+5.1} ± {:4.1}", i.mean, i.half_width);
            last = Some(i);
        }
    }
    if let Some(i) = last {
        eprintln!(
            "After {last_round} rounds: {}.",
            verdict("SPIN", "continued SFT", &i)
        );
    }
}

/// The built-in demo (what `wgspin` runs without a command): SPIN on a tiny model, no download.
///
/// A tiny Llama learns to shift letters (cat → dbu); a short SFT makes a weak model, then SPIN
/// iterations run against continued SFT with the same compute. Prints a table per stage and
/// writes OUT/report.svg.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder (data, models, metrics, report.svg).
    #[arg(long, default_value = "wgspin-demo")]
    out: PathBuf,
    /// Reduced mode (fewer examples and steps, one seed), for CI and a first look.
    #[arg(long)]
    quick: bool,
    /// Number of seeds (default: 5, or 1 with --quick).
    #[arg(long)]
    seeds: Option<usize>,
    /// Learning rate of the SPIN iterations and of the continued SFT they are compared with
    /// (default 1e-4).
    #[arg(long)]
    lr: Option<f64>,
    /// SPIN's β (default 0.1).
    #[arg(long)]
    beta: Option<f64>,
    /// SPIN iterations (default 3, or 2 with --quick).
    #[arg(long)]
    iterations: Option<usize>,
    /// Before running, say in plain words what each stage does and how to read the table.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// What `--explain` prints.
const EXPLANATION: &str = "\
What happens, stage by stage:
  1. SFT (weak start): supervised fine-tuning on (prompt, human answer) pairs, an epoch at a time,
     until the model gets a fifth of a validation set right. This is the model SPIN starts from.
  2. SPIN iteration t: the current model (the opponent) answers every training prompt; a copy of
     it (the main player) is trained to tell the human answers from its own, raising the
     likelihood of the first and lowering that of the second relative to the opponent. The
     trained player becomes the next opponent. No new human data is used.
  3. Continued SFT t: the same starting model trained on the human answers alone, with the same
     number of sequences through forward and backward as SPIN iteration t, for a fair comparison.
How to read the table: exact match is the share of held-out prompts answered exactly right;
held-out ll/tok is the mean log-likelihood per token of the human answers (higher is better);
reward acc is how often the player prefers the human answer over the opponent's on held-out
prompts: SPIN has converged when it nears 50% (the player can no longer tell them apart). The
last lines pair SPIN and continued SFT seed by seed and say whether the difference is larger
than the seeds' spread (95% interval).
";

impl DemoArgs {
    pub fn run(self) -> Result<()> {
        let dev = self.device.select()?;
        let mut cfg = if self.quick {
            DemoConfig::quick()
        } else {
            DemoConfig::full()
        };
        if let Some(n) = self.seeds {
            cfg.seeds = (1..=n as u64).collect();
        }
        if let Some(lr) = self.lr {
            cfg.spin_lr = lr;
        }
        if let Some(b) = self.beta {
            cfg.beta = b;
        }
        if let Some(n) = self.iterations {
            cfg.spin_iterations = n;
        }
        let out = self.out;
        if self.explain {
            eprintln!("{EXPLANATION}");
        }
        eprintln!(
            "wgspin demo: a tiny Llama learns to shift letters (cat → dbu) ({} training / {} held-out examples, {} seed(s)).\n\
         A short SFT makes a weak model; then {} SPIN iterations, against continued SFT with the same compute.",
            cfg.train_examples,
            cfg.eval_examples,
            cfg.seeds.len(),
            cfg.spin_iterations
        );
        let start = std::time::Instant::now();
        let mut rows: Vec<StageResult> = vec![];
        let mut bar: Option<Progress> = None;
        let mut train_rep = TrainReporter::new(1_000_000);
        let all = run_demo(&out, &cfg, &dev.device, |e| match e {
            DemoEvent::Stage(s) => {
                if let Some(mut b) = bar.take() {
                    b.finish();
                }
                eprintln!("== {s}");
            }
            DemoEvent::SftStep { step, total, loss } => {
                let b = bar.get_or_insert_with(|| Progress::new("sft", total));
                b.update(step, &format!("steps, loss {loss:.4}"));
                if step == total {
                    b.finish();
                    bar = None;
                }
            }
            DemoEvent::Result(r) => {
                rows.push(r.clone());
                print_table(&rows);
            }
            DemoEvent::Spin(SpinEvent::Generate(p)) => {
                let b = bar.get_or_insert_with(|| Progress::new("generate", p.total));
                b.update(p.done, "prompts");
                if p.done == p.total {
                    b.finish();
                    bar = None;
                }
            }
            DemoEvent::Spin(SpinEvent::Train(t)) => train_rep.event(t),
            DemoEvent::Spin(SpinEvent::Stage { iteration, stage }) => {
                eprintln!("== SPIN iteration {}: {stage}", iteration + 1)
            }
            DemoEvent::Spin(_) => {}
        })
        .with_context(|| format!("demo into {}", out.display()))?;
        print_table(&all);
        summary(&all);
        eprintln!(
            "done in {:.1}s. Report: {}  (data, models and metrics under {})",
            start.elapsed().as_secs_f64(),
            out.join("report.svg").display(),
            out.display()
        );
        Ok(())
    }
}

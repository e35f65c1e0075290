//! `wgspin demo` (and `wgspin` with no subcommand): the built-in SPIN demo with its live table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

mod eval;
mod model;
mod outcome;
mod page;
mod report;
mod run;
mod task;

use outcome::{DemoOutcome, SftCurve, StageResult};
use report::paired_by_round;
use run::{DemoConfig, DemoEvent, run_demo};
use task::Task;
use wgspin::report::progress::Progress;
use wgspin::report::stats::verdict;
use wgspin::spin::SpinEvent;

use super::args::DeviceArgs;
use super::report::TrainReporter;

/// `--explain`'s words (the same the page puts beside its sections), wrapped for a terminal.
fn explanation() -> String {
    let mut out = String::from("What happens, stage by stage:\n");
    let stages = [page::SFT_STAGE, page::SPIN_STAGE, page::CONTINUED_STAGE];
    for (k, text) in stages.iter().enumerate() {
        out += &wrap(&format!("  {}. ", k + 1), "     ", text);
    }
    out + &wrap("How to read the table: ", "", page::READING)
}

/// `text` wrapped at 96 columns, the first line after `first`, the others after `rest`.
fn wrap(first: &str, rest: &str, text: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    for word in text.split_whitespace() {
        if line.chars().count() + 1 + word.chars().count() > 96 && !line.trim().is_empty() {
            out += line.trim_end();
            out.push('\n');
            line = rest.to_string();
        }
        if !line.is_empty() && !line.ends_with(' ') {
            line.push(' ');
        }
        line += word;
    }
    out += line.trim_end();
    out.push('\n');
    out
}

fn pct(x: f64) -> String {
    format!("{:5.1}%", 100.0 * x)
}

fn print_header() {
    eprintln!(
        "{:<5} {:<22} {:>11} {:>11} {:>14} {:>10} {:>9} {:>8}",
        "seed", "stage", "exact match", "(valid.)", "test ll/tok", "reward acc", "margin", "time"
    );
}

fn print_row(r: &StageResult) {
    eprintln!(
        "{:<5} {:<22} {:>11} {:>11} {:>14.4} {:>10} {:>9} {:>7.1}s",
        r.seed,
        r.stage,
        pct(r.exact_match),
        pct(r.validation_exact_match),
        r.heldout_loglik_per_token,
        r.reward_accuracy.map(pct).unwrap_or_else(|| "-".into()),
        r.reward_margin
            .map(|m| format!("{m:.3}"))
            .unwrap_or_else(|| "-".into()),
        r.seconds
    );
}

fn print_table(rows: &[StageResult]) {
    eprintln!();
    print_header();
    rows.iter().for_each(print_row);
    eprintln!();
}

/// "lr 3e-3, 3e-4 from epoch 31, 1e-4 from epoch 36": where the plateaus dropped the rate.
fn lr_drops(c: &SftCurve) -> String {
    let mut parts: Vec<String> = vec![];
    let mut last = None;
    for e in &c.epochs {
        if last != Some(e.lr) {
            parts.push(if last.is_none() {
                format!("lr {:.0e}", e.lr)
            } else {
                format!("{:.0e} from epoch {}", e.lr, e.epoch)
            });
            last = Some(e.lr);
        }
    }
    parts.join(", ")
}

/// Each seed's SFT plateau: validation exact match over its last epochs, the kept one marked.
fn plateau(curves: &[SftCurve]) {
    eprintln!("SFT plateau (validation exact match per epoch, last epochs; * = kept):");
    for c in curves {
        let shown = c.epochs.len().saturating_sub(6);
        let tail: Vec<String> = c.epochs[shown..]
            .iter()
            .map(|e| {
                let mark = if e.epoch == c.best_epoch { "*" } else { "" };
                format!("{}:{:.1}%{mark}", e.epoch, 100.0 * e.validation_exact_match)
            })
            .collect();
        eprintln!(
            "  seed {:<3} epochs {:>2}, kept {:>2}: {}  ({})",
            c.seed,
            c.epochs.len(),
            c.best_epoch,
            tail.join("  "),
            lr_drops(c)
        );
    }
}

fn summary(rows: &[StageResult]) {
    let seeds: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.seed).collect();
    if seeds.len() < 2 {
        return;
    }
    eprintln!("mean ± std over {} seeds (test exact match):", seeds.len());
    for (s, m, sd) in page::stage_means(rows) {
        eprintln!("  {s:<22} {:5.1}% ± {:4.1}", 100.0 * m, 100.0 * sd);
    }
    paired_comparison(rows);
}

/// The paired comparison on the test split per round, a sentence on the last round, and the
/// same difference on the validation split (what a choice between settings may look at).
fn paired_comparison(rows: &[StageResult]) {
    let test = paired_by_round(rows, |r| r.exact_match);
    if test.is_empty() {
        return;
    }
    eprintln!("SPIN − continued SFT, paired by seed (test exact-match points, 95% t-interval):");
    for (round, i) in &test {
        eprintln!("  round {round}: {:+5.1} ± {:4.1}", i.mean, i.half_width);
    }
    if let Some((round, i)) = test.last() {
        eprintln!(
            "After {round} rounds: {}.",
            verdict("SPIN", "continued SFT", i)
        );
    }
    if let Some((round, i)) = paired_by_round(rows, |r| r.validation_exact_match).last() {
        eprintln!(
            "(validation split, round {round}: {:+.1} ± {:.1} points)",
            i.mean, i.half_width
        );
    }
}

/// The built-in demo (what `wgspin` runs without a command): SPIN on a tiny model, no download.
///
/// A tiny Llama learns a letter task (default: write 5–8-letter words backwards). SFT runs to convergence
/// (early stopping on a validation split), then SPIN iterations run against continued SFT with
/// the same compute, over several seeds. Prints a table per stage and the paired comparison, and
/// writes OUT/report.html (one self-contained page to open in a browser, kept current while the
/// demo runs: the verdict, every stage, and per SPIN iteration held-out prompts with the human
/// answer beside the model's own) and OUT/report.svg (the curves).
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder (data, models, metrics, report.html, report.svg).
    #[arg(long, default_value = "wgspin-demo")]
    out: PathBuf,
    /// Reduced mode (one seed, two iterations, smaller evaluation splits), for a first look.
    #[arg(long)]
    quick: bool,
    /// Number of seeds (default: 5, or 1 with --quick).
    #[arg(long)]
    seeds: Option<usize>,
    /// First seed; seeds run from here up (other seeds give other data and initial weights).
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// The letter task (default: reverse).
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// SFT training examples per seed (default 512).
    #[arg(long)]
    train_examples: Option<usize>,
    /// Most SFT epochs before SPIN, whether or not SFT has converged (default 80).
    #[arg(long)]
    sft_max_epochs: Option<usize>,
    /// Hidden size of the tiny Llama (a multiple of 4; default 64).
    #[arg(long)]
    hidden: Option<usize>,
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

impl DemoArgs {
    /// The demo's settings: `--quick` or the full run, with the flags given applied on top.
    fn config(&self) -> Result<DemoConfig> {
        let mut cfg = if self.quick {
            DemoConfig::quick()
        } else {
            DemoConfig::full()
        };
        let seeds = self.seeds.unwrap_or(cfg.seeds.len()) as u64;
        cfg.seeds = (self.first_seed..self.first_seed.saturating_add(seeds)).collect();
        if let Some(task) = self.task {
            cfg.task = task;
        }
        if let Some(n) = self.train_examples {
            anyhow::ensure!(n >= 1, "--train-examples must be at least 1");
            cfg.train_examples = n;
        }
        if let Some(n) = self.sft_max_epochs {
            anyhow::ensure!(n >= 1, "--sft-max-epochs must be at least 1");
            cfg.sft_max_epochs = n;
        }
        if let Some(h) = self.hidden {
            anyhow::ensure!(
                h >= 8 && h % 4 == 0,
                "--hidden {h}: the demo model has four heads, so the width must be a multiple of 4 (at least 8)"
            );
            cfg.hidden = h;
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
        Ok(cfg)
    }

    pub fn run(self) -> Result<()> {
        let dev = self.device.select()?;
        let cfg = self.config()?;
        let out = self.out;
        if self.explain {
            eprintln!("{}", explanation());
        }
        print_intro(&cfg);
        let start = std::time::Instant::now();
        let mut terminal = Terminal::new(cfg.sft_max_epochs);
        // What the page shows grows with the run: the rows and SFT curves reported so far.
        let so_far = std::rc::Rc::new(std::cell::RefCell::new(DemoOutcome {
            results: vec![],
            sft_curves: vec![],
        }));
        let mut page = {
            let (dir, cfg, so_far) = (out.clone(), cfg.clone(), so_far.clone());
            let command = super::args::command_line();
            super::report::LivePage::new(&out, move |status| {
                page::page(&dir, &cfg, &so_far.borrow(), status, &command)
            })
        };
        eprintln!("report: {} (updated after every stage)", page.url());
        let result = run_demo(&out, &cfg, &dev.device, |e| {
            match &e {
                DemoEvent::Stage(s) => page.stage(s, ""),
                DemoEvent::SftConverged(c) => so_far.borrow_mut().sft_curves.push((*c).clone()),
                DemoEvent::Result(r) => so_far.borrow_mut().results.push((*r).clone()),
                _ => {}
            }
            let (row, finished) = (
                matches!(e, DemoEvent::Result(_)),
                matches!(e, DemoEvent::Finished),
            );
            terminal.show(e);
            if row {
                page.progress("");
            }
            if finished {
                page.end(None);
            }
        })
        .with_context(|| format!("demo into {}", out.display()));
        page.end(result.as_ref().err());
        let outcome = result?;
        print_end(&outcome, start, &out);
        Ok(())
    }
}

/// What the run is about to do, in one sentence per part.
fn print_intro(cfg: &DemoConfig) {
    eprintln!(
        "wgspin demo: a tiny Llama (hidden {}) learns to {} ({} training / {} validation / {} test examples, {} seed(s)).\n\
         SFT runs to convergence on the validation split; then {} SPIN iterations, against continued SFT with the same compute.",
        cfg.hidden,
        cfg.task.describe(),
        cfg.train_examples,
        cfg.validation_examples,
        cfg.test_examples,
        cfg.seeds.len(),
        cfg.spin_iterations
    );
}

/// The end of a run: the table, each seed's SFT plateau, the comparison and where it all went.
fn print_end(outcome: &DemoOutcome, start: std::time::Instant, out: &std::path::Path) {
    print_table(&outcome.results);
    plateau(&outcome.sft_curves);
    summary(&outcome.results);
    eprintln!(
        "done in {:.1}s. Report: {} and {}  (data, models and metrics under {})",
        start.elapsed().as_secs_f64(),
        out.join(wgspin::report::html::PAGE_FILE).display(),
        out.join("report.svg").display(),
        out.display()
    );
}

/// The terminal while the demo runs: stage lines, progress bars and table rows as they come.
struct Terminal {
    bar: Option<Progress>,
    /// In SFT to convergence, whose bar counts epochs, not steps.
    converging: bool,
    best_em: f64,
    header: bool,
    train_rep: TrainReporter,
    max_epochs: usize,
}

impl Terminal {
    fn new(max_epochs: usize) -> Self {
        Terminal {
            bar: None,
            converging: false,
            best_em: 0.0,
            header: false,
            train_rep: TrainReporter::new(1_000_000),
            max_epochs,
        }
    }

    fn finish_bar(&mut self) {
        if let Some(mut b) = self.bar.take() {
            b.finish();
        }
    }

    fn show(&mut self, e: DemoEvent) {
        match e {
            DemoEvent::Stage(s) => {
                self.finish_bar();
                self.converging = s.starts_with("SFT to convergence");
                self.best_em = 0.0;
                eprintln!("== {s}");
            }
            DemoEvent::SftStep { .. } if self.converging => {}
            DemoEvent::SftStep { step, total, loss } => {
                let b = self.bar.get_or_insert_with(|| Progress::new("sft", total));
                b.update(step, &format!("steps, loss {loss:.4}"));
                if step == total {
                    b.finish();
                    self.bar = None;
                }
            }
            DemoEvent::SftEpoch(p) => {
                self.best_em = self.best_em.max(p.validation_exact_match);
                let max_epochs = self.max_epochs;
                let b = self
                    .bar
                    .get_or_insert_with(|| Progress::new("sft", max_epochs));
                b.update(
                    p.epoch,
                    &format!(
                        "epochs, lr {:.0e}, validation exact match {} (best {})",
                        p.lr,
                        pct(p.validation_exact_match),
                        pct(self.best_em)
                    ),
                );
            }
            DemoEvent::SftConverged(c) => {
                self.finish_bar();
                self.converging = false;
                eprintln!(
                    "SFT stopped after {} epochs ({}); kept epoch {} (validation exact match {})",
                    c.epochs.len(),
                    lr_drops(c),
                    c.best_epoch,
                    c.epochs
                        .get(c.best_epoch.saturating_sub(1))
                        .map(|e| pct(e.validation_exact_match))
                        .unwrap_or_default()
                );
            }
            DemoEvent::Result(r) => {
                if !self.header {
                    print_header();
                    self.header = true;
                }
                print_row(r);
            }
            DemoEvent::Spin(SpinEvent::Generate(p)) => {
                let b = self
                    .bar
                    .get_or_insert_with(|| Progress::new("generate", p.total));
                b.update(p.done, "prompts");
                if p.done == p.total {
                    b.finish();
                    self.bar = None;
                }
            }
            DemoEvent::Spin(SpinEvent::Train(t)) => self.train_rep.event(t),
            DemoEvent::Spin(SpinEvent::Stage { iteration, stage }) => {
                eprintln!("== SPIN iteration {}: {stage}", iteration + 1)
            }
            DemoEvent::Spin(_) | DemoEvent::Finished => {}
        }
    }
}

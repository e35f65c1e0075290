//! `wgspin spin`: the whole self-play loop (generate → train → evaluate, per iteration).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use wgspin::load::ModelSource;

use wgspin::job::RunFolder;
use wgspin::report::progress::Progress;
use wgspin::spin::{SpinConfig, SpinEvent, run_spin};
use wgspin::train::TrainConfig;
use wgspin::train::loss::PairLoss;

use super::args::{JobArgs, SamplingArgs};
use super::report::{LivePage, TrainReporter};

/// The self-play loop: generate, train and evaluate per iteration until converged.
///
/// Per iteration t: generate with θ_t, train θ_{t+1} on the pairs of t and t−1, evaluate on
/// held-out prompts; stop early when the player can no longer tell real from generated. Rerun
/// the same command to resume after an interruption.
///
/// --data is SFT data; the last 10% (at most 64, see --eval-size) are held out for evaluation.
/// Layout: OUT/iter-T/{generated.jsonl, ref_logps.jsonl, metrics.jsonl, checkpoint/,
/// eval_generated.jsonl, eval_margins.jsonl, eval.json}, OUT/summary.json, OUT/spin_config.json,
/// OUT/report.html (a self-contained page: settings, curves and, per iteration, held-out
/// prompts with the human answer beside the model's own; kept current while the run goes).
#[derive(Args, Debug)]
pub struct SpinArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Start over: remove the SPIN run in --out (its iterations, summary and settings; other
    /// files there are kept) instead of continuing it or refusing other settings.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    spin: SpinConfig,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    loss: PairLoss,
    #[command(flatten)]
    train: TrainConfig,
    #[command(flatten)]
    report: super::args::ReportArgs,
    #[command(flatten)]
    server: super::args::SpinServerArgs,
}

impl SpinArgs {
    pub fn run(self) -> Result<()> {
        self.job.check_outputs(&[("--out", &self.out)])?;
        let train_cfg = TrainConfig {
            loss: self.loss,
            ..self.train.clone()
        };
        // Checked before the data loads (a Hub dataset downloads), before OUT is created or
        // spin_config.json records settings that never ran.
        self.spin.validate()?;
        train_cfg.validate()?;
        let dev = self.job.device.select()?;
        let examples = self.job.data.load(self.spin.read_limit())?;
        let model = self.job.model.model.clone();
        // What --model names, probed once for every check below.
        let source = ModelSource::resolve(&model)
            .and_then(|s| Ok((wgspin::load::bundle::read_source_config(&s)?, s)));
        let (config, source) =
            source.with_context(|| format!("reading the config of {}", model.display()))?;
        // Generation computes in the dtype training does (refused here if the device lacks it).
        let dtype = super::args::resolve_dtype(self.train.dtype, &dev)?;
        let rows = self.sampling.gen_batch_size(&dev, &config, dtype)?;
        // Stop ids and padding are filled in by the loop from each iteration's model.
        let gen_opts = self.sampling.options(rows, vec![], 0);

        wgspin::train::memory::check_budget(&source, &train_cfg, &dev.device)?;
        gen_opts.sampling.validate()?;
        let folder = RunFolder::lock(&self.out, &wgspin::spin::LAYOUT)?;
        let mut sampling = serde_json::to_value(gen_opts.sampling)?;
        sampling["max_new_tokens"] = json!(gen_opts.max_new_tokens);
        sampling["gen_batch_size"] = json!(gen_opts.batch_size);
        let model_id = wgspin::job::ModelIdentity::of(&source)?;
        let mut resolved = json!({
            "model": model.to_string_lossy(),
            "data": self.job.data.source.data.to_string_lossy(),
            "data_sha256": wgspin::manifest::content_hash(&examples),
            "model_identity": model_id.now,
            "spin": self.spin,
            "sampling": sampling,
            "train": train_cfg,
        });
        // A Hub dataset's commit and split (a moved branch is named, not only a changed hash).
        if let Some(hub) = self.job.data.source.hub() {
            resolved["data_resolved"] = json!(hub.to_string());
        }
        // Who generates is a setting of the run too (absent for local generation, as in runs
        // made before servers were supported).
        if let Some(s) = self.server.spin_server() {
            resolved["server"] = json!({
                "url": wgspin::generate::server::redact_credentials(&s.options.url),
                "model": s.options.model,
                "api": s.options.api,
                "command": s.command,
                "gguf_dtype": format!("{:?}", s.gguf_dtype).to_lowercase(),
            });
        }
        let config_path = self.out.join(wgspin::spin::CONFIG_FILE);
        // The settings of a run already there, read once: a run made before model identities
        // were marked is compared by its own rule, then all its settings with these.
        let saved = std::fs::read_to_string(&config_path)
            .ok()
            .map(|t| serde_json::from_str::<serde_json::Value>(&t));
        let saved_id = saved
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .and_then(|c| c.get("model_identity"));
        resolved["model_identity"] = model_id.against(saved_id)?;
        if !folder.prepare(self.overwrite)? {
            refuse_other_settings(&config_path, saved, &resolved)?;
        }
        folder.write_json(wgspin::spin::CONFIG_FILE, &resolved)?;

        folder.claim(&[wgspin::report::html::PAGE_FILE])?;
        let notes = super::args::run_notes(self.job.data.source.name(), self.report.report_to);
        let (dir, command) = (self.out.clone(), notes.command.clone());
        let page = LivePage::new(&self.out, move |status| {
            wgspin::report::game::run_page(&dir, status, command.as_deref())
        });
        eprintln!("report: {} (updated as the run goes)", page.url());
        let mut reporter = SpinReporter {
            gen_bar: None,
            train: TrainReporter::new(train_cfg.logging_steps),
            page,
            iterations: self.spin.iterations,
        };
        let result = run_spin(
            &model,
            &examples,
            &self.out,
            &self.spin,
            &gen_opts,
            self.server.spin_server().as_ref(),
            &train_cfg,
            &notes,
            &dev.device,
            |e| reporter.event(e),
        )
        .with_context(|| format!("SPIN into {}", self.out.display()));
        reporter.page.end(result.as_ref().err());
        let summary = result?;
        if let Some(t) = summary.converged_at {
            eprintln!(
                "converged at iteration {t}: held-out reward accuracy ≤ {} (the player can no longer tell real from generated)",
                self.spin.stop_accuracy
            );
        }
        eprintln!(
            "done: {} iteration(s); final model {}; summary {}",
            summary.iterations_done,
            summary.final_model.display(),
            self.out.join(wgspin::spin::SUMMARY_FILE).display()
        );
        Ok(())
    }
}

/// Prints the loop's progress: a bar while generating, the training reporter's lines, and a
/// line per stage and per evaluation.
struct SpinReporter {
    gen_bar: Option<Progress>,
    train: TrainReporter,
    page: LivePage,
    iterations: usize,
}

impl SpinReporter {
    fn event(&mut self, e: SpinEvent) {
        let of = |t: usize| format!("(iteration {} of {})", t + 1, self.iterations);
        match e {
            SpinEvent::Stage { iteration, stage } => {
                eprintln!("== iteration {iteration}: {stage}");
                self.page
                    .stage(&format!("iteration {iteration}: {stage}"), &of(iteration));
            }
            SpinEvent::Skipped { iteration, stage } => {
                eprintln!("== iteration {iteration}: {stage} already done");
            }
            SpinEvent::Generate(p) => {
                let bar = self
                    .gen_bar
                    .get_or_insert_with(|| Progress::new("generate", p.total));
                let rate = p.tokens as f64 / p.elapsed.as_secs_f64().max(1e-9);
                bar.update(p.done, &format!("prompts, {rate:.1} tok/s"));
                self.page
                    .progress(&format!("{}/{} prompts answered", p.done, p.total));
            }
            SpinEvent::Generated(s) => {
                if let Some(mut b) = self.gen_bar.take() {
                    b.finish();
                }
                eprintln!(
                    "generated {} ({} kept from before), {} tokens, {:.1} tok/s",
                    s.generated,
                    s.resumed,
                    s.tokens,
                    s.tokens_per_second()
                );
            }
            SpinEvent::Train(t) => {
                if let wgspin::train::job::TrainEvent::Step {
                    metrics,
                    total_steps,
                } = &t
                {
                    self.page.progress(&format!(
                        "step {}/{total_steps}, {}",
                        metrics.step,
                        metrics.stats.summary()
                    ));
                }
                self.train.event(t)
            }
            SpinEvent::Trained(s) => {
                eprintln!("trained {} steps in {:.1}s", s.steps, s.seconds);
            }
            SpinEvent::Evaluated { iteration, eval } => {
                self.page
                    .stage(&format!("iteration {iteration}: evaluated"), &of(iteration));
                eprintln!(
                    "iteration {iteration} held-out ({} pairs): reward accuracy {:.3}, margin {:.4}, human log-lik/token {:.4} (before {:.4})",
                    eval.examples,
                    eval.reward_accuracy,
                    eval.reward_margin,
                    eval.human_logprob_per_token,
                    eval.human_logprob_per_token_before
                );
            }
        }
    }
}

/// A rerun into the same --out continues the run there: it must have the same settings, or the
/// iterations already done and the ones still to come would mix two runs. The decode batch may
/// differ (per-request random streams make the responses independent of it).
fn refuse_other_settings(
    path: &std::path::Path,
    saved: Option<serde_json::Result<serde_json::Value>>,
    now: &serde_json::Value,
) -> Result<()> {
    let Some(saved) = saved else {
        return Ok(());
    };
    let mut saved = saved
        .with_context(|| format!("{}: not valid JSON; move the folder aside", path.display()))?;
    let mut now = now.clone();
    for v in [&mut saved, &mut now] {
        if let Some(s) = v.get_mut("sampling").and_then(|s| s.as_object_mut()) {
            s.remove("gen_batch_size");
        }
    }
    let diffs = wgspin::manifest::differences(&saved, &now);
    // Runs made before `spin --limit` stopped reading early hashed the whole data.
    let limit_changed = diffs.iter().any(|d| d.starts_with("data_sha256"))
        && now["spin"]["limit"].is_u64()
        && saved.get("data_resolved").is_none();
    anyhow::ensure!(
        diffs.is_empty(),
        "{} holds a SPIN run with other settings ({}); rerun with the same flags to continue it, or start over with --overwrite or another --out{}",
        path.parent().unwrap_or(path).display(),
        diffs.join("; "),
        if limit_changed {
            ". (If the data did not change: since wgspin reads only --limit + 64 rows of the data, a run \
             started by an earlier version with --limit on larger data cannot be continued)"
        } else {
            ""
        }
    );
    Ok(())
}

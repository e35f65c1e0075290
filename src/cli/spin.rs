//! `wgspin spin`: the whole self-play loop (generate → train → evaluate, per iteration).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use wgspin::config::ModelConfig;
use wgspin::data::DataFormat;
use wgspin::device::DeviceSpec;
use wgspin::fsutil;
use wgspin::gguf::GgufModel;
use wgspin::progress::Progress;
use wgspin::spin::{SpinConfig, SpinEvent, run_spin};

use super::generate::load_examples;
use super::{GenFlags, TrainFlags, TrainReporter};

pub struct SpinArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub format: DataFormat,
    pub out: PathBuf,
    pub device: DeviceSpec,
    /// `--gen-batch-size`; `None`: the device's default, resolved here.
    pub gen_batch_size: Option<usize>,
    pub spin: SpinConfig,
    pub sampling: GenFlags,
    pub train: TrainFlags,
}

pub fn run(mut a: SpinArgs) -> Result<()> {
    let dev = super::select_device(a.device)?;
    let examples = load_examples(&a.data, a.format, None)?;
    let config = if a.model.is_dir() {
        ModelConfig::from_dir(&a.model)
    } else {
        GgufModel::load(&a.model).map(|g| g.config)
    }
    .with_context(|| format!("reading the config of {}", a.model.display()))?;
    a.spin.gen_batch_size =
        super::decode_batch(a.gen_batch_size, &dev, &config, a.sampling.max_new_tokens)?;
    // Stop ids and padding are filled in by the loop from each iteration's model.
    let gen_opts = a.sampling.options(a.spin.gen_batch_size, vec![], 0);
    let train_cfg = a.train.config(a.sampling.seed);

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let resolved = json!({
        "model": a.model.to_string_lossy(),
        "data": a.data.to_string_lossy(),
        "spin": a.spin,
        "sampling": {
            "max_new_tokens": gen_opts.max_new_tokens,
            "temperature": gen_opts.sampling.temperature,
            "top_p": gen_opts.sampling.top_p,
            "top_k": gen_opts.sampling.top_k,
            "min_p": gen_opts.sampling.min_p,
            "seed": gen_opts.sampling.seed,
        },
        "train": train_cfg,
    });
    fsutil::write_atomic(
        &a.out.join("spin_config.json"),
        serde_json::to_string_pretty(&resolved)?.as_bytes(),
    )?;

    let mut gen_bar: Option<Progress> = None;
    let mut train_rep = TrainReporter::new(train_cfg.logging_steps);
    let summary = run_spin(
        &a.model,
        &examples,
        &a.out,
        &a.spin,
        &gen_opts,
        &train_cfg,
        &dev.device,
        |e| match e {
            SpinEvent::Stage { iteration, stage } => {
                eprintln!("== iteration {iteration}: {stage}");
            }
            SpinEvent::Skipped { iteration, stage } => {
                eprintln!("== iteration {iteration}: {stage} already done");
            }
            SpinEvent::Generate(p) => {
                let bar = gen_bar.get_or_insert_with(|| Progress::new("generate", p.total));
                let rate = p.tokens as f64 / p.elapsed.as_secs_f64().max(1e-9);
                bar.update(p.done, &format!("prompts, {rate:.1} tok/s"));
            }
            SpinEvent::Generated(s) => {
                if let Some(mut b) = gen_bar.take() {
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
            SpinEvent::Train(t) => train_rep.event(t),
            SpinEvent::Trained(s) => {
                eprintln!("trained {} steps in {:.1}s", s.steps, s.seconds);
            }
            SpinEvent::Evaluated { iteration, eval } => {
                eprintln!(
                    "iteration {iteration} held-out ({} pairs): reward accuracy {:.3}, margin {:.4}, human log-lik/token {:.4} (before {:.4})",
                    eval.examples,
                    eval.reward_accuracy,
                    eval.reward_margin,
                    eval.human_logprob_per_token,
                    eval.human_logprob_per_token_before
                );
            }
        },
    )
    .with_context(|| format!("SPIN into {}", a.out.display()))?;
    if let Some(t) = summary.converged_at {
        eprintln!(
            "converged at iteration {t}: held-out reward accuracy ≤ {} (the player can no longer tell real from generated)",
            a.spin.stop_accuracy
        );
    }
    eprintln!(
        "done: {} iteration(s); final model {}; summary {}",
        summary.iterations_done,
        summary.final_model.display(),
        a.out.join("summary.json").display()
    );
    Ok(())
}

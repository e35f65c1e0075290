//! The built-in classroom demo: SPIN turning a weak model into a stronger one, end to end, with
//! nothing to download. A tiny Llama ([`model`]) learns to shift the letters of words ([`task`]):
//! a short SFT makes the weak starting model, then SPIN iterations run next to continued SFT
//! with the same compute (the same number of sequences through forward and backward), and each
//! stage is scored on held-out prompts: exact-match accuracy of greedy answers, log-likelihood
//! of the human answers, and (for SPIN) reward accuracy and margin of θ_{t+1} against θ_t.

use super::{model, task};
use wgspin::train::card::RunNotes;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use wgspin::data::SftExample;
use wgspin::error::{Error, Result};
use wgspin::generate::{GenOptions, GenRequest, generate};
use wgspin::hf::bundle::ModelBundle;
use wgspin::kernels::sample::SamplingParams;
use wgspin::spin::{SpinConfig, SpinEvent, run_spin};
use wgspin::train::job::{Existing, TrainEvent, run_train};
use wgspin::train::loss::PairLoss;
use wgspin::train::optim::{OptimizerKind, Schedule};
use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};
use wgspin::train::{ObjectiveKind, TrainConfig};

/// Demo size. [`DemoConfig::full`] is what `wgspin demo` runs; [`DemoConfig::quick`] is the
/// reduced mode CI runs.
#[derive(Debug, Clone, Serialize)]
pub struct DemoConfig {
    pub seeds: Vec<u64>,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// The weak starting model is SFT'd one epoch at a time until its exact match on a separate
    /// validation set reaches this (or `weak_max_epochs` pass): the task is learnt in a sudden
    /// drop of the loss whose timing varies with the seed, so a fixed step count would give a
    /// useless or a finished model depending on luck.
    pub weak_target: f64,
    pub weak_max_epochs: usize,
    pub spin_iterations: usize,
    /// Epochs of each SPIN iteration.
    pub spin_epochs: usize,
    pub sft_lr: f64,
    pub spin_lr: f64,
    pub beta: f64,
    pub batch_size: usize,
}

impl DemoConfig {
    pub fn full() -> Self {
        Self {
            // Five seeds: fewer cannot tell a few points apart from seed noise on this task.
            seeds: vec![1, 2, 3, 4, 5],
            train_examples: 256,
            eval_examples: 64,
            weak_target: 0.2,
            weak_max_epochs: 20,
            spin_iterations: 3,
            spin_epochs: 1,
            sft_lr: 3e-3,
            spin_lr: 1e-4,
            beta: 0.1,
            batch_size: 16,
        }
    }

    pub fn quick() -> Self {
        Self {
            seeds: vec![1],
            train_examples: 48,
            eval_examples: 8,
            weak_max_epochs: 2,
            spin_iterations: 2,
            spin_epochs: 1,
            batch_size: 8,
            ..Self::full()
        }
    }
}

/// One row of the demo's table.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub seed: u64,
    pub stage: String,
    /// 0 for the weak start, t+1 after SPIN iteration t or the matching continued-SFT stage.
    pub round: usize,
    pub method: String,
    pub exact_match: f64,
    pub heldout_loglik_per_token: f64,
    pub reward_accuracy: Option<f64>,
    pub reward_margin: Option<f64>,
    pub seconds: f64,
}

/// What the demo reports as it goes.
pub enum DemoEvent<'a> {
    Stage(&'a str),
    Result(&'a StageResult),
    Spin(SpinEvent<'a>),
    SftStep {
        step: usize,
        total: usize,
        loss: f64,
    },
}

/// Exact-match accuracy of greedy answers and mean log-likelihood per token of the human answers.
pub fn evaluate(path: &Path, heldout: &[SftExample], device: &Device) -> Result<(f64, f64)> {
    let b = ModelBundle::load(path, device)?;
    let tok = &b.tokenizer;
    let requests = heldout
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(GenRequest {
                index: i as u32,
                prompt: tok.prompt_ids(&e.prompt)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let longest = heldout
        .iter()
        .map(|e| e.response.chars().count())
        .max()
        .unwrap_or(1);
    let opts = GenOptions {
        batch_size: 32,
        max_new_tokens: longest + 2,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop_ids: vec![tok.eos_token_id],
        pad_id: tok.pad_id(),
    };
    let mut correct = 0;
    generate(&b.model, &requests, &opts, |f| {
        let ids: Vec<u32> = f
            .tokens
            .iter()
            .copied()
            .filter(|&t| t != tok.eos_token_id)
            .collect();
        let text = tok.decode(&ids, true)?;
        if text.trim() == heldout[f.index as usize].response {
            correct += 1;
        }
        Ok(())
    })?;
    let pairs = heldout
        .iter()
        .map(|e| TokenizedPair::new(tok, &e.prompt, &e.response))
        .collect::<Result<Vec<_>>>()?;
    let lps = score_all(
        &b.model,
        &pairs,
        opts.pad_id,
        ScoreOptions::default(),
        |_| {},
    )?;
    let (sum, n) = lps
        .iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), &x| (s + x as f64, n + 1));
    Ok((
        correct as f64 / heldout.len().max(1) as f64,
        sum / n.max(1) as f64,
    ))
}

fn train_cfg(c: &DemoConfig, lr: f64, epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        loss: PairLoss {
            beta: c.beta,
            ..Default::default()
        },
        lr,
        optimizer: OptimizerKind::Adamw,
        epochs,
        batch_size: c.batch_size,
        max_length: 64,
        max_prompt_length: 32,
        warmup_ratio: 0.1,
        schedule: Schedule::Linear,
        data_seed: seed,
        logging_steps: 1,
        ..Default::default()
    }
}

/// Runs the demo into `out` (one folder per seed); returns every table row.
pub fn run_demo(
    out: &Path,
    c: &DemoConfig,
    device: &Device,
    mut report: impl FnMut(DemoEvent),
) -> Result<Vec<StageResult>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut rows = vec![];
    for &seed in &c.seeds {
        let dir = out.join(format!("seed-{seed}"));
        let _ = std::fs::remove_dir_all(&dir);
        let base = dir.join("base-model");
        model::write_base_model(&base, seed)?;
        let train = task::examples(c.train_examples, seed * 1000 + 1, &[]);
        let heldout = task::examples(c.eval_examples, seed * 1000 + 2, &train);
        write_examples(&dir.join("train.jsonl"), &train)?;
        write_examples(&dir.join("heldout.jsonl"), &heldout)?;

        let push =
            |rows: &mut Vec<StageResult>, r: StageResult, report: &mut dyn FnMut(DemoEvent)| {
                report(DemoEvent::Result(&r));
                rows.push(r);
            };

        // The weak starting model: SFT from random weights, an epoch at a time, until it gets
        // `weak_target` of the validation words right.
        report(DemoEvent::Stage("SFT to a weak starting model"));
        let validation = task::examples(
            c.eval_examples,
            seed * 1000 + 3,
            &[train.clone(), heldout.clone()].concat(),
        );
        let mut from = base.clone();
        let mut r = None;
        let start = Instant::now();
        for epoch in 0..c.weak_max_epochs {
            let mut cfg = train_cfg(c, c.sft_lr, 1, seed + epoch as u64);
            cfg.schedule = Schedule::Constant;
            cfg.warmup_ratio = if epoch == 0 { 0.1 } else { 0.0 };
            let out_dir = dir.join("sft-weak").join(format!("epoch-{}", epoch + 1));
            let (ckpt, row) =
                sft_stage(&from, &train, &heldout, &out_dir, &cfg, device, &mut report)?;
            from = ckpt;
            r = Some(row);
            if evaluate(&from, &validation, device)?.0 >= c.weak_target {
                break;
            }
        }
        let weak = from;
        let r = StageResult {
            seconds: start.elapsed().as_secs_f64(),
            ..r.ok_or_else(|| Error::Invalid("weak_max_epochs must be at least 1".into()))?
        };
        push(
            &mut rows,
            StageResult {
                seed,
                stage: "SFT (weak start)".into(),
                round: 0,
                method: "start".into(),
                ..r
            },
            &mut report,
        );

        // SPIN from the weak model. The held-out prompts ride along as the loop's held-out slice.
        report(DemoEvent::Stage("SPIN"));
        let spin_dir = dir.join("spin");
        let mut data = train.clone();
        data.extend(heldout.iter().cloned());
        let spin_cfg = SpinConfig {
            iterations: c.spin_iterations,
            limit: None,
            mix_previous: true,
            stop_accuracy: 0.0,
            eval_size: Some(heldout.len()),
        };
        // Stop ids and padding are taken from θ_t by the loop.
        let gen_opts = GenOptions {
            batch_size: 32,
            max_new_tokens: 10,
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            },
            stop_ids: vec![],
            pad_id: 0,
        };
        let mut stage_start = Instant::now();
        let mut spin_rows: Vec<Result<StageResult>> = vec![];
        run_spin(
            &weak,
            &data,
            &spin_dir,
            &spin_cfg,
            &gen_opts,
            None,
            &train_cfg(c, c.spin_lr, c.spin_epochs, seed),
            &RunNotes::default(),
            device,
            |e| {
                if let SpinEvent::Evaluated { iteration, eval } = &e {
                    let ckpt = spin_dir
                        .join(format!("iter-{iteration}"))
                        .join("checkpoint");
                    let r = evaluate(&ckpt, &heldout, device).map(|(em, ll)| StageResult {
                        seed,
                        stage: format!("SPIN iteration {}", iteration + 1),
                        round: iteration + 1,
                        method: "spin".into(),
                        exact_match: em,
                        heldout_loglik_per_token: ll,
                        reward_accuracy: Some(eval.reward_accuracy),
                        reward_margin: Some(eval.reward_margin),
                        seconds: stage_start.elapsed().as_secs_f64(),
                    });
                    if let Ok(r) = &r {
                        report(DemoEvent::Result(r));
                    }
                    spin_rows.push(r);
                    stage_start = Instant::now();
                } else {
                    report(DemoEvent::Spin(e));
                }
            },
        )?;
        for r in spin_rows {
            rows.push(r?);
        }
        wgspin::report::plot::report_for_run(&spin_dir)?;

        // Continued SFT with the same compute: SPIN iteration t pushes 2 sequences per pair
        // through forward and backward, over N pairs (t = 0) or 2N (t ≥ 1, with the previous
        // iteration's pairs), for spin_epochs epochs.
        let mut from: PathBuf = weak.clone();
        for t in 0..c.spin_iterations {
            let epochs = c.spin_epochs * if t == 0 { 2 } else { 4 };
            report(DemoEvent::Stage(
                "continued SFT (same compute as the SPIN iteration)",
            ));
            let cfg = train_cfg(c, c.spin_lr, epochs, seed + 17 * (t as u64 + 1));
            let out_dir = dir.join(format!("sft-continued-{}", t + 1));
            let (ckpt, r) =
                sft_stage(&from, &train, &heldout, &out_dir, &cfg, device, &mut report)?;
            push(
                &mut rows,
                StageResult {
                    seed,
                    stage: format!("continued SFT {}", t + 1),
                    round: t + 1,
                    method: "sft".into(),
                    ..r
                },
                &mut report,
            );
            from = ckpt;
        }
    }
    let json = serde_json::json!({"config": c, "results": rows});
    wgspin::fsutil::write_atomic(
        &out.join("demo.json"),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    write_report(out, &rows)?;
    Ok(rows)
}

/// SFT from `from` into `out`, then the held-out evaluation; the row's labels are the caller's.
fn sft_stage(
    from: &Path,
    train: &[SftExample],
    heldout: &[SftExample],
    out: &Path,
    cfg: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(DemoEvent),
) -> Result<(PathBuf, StageResult)> {
    let start = Instant::now();
    let cfg = TrainConfig {
        objective: ObjectiveKind::Sft,
        ..cfg.clone()
    };
    let notes = RunNotes::default();
    let summary = run_train(
        from,
        train,
        out,
        &cfg,
        Existing::Refuse,
        &notes,
        device,
        |e| {
            if let TrainEvent::Step {
                metrics,
                total_steps,
            } = e
            {
                report(DemoEvent::SftStep {
                    step: metrics.step,
                    total: total_steps,
                    loss: metrics.stats.loss(),
                })
            }
        },
    )?;
    let ckpt = summary.checkpoint;
    let (em, ll) = evaluate(&ckpt, heldout, device)?;
    let row = StageResult {
        seed: 0,
        stage: String::new(),
        round: 0,
        method: String::new(),
        exact_match: em,
        heldout_loglik_per_token: ll,
        reward_accuracy: None,
        reward_margin: None,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((ckpt, row))
}

fn write_examples(path: &Path, examples: &[SftExample]) -> Result<()> {
    let text: String = examples
        .iter()
        .map(|e| {
            serde_json::json!({"id": e.id, "prompt": e.prompt, "response": e.response}).to_string()
                + "\n"
        })
        .collect();
    wgspin::fsutil::write_atomic(path, text.as_bytes())
}

/// `report.svg`: held-out exact match and log-likelihood per round, SPIN vs continued SFT
/// (mean over seeds), and the first seed's SPIN training curves.
pub fn write_report(out: &Path, rows: &[StageResult]) -> Result<PathBuf> {
    use wgspin::report::plot::{Panel, Series, run_panels, svg};
    let mean_by = |method: &str, f: &dyn Fn(&StageResult) -> f64| -> Vec<(f64, f64)> {
        let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
        (0..=rounds)
            .filter_map(|k| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.round == k && (r.method == method || r.method == "start"))
                    .map(f)
                    .collect();
                (!v.is_empty()).then(|| (k as f64, v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect()
    };
    let spin_vs_sft = |title: &str, x_label: &str, f: &dyn Fn(&StageResult) -> f64| Panel {
        title: title.into(),
        x_label: x_label.into(),
        series: vec![
            Series {
                name: "SPIN".into(),
                points: mean_by("spin", f),
            },
            Series {
                name: "continued SFT".into(),
                points: mean_by("sft", f),
            },
        ],
    };
    let mut panels = vec![
        spin_vs_sft(
            "held-out exact match (mean over seeds)",
            "round (SPIN iteration / matched SFT stage)",
            &|r| r.exact_match,
        ),
        spin_vs_sft("held-out log-likelihood / token", "round", &|r| {
            r.heldout_loglik_per_token
        }),
    ];
    if let Some(first) = rows.first() {
        let spin_dir = out.join(format!("seed-{}", first.seed)).join("spin");
        if let Ok(p) = run_panels(&spin_dir) {
            panels.extend(p);
        }
    }
    let path = out.join("report.svg");
    wgspin::fsutil::write_atomic(
        &path,
        svg("wgspin demo: SPIN vs continued SFT", &panels).as_bytes(),
    )?;
    Ok(path)
}

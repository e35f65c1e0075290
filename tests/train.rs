//! SPIN training against PyTorch (`tests/fixtures/make_spin_reference.py`): per-pair losses of
//! every loss type, gradient norms, and one RMSprop / AdamW step, within 1e-4 relative; SPIN's
//! truncation; checkpoints with the input's tensor names, shapes and dtypes that load back with
//! the same logits; a non-finite loss stops with the step named; and `wgspin train` killed with
//! SIGKILL and resumed equals an uninterrupted run.
//!
//! On the CPU backend: a training step on a software GPU costs minutes; the fused log-prob
//! kernel's backward is checked on the GPU in `kernels_logprobs`.

mod common;

use std::time::Duration;

use burn::tensor::{Tensor, TensorData};
use common::spin_fixture::*;
use common::*;
use serde_json::Value;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;
use wgspin::hf::weights::WeightFiles;
use wgspin::model::StepInput;
use wgspin::model::named::params_mut;
use wgspin::train::loss::{LossKind, pair_losses};
use wgspin::train::optim::{OptimizerKind, Schedule, lr_at};
use wgspin::train::{Measured, Objective, TrainConfig, Trainer, truncate};

fn norm(t: Tensor<1>) -> f64 {
    let v = floats(t);
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn named_values(t: &Trainer) -> Vec<(String, Tensor<1>)> {
    let mut m = t.state.model.clone();
    params_mut(&mut m)
        .into_iter()
        .map(|(n, p)| (n, p.value_flat()))
        .collect()
}

#[test]
fn losses_gradients_and_optimizer_steps_match_pytorch() {
    let all = spin_reference();
    for name in ["tiny-llama-bf16", "tiny-qwen2-f32"] {
        let r = &all[name];
        let t = trainer(name, r, config(OptimizerKind::Rmsprop, 0.0));
        let g = t.gradients(&[vec![0, 1, 2]]).unwrap();
        let (policy, reference) = g.pairs().unwrap();

        // Per-pair losses from our log-probs and loss functions vs PyTorch.
        let margins: Vec<f32> = (0..3)
            .map(|i| {
                ((policy.real[i] - reference.real[i])
                    - (policy.generated[i] - reference.generated[i])) as f32
            })
            .collect();
        for (kind, key) in [
            (LossKind::Sigmoid, "sigmoid"),
            (LossKind::Hinge, "hinge"),
            (LossKind::Ipo, "ipo"),
        ] {
            let m =
                Tensor::<1>::from_data(TensorData::new(margins.clone(), [3]), &cpu_device().device);
            let got = floats(pair_losses(kind, m, 1.0));
            for (a, b) in got.iter().zip(f64s(&r["losses"][key])) {
                eprintln!("{name} {key} loss {a} vs torch {b}");
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * b.abs().max(1e-2),
                    "{name} {key}: {a} vs torch {b}"
                );
            }
        }

        // Gradient norms of the mean sigmoid loss.
        let mut m = t.state.model.clone();
        let names: Vec<String> = params_mut(&mut m).into_iter().map(|(n, _)| n).collect();
        let total = g
            .grads
            .iter()
            .map(|x| norm(x.clone()).powi(2))
            .sum::<f64>()
            .sqrt();
        let want_total = r["grad_norm"].as_f64().unwrap();
        eprintln!(
            "{name}: grad norm {total:.6} vs torch {want_total:.6} (rel {:.1e})",
            rel(total, want_total)
        );
        assert!(
            rel(total, want_total) < 1e-4,
            "{name} grad norm {total} vs torch {want_total}"
        );
        for (tensor, want) in r["grad_norms"].as_object().unwrap() {
            let i = names.iter().position(|n| n == tensor).unwrap();
            let got = norm(g.grads[i].clone());
            let want = want.as_f64().unwrap();
            eprintln!("{name} grad {tensor}: rel {:.1e}", rel(got, want));
            assert!(
                rel(got, want) < 1e-4,
                "{name} grad of {tensor}: {got} vs torch {want}"
            );
        }

        // One optimizer step each.
        for (kind, wd, key) in [
            (OptimizerKind::Rmsprop, 0.0, "rmsprop_delta_norms"),
            (OptimizerKind::Adamw, 0.01, "adamw_delta_norms"),
        ] {
            let mut t = trainer(name, r, config(kind, wd));
            let before = named_values(&t);
            t.train_step().unwrap();
            let after = named_values(&t);
            for (tensor, want) in r[key].as_object().unwrap() {
                let i = before.iter().position(|(n, _)| n == tensor).unwrap();
                let got = norm(after[i].1.clone() - before[i].1.clone());
                let want = want.as_f64().unwrap();
                eprintln!("{name} {key} {tensor}: rel {:.1e}", rel(got, want));
                assert!(
                    rel(got, want) < 1e-4,
                    "{name} {key} {tensor}: |Δ| {got} vs torch {want}"
                );
            }
        }
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let all = spin_reference();
    for name in ["tiny-llama-bf16", "tiny-qwen2-f32"] {
        let r = &all[name];
        let cfg = config(OptimizerKind::Rmsprop, 0.0);
        let plain = trainer(name, r, cfg.clone())
            .gradients(&[vec![0, 1, 2]])
            .unwrap();
        let mut checkpointed = trainer(
            name,
            r,
            TrainConfig {
                gradient_checkpointing: true,
                ..cfg.clone()
            },
        );
        let ck = checkpointed.gradients(&[vec![0, 1, 2]]).unwrap();
        // Every parameter, the (tied) embeddings included, from the per-layer recompute.
        assert_grads_match(
            &format!("{name} with checkpointing"),
            &plain.grads,
            &ck.grads,
            1e-5,
        );
        let d = max_rel_logps(plain.pairs().unwrap().0, ck.pairs().unwrap().0);
        assert!(
            d < 1e-6,
            "{name}: log-probs recomputed differ by {d} (relative)"
        );
        // And again after a step, on updated weights.
        let mut again = trainer(name, r, cfg);
        again.train_step().unwrap();
        checkpointed.train_step().unwrap();
        let want = again.gradients(&[vec![0, 1, 2]]).unwrap();
        let got = checkpointed.gradients(&[vec![0, 1, 2]]).unwrap();
        assert_grads_match(&format!("{name} step 2"), &want.grads, &got.grads, 1e-5);
    }
}

#[test]
fn truncation_keeps_the_end_of_the_prompt_then_cuts_responses() {
    let p: Vec<u32> = (0..10).collect();
    let r: Vec<u32> = (100..106).collect();
    let g: Vec<u32> = (200..203).collect();
    // Fits: unchanged.
    assert_eq!(
        truncate(p.clone(), r.clone(), g.clone(), 16, 8),
        (p.clone(), r.clone(), g.clone())
    );
    // Too long: the prompt keeps its last 8 tokens, then responses fit in 12 − 8.
    let (tp, tr, tg) = truncate(p.clone(), r.clone(), g.clone(), 12, 8);
    assert_eq!(tp, (2..10).collect::<Vec<u32>>());
    assert_eq!(tr, (100..104).collect::<Vec<u32>>());
    assert_eq!(tg, g);
    // Prompt short enough after cutting: responses untouched.
    let (tp, tr, _) = truncate(p.clone(), r.clone(), g.clone(), 14, 8);
    assert_eq!((tp.len(), tr.len()), (8, 6));
}

#[test]
fn learning_rate_schedules_follow_transformers() {
    // get_linear_schedule_with_warmup(total 10, warmup 2): 0, .5, 1, 7/8, 6/8, …, 1/8.
    let lin: Vec<f64> = (0..10)
        .map(|s| lr_at(Schedule::Linear, 1.0, s, 10, 2))
        .collect();
    let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
    for (a, b) in lin.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{lin:?}");
    }
    // Cosine: 1 right after warmup, ½ at mid-decay.
    assert!((lr_at(Schedule::Cosine, 1.0, 2, 10, 2) - 1.0).abs() < 1e-12);
    assert!((lr_at(Schedule::Cosine, 1.0, 6, 10, 2) - 0.5).abs() < 1e-12);
    assert_eq!(lr_at(Schedule::Constant, 2.0, 7, 10, 2), 2.0);
}

#[test]
fn non_finite_loss_stops_naming_the_step() {
    let all = spin_reference();
    let r = &all["tiny-llama-bf16"];
    let mut t = trainer("tiny-llama-bf16", r, config(OptimizerKind::Rmsprop, 0.0));
    match &mut t.objective {
        Objective::Spin { reference, .. } => reference.real[1] = f64::NAN,
        Objective::Sft { .. } => unreachable!("a SPIN trainer"),
    }
    let before = named_values(&t);
    let err = t.train_step().unwrap_err().to_string();
    assert_mentions(&err, &["step 1", "NaN"]);
    assert_eq!(t.state.step, 0);
    let after = named_values(&t);
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(norm(a.clone() - b.clone()), 0.0, "{n} changed");
    }
}

#[test]
fn checkpoints_keep_names_shapes_dtypes_and_logits() {
    let dev = cpu_device();
    for name in TINY_MODELS {
        let dir = fixture(name);
        let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ckpt");
        wgspin::load::checkpoint::save(&bundle.model, &dir, &out, bundle.stored_dtype, None, &[])
            .unwrap();
        let a = WeightFiles::open_dir(&dir).unwrap();
        let b = WeightFiles::open_dir(&out).unwrap();
        let mut an: Vec<&str> = a.names().collect();
        let mut bn: Vec<&str> = b.names().collect();
        an.sort();
        bn.sort();
        assert_eq!(an, bn, "{name}: tensor names");
        for n in an {
            assert_eq!(a.info(n), b.info(n), "{name}: {n} shape/dtype");
        }
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert!(out.join(f).exists(), "{name}: {f} copied");
        }
        let back = ModelBundle::load(&out, &dev.device).unwrap();
        let input = StepInput::right_padded(&[vec![1, 2, 3, 4, 5]], 0);
        let logits = |b: &ModelBundle| floats(b.model.forward(&input, None));
        assert_eq!(
            logits(&bundle),
            logits(&back),
            "{name}: logits after a save/load round trip"
        );
    }
}

/// `wgspin train` (SPIN pairs) or `wgspin sft` (the pairs' real responses), 12 steps, saving
/// every 2; `cmd` may carry flags after the command.
fn train_args(cmd: &str, data: &std::path::Path, out: &std::path::Path) -> Vec<String> {
    let (cmd, extra) = cmd.split_once(' ').unwrap_or((cmd, ""));
    job_args(
        cmd,
        "tiny-llama-bf16",
        data,
        out,
        &format!(
            "--lr 1e-3 --optimizer adamw --weight-decay 0.01 --batch-size 2 --epochs 3 \
             --save-every 2 {extra}"
        ),
    )
}

fn losses(out: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn train_resumes_after_sigkill_like_an_uninterrupted_run() {
    resumes_after_sigkill("train");
}

/// SFT runs through the same trainer and job as SPIN training, so it resumes the same way.
#[test]
fn sft_resumes_after_sigkill_like_an_uninterrupted_run() {
    resumes_after_sigkill("sft");
}

/// With f16 activations the loss scaler's state is part of what a checkpoint carries.
#[test]
fn f16_sft_resumes_after_sigkill_like_an_uninterrupted_run() {
    resumes_after_sigkill("sft --dtype f16");
}

fn resumes_after_sigkill(cmd: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let full = tmp.path().join("full");
    run_ok(train_args(cmd, &pairs, &full));
    let want = losses(&full);
    assert_eq!(want.len(), 12);
    let last: Value = serde_json::from_str(
        std::fs::read_to_string(full.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    if cmd.starts_with("train") {
        // Rewards separate on the training pairs.
        assert!(last["rewards/margins"].as_f64().unwrap() > 0.0, "{last}");
    } else {
        // The next-token loss falls, and SFT rows carry no reward columns.
        assert!(want[11].1 < want[0].1, "{want:?}");
        assert!(last.get("rewards/margins").is_none(), "{last}");
    }

    let out = tmp.path().join("out");
    let state = out.join("checkpoint").join("trainer_state.json");
    kill_when(
        &train_args(cmd, &pairs, &out),
        Duration::from_secs(300),
        "no checkpoint",
        || state.exists(),
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(s["complete"], false, "killed after the run finished: {s}");
    assert_eq!(
        s["loss_scaler"].is_object(),
        cmd.contains("f16"),
        "the loss scaler's state is saved with f16 activations only: {s}"
    );

    // Without --resume the folder is refused; with it, the run continues.
    let st = wgspin()
        .args(train_args(cmd, &pairs, &out))
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("--resume"));
    let mut args = train_args(cmd, &pairs, &out);
    args.push("--resume".into());
    run_ok(args);
    let got = losses(&out);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((s1, a), (s2, b)) in got.iter().zip(&want) {
        assert_eq!(s1, s2);
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
            "step {s1}: loss {a} resumed vs {b} uninterrupted"
        );
    }
    let a = WeightFiles::open_dir(&full.join("checkpoint")).unwrap();
    let b = WeightFiles::open_dir(&out.join("checkpoint")).unwrap();
    for n in a.names() {
        let (x, y) = (a.read(n).unwrap().data, b.read(n).unwrap().data);
        let d = max_abs_diff(&x, &y);
        assert!(
            d < 1e-4,
            "{n}: max |Δ| {d} between resumed and uninterrupted weights"
        );
    }
}

/// The SFT objective's loss is the mean negative log-likelihood per response token, which the
/// fixture's PyTorch sums of response log-probs give independently; accumulating it over
/// micro-batches weighs tokens, not micro-batches.
#[test]
fn sft_loss_is_pytorchs_mean_response_nll() {
    let all = spin_reference();
    for name in ["tiny-llama-bf16", "tiny-qwen2-f32"] {
        let r = &all[name];
        let spin = trainer(name, r, config(OptimizerKind::Adamw, 0.0));
        let Objective::Spin { pairs, reference } = &spin.objective else {
            unreachable!("a SPIN trainer")
        };
        let seqs: Vec<_> = pairs
            .iter()
            .map(|p| p.real_pair())
            .chain(pairs.iter().map(|p| p.generated_pair()))
            .collect();
        let n_tokens: usize = seqs.iter().map(|s| s.response.len()).sum();
        // The fixture's reference is PyTorch's log-prob of each response under this model plus
        // make_spin_reference.py's REF_OFFSETS_REAL / REF_OFFSETS_GEN.
        let offsets = [0.5, -1.0, 2.0, -0.3, 0.7, 1.5];
        let sum: f64 = reference
            .real
            .iter()
            .chain(&reference.generated)
            .zip(offsets)
            .map(|(r, o)| r - o)
            .sum();
        let want = -sum / n_tokens as f64;
        let n = seqs.len();
        let sft = Trainer::new(
            spin.state.model.clone(),
            spin.state.cfg.clone(),
            Objective::Sft { seqs },
            spin.state.pad_id,
        )
        .unwrap();
        let one = sft.gradients(&[(0..n).collect()]).unwrap();
        let Measured::Nll { nll, tokens } = one.measured else {
            unreachable!("an SFT step")
        };
        assert_eq!(tokens, n_tokens);
        let got = nll / tokens as f64;
        assert!(
            rel(got, want) < 1e-4,
            "{name}: SFT loss {got} vs PyTorch's {want}"
        );
        let split = sft.gradients(&[vec![0, 1], (2..n).collect()]).unwrap();
        let Measured::Nll { nll: nll2, .. } = split.measured else {
            unreachable!("an SFT step")
        };
        assert!(
            rel(nll2, nll) < 1e-6,
            "{name}: NLL {nll2} split vs {nll} whole"
        );
        assert_grads_match(
            &format!("{name} SFT over two micro-batches"),
            &one.grads,
            &split.grads,
            1e-5,
        );
    }
}

/// `--max-logits` only sets how many lm_head rows are computed at once: a chunk of one position
/// gives the gradients of the device's default chunk.
#[test]
fn gradients_do_not_depend_on_the_logits_chunk() {
    let all = spin_reference();
    let name = "tiny-qwen2-f32";
    let r = &all[name];
    let cfg = config(OptimizerKind::Rmsprop, 0.0);
    let whole = trainer(name, r, cfg.clone())
        .gradients(&[vec![0, 1, 2]])
        .unwrap();
    let one_row = trainer(
        name,
        r,
        TrainConfig {
            max_logits: 1,
            ..cfg
        },
    )
    .gradients(&[vec![0, 1, 2]])
    .unwrap();
    assert_grads_match(
        "one position per lm_head chunk",
        &whole.grads,
        &one_row.grads,
        1e-5,
    );
    let d = max_rel_logps(whole.pairs().unwrap().0, one_row.pairs().unwrap().0);
    assert!(
        d < 1e-6,
        "log-probs in one-row chunks differ by {d} (relative)"
    );
}

/// A checkpoint is Hub-ready: its model card says what it was trained from and on (with the
/// hashes trainer_state.json records), how, how far and by which command; generation_config.json
/// is there even when the source had none.
#[test]
fn checkpoint_carries_a_model_card_with_the_run_and_a_generation_config() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let model = tmp.path().join("model");
    copy_fixture("tiny-qwen2-f32", &model);
    let _ = std::fs::remove_file(model.join("generation_config.json"));
    let out = tmp.path().join("run");
    let mut args = job_args(
        "train",
        "tiny-qwen2-f32",
        &pairs,
        &out,
        "--lr 1e-3 --beta 0.25 --batch-size 4 --epochs 1",
    );
    args[4] = model.to_string_lossy().into_owned();
    run_ok(&args);
    let ckpt = out.join("checkpoint");
    let card = std::fs::read_to_string(ckpt.join("README.md")).unwrap();
    let state = json_file(&ckpt.join("trainer_state.json"));
    let sha = |v: &Value| v.as_str().unwrap()[..16].to_string();
    assert_mentions(
        &card,
        &[
            "## Training",
            &format!(
                "`{}` (sha256 `{}`)",
                model.display(),
                sha(&state["identity"]["model"]["sha256"])
            ),
            &format!(
                "`{}` (content sha256 `{}`)",
                pairs.display(),
                sha(&state["identity"]["pairs_sha256"])
            ),
            "SPIN (Self-Play fIne-tuNing, Chen et al. 2024): sigmoid loss, β = 0.25",
            "rmsprop, lr 1e-3",
            "| steps | 2 of 2 |",
            "| last step | step 2: loss ",
            "wgspin train --device cpu --model",
        ],
    );
    let generation = json_file(&ckpt.join("generation_config.json"));
    let config = json_file(&model.join("config.json"));
    assert_eq!(generation["eos_token_id"], config["eos_token_id"]);
}

fn json_file(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

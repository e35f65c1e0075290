//! LoRA against PEFT + PyTorch (`tests/fixtures/make_peft_reference.py`): an adapter made by
//! `peft` loads with PEFT's log-probs (merged and unmerged), the SPIN loss, every LoRA gradient
//! and one RMSprop step on the adapters match within 1e-4 relative, the base stays frozen, and an
//! adapter wgspin writes has PEFT's file names, keys, shapes and config fields. On the CPU backend.

mod common;

use burn::tensor::Tensor;
use common::*;
use serde_json::Value;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;
use wgspin::hf::weights::WeightFiles;
use wgspin::load::adapter;
use wgspin::model::lora::{self, Lora, LoraConfig};
use wgspin::model::named::{params_mut, trainable_mut};
use wgspin::train::loss::PairLoss;
use wgspin::train::optim::{OptimizerKind, Schedule};
use wgspin::train::{Objective, PairLogps, TrainConfig, TrainPair, Trainer, pair_logps};

const MODELS: [&str; 2] = ["tiny-llama-bf16", "tiny-qwen2-f32"];

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The SPIN triples of `spin_reference.json`, tokenized as PyTorch tokenized them.
fn pairs_of(model: &str) -> Vec<TrainPair> {
    let spin = json("spin_reference.json");
    let ids = common::spin_fixture::ids;
    spin[model]["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| TrainPair {
            id: format!("{i}"),
            prompt: ids(&p["prompt_ids"]),
            real: ids(&p["real_ids"]),
            generated: ids(&p["generated_ids"]),
        })
        .collect()
}

fn lora_cfg(rank: usize, alpha: f64) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: Some(alpha),
        ..Default::default()
    }
}

fn train_cfg() -> TrainConfig {
    TrainConfig {
        loss: PairLoss {
            beta: 1.0,
            ..Default::default()
        },
        lr: 1e-3,
        optimizer: OptimizerKind::Rmsprop,
        epochs: 1,
        batch_size: 3,
        warmup_ratio: 0.0,
        schedule: Schedule::Constant,
        max_grad_norm: 0.0,
        lora: lora_cfg(4, 8.0),
        ..Default::default()
    }
}

fn logps(bundle: &ModelBundle, pairs: &[TrainPair]) -> PairLogps {
    pair_logps(
        &bundle.model,
        pairs,
        bundle.tokenizer.pad_id(),
        3,
        1 << 20,
        |_| {},
    )
    .unwrap()
}

fn assert_rel(label: &str, got: f64, want: f64, tol: f64) {
    let r = (got - want).abs() / want.abs().max(1e-6);
    eprintln!("{label}: {got} vs PEFT {want} (rel {r:.1e})");
    assert!(
        r <= tol,
        "{label}: {got} vs PEFT {want} (rel {r:.1e} > {tol:.0e})"
    );
}

#[test]
fn peft_adapters_load_with_peft_logprobs_merged_and_unmerged() {
    let all = json("peft_reference.json");
    let dev = cpu_device();
    for name in MODELS {
        let r = &all[name];
        let dir = fixture(r["adapter"].as_str().unwrap());
        let ps = pairs_of(name);
        let merged = ModelBundle::load(&dir, &dev.device).unwrap();
        assert!(!lora::has_adapters(&merged.model));
        let unmerged = ModelBundle::load_unmerged(&dir, &dev.device).unwrap();
        assert!(lora::has_adapters(&unmerged.model));
        let a = unmerged.adapter.as_ref().unwrap();
        assert_eq!((a.lora.rank, a.lora.alpha()), (4, 8.0));
        for (label, b) in [("merged", &merged), ("unmerged", &unmerged)] {
            let lp = logps(b, &ps);
            for i in 0..ps.len() {
                let want_r = r["logps_real"][i].as_f64().unwrap();
                let want_g = r["logps_generated"][i].as_f64().unwrap();
                assert_rel(
                    &format!("{name} {label} real {i}"),
                    lp.real[i],
                    want_r,
                    1e-4,
                );
                assert_rel(
                    &format!("{name} {label} gen {i}"),
                    lp.generated[i],
                    want_g,
                    1e-4,
                );
            }
        }
        // PEFT's own merge_and_unload agrees with its unmerged model, and so with ours.
        for (i, want) in f64s(&r["merged_logps_real"]).iter().enumerate() {
            assert_rel(
                &format!("{name} PEFT-merged real {i}"),
                logps(&merged, &ps).real[i],
                *want,
                1e-4,
            );
        }
        // The adapter changes the model: the base alone scores differently.
        let base = ModelBundle::load(&fixture(name), &dev.device).unwrap();
        let lb = logps(&base, &ps);
        assert!((lb.real[0] - r["logps_real"][0].as_f64().unwrap()).abs() > 1e-2);
    }
}

fn lora_trainer(name: &str, r: &Value) -> Trainer {
    let dev = cpu_device();
    let dir = fixture(r["adapter"].as_str().unwrap());
    let b =
        ModelBundle::load_for_training(&dir, &dev.device.clone().autodiff(), &train_cfg().lora, 7)
            .unwrap();
    let ps = pairs_of(name);
    let off = |k: &str| f64s(&r[k]);
    let reference = PairLogps {
        real: f64s(&r["logps_real"])
            .iter()
            .zip(off("ref_offsets_real"))
            .map(|(a, o)| a + o)
            .collect(),
        generated: f64s(&r["logps_generated"])
            .iter()
            .zip(off("ref_offsets_generated"))
            .map(|(a, o)| a + o)
            .collect(),
    };
    let pad = b.tokenizer.pad_id();
    let objective = Objective::Spin {
        pairs: ps,
        reference,
    };
    Trainer::new(b.model, train_cfg(), objective, pad).unwrap()
}

fn named(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut m = t.state.model.clone();
    trainable_mut(&mut m)
        .into_iter()
        .map(|(n, p)| (format!("base_model.model.{n}"), floats(p.value_flat())))
        .collect()
}

/// Every value of `got` within 1e-4 of the largest |PEFT value|.
fn assert_values(label: &str, got: &[f32], want: &Value) {
    let want = f64s(want);
    assert_eq!(got.len(), want.len(), "{label}: sizes");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max);
    eprintln!("{label}: max |Δ| {worst:.2e} of max |value| {scale:.2e}");
    assert!(
        worst <= 1e-4 * scale,
        "{label}: max |Δ| {worst} vs scale {scale}"
    );
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn lora_loss_gradients_and_rmsprop_step_match_peft() {
    let all = json("peft_reference.json");
    for name in MODELS {
        let r = &all[name];
        let mut t = lora_trainer(name, r);
        let names: Vec<String> = named(&t).into_iter().map(|(n, _)| n).collect();
        let want_norms = r["grad_norms"].as_object().unwrap();
        assert_eq!(
            names.len(),
            want_norms.len(),
            "{name}: one trainable tensor per LoRA matrix"
        );

        let g = t.gradients(&[vec![0, 1, 2]]).unwrap();
        let (policy, reference) = g.pairs().unwrap();
        let loss = wgspin::train::reward_stats(
            policy,
            reference,
            wgspin::train::loss::LossKind::Sigmoid,
            1.0,
        )
        .loss;
        assert_rel(
            &format!("{name} loss"),
            loss,
            r["sigmoid_mean_loss"].as_f64().unwrap(),
            1e-4,
        );
        for (i, n) in names.iter().enumerate() {
            let got = norm(&floats(g.grads[i].clone()));
            assert_rel(
                &format!("{name} |grad| {n}"),
                got,
                want_norms[n].as_f64().unwrap(),
                1e-4,
            );
        }
        for (n, want) in r["grads"].as_object().unwrap() {
            let i = names.iter().position(|x| x == n).unwrap();
            assert_values(
                &format!("{name} grad {n}"),
                &floats(g.grads[i].clone()),
                want,
            );
        }

        // One RMSprop step moves only the adapters, to PyTorch's values.
        let base_before: Vec<Vec<f32>> = {
            let mut m = t.state.model.clone();
            params_mut(&mut m)
                .into_iter()
                .map(|(_, p)| floats(p.value_flat()))
                .collect()
        };
        t.train_step().unwrap();
        let after = named(&t);
        for (n, want) in r["after_rmsprop"].as_object().unwrap() {
            let got = &after.iter().find(|(x, _)| x == n).unwrap().1;
            assert_values(&format!("{name} after RMSprop {n}"), got, want);
        }
        let mut m = t.state.model.clone();
        for ((n, p), before) in params_mut(&mut m).into_iter().zip(base_before) {
            assert_eq!(
                floats(p.value_flat()),
                before,
                "{name}: base weight {n} moved"
            );
        }
    }
}

#[test]
fn lora_with_gradient_checkpointing_gives_the_same_gradients_with_dropout_too() {
    let all = json("peft_reference.json");
    let name = "tiny-qwen2-f32";
    let r = &all[name];
    let dev = cpu_device();
    let dir = fixture(r["adapter"].as_str().unwrap());
    let cfg = TrainConfig {
        gradient_checkpointing: true,
        ..train_cfg()
    };
    let fresh = |cfg: &TrainConfig| {
        let mut b = ModelBundle::load_for_training(
            &fixture(name),
            &cfg.train_device(&dev.device),
            &cfg.lora,
            5,
        )
        .unwrap();
        // Non-zero B, so every adapter matrix gets a gradient.
        let peft = ModelBundle::load_unmerged(&dir, &dev.device).unwrap();
        let mut src = peft.model.clone();
        let values: Vec<Vec<f32>> = trainable_mut(&mut src)
            .into_iter()
            .map(|(_, p)| floats(p.value_flat()))
            .collect();
        for ((_, mut p), v) in trainable_mut(&mut b.model).into_iter().zip(values) {
            let n = v.len();
            p.set_flat(Tensor::from_data(
                burn::tensor::TensorData::new(v, [n]),
                &dev.device,
            ));
        }
        let reference = logps(&peft, &pairs_of(name));
        let pad = b.tokenizer.pad_id();
        let objective = Objective::Spin {
            pairs: pairs_of(name),
            reference,
        };
        Trainer::new(b.model, cfg.clone(), objective, pad).unwrap()
    };
    // With dropout too: both runs of a recomputed layer draw the masks of the plain pass.
    for dropout in [0.0, 0.3] {
        let with = |c: &TrainConfig| TrainConfig {
            lora: LoraConfig {
                dropout,
                ..c.lora.clone()
            },
            ..c.clone()
        };
        let mut plain = fresh(&with(&train_cfg()));
        let mut ck = fresh(&with(&cfg));
        for step in 0..2 {
            let want = plain.gradients(&[vec![0, 1, 2]]).unwrap();
            let got = ck.gradients(&[vec![0, 1, 2]]).unwrap();
            let label = format!("LoRA with checkpointing, dropout {dropout}, step {step}");
            assert_grads_match(&label, &want.grads, &got.grads, 1e-5);
            plain.train_step().unwrap();
            ck.train_step().unwrap();
        }
    }
}

#[test]
fn written_adapters_have_pefts_files_keys_shapes_and_fields() {
    let all = json("peft_reference.json");
    let dev = cpu_device();
    for name in MODELS {
        let peft_dir = fixture(all[name]["adapter"].as_str().unwrap());
        let mut b = ModelBundle::load(&fixture(name), &dev.device).unwrap();
        lora::attach(&mut b.model, &lora_cfg(4, 8.0), 3);
        // A fresh adapter is PEFT's default start: B = 0, so the model is the base.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter");
        adapter::save(&b.model, &lora_cfg(4, 8.0), name, &out, None, &[]).unwrap();

        let ours: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(adapter::CONFIG_FILE)).unwrap())
                .unwrap();
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(peft_dir.join(adapter::CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&ours),
            keys(&theirs),
            "{name}: adapter_config.json fields"
        );
        for k in [
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "bias",
            "fan_in_fan_out",
            "use_dora",
        ] {
            assert_eq!(ours[k], theirs[k], "{name}: {k}");
        }
        let set = |v: &Value| -> Vec<String> {
            let mut s: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().into())
                .collect();
            s.sort();
            s
        };
        assert_eq!(set(&ours["target_modules"]), set(&theirs["target_modules"]));

        let a = WeightFiles::open_files(&[out.join(adapter::WEIGHTS_FILE)]).unwrap();
        let p = WeightFiles::open_files(&[peft_dir.join(adapter::WEIGHTS_FILE)]).unwrap();
        let mut an: Vec<&str> = a.names().collect();
        let mut pn: Vec<&str> = p.names().collect();
        an.sort();
        pn.sort();
        assert_eq!(an, pn, "{name}: tensor keys");
        for n in an {
            assert_eq!(a.info(n), p.info(n), "{name}: {n} shape and dtype");
        }

        // Read back, the adapter is what was written.
        let back = ModelBundle::load_unmerged(&out, &dev.device);
        // base_model_name_or_path is the bare fixture name: resolved from the adapter's
        // surroundings it is not found here, so loading names the field.
        let err = back.err().map(|e| e.to_string()).unwrap_or_default();
        assert_mentions(&err, &["base_model_name_or_path", name]);
        let back = ModelBundle::load_adapter(&out, Some(&fixture(name)), &dev.device).unwrap();
        let mut m1 = b.model.clone();
        let mut m2 = back.model.clone();
        let v1: Vec<Vec<f32>> = trainable_mut(&mut m1)
            .into_iter()
            .map(|(_, p)| floats(p.value_flat()))
            .collect();
        let v2: Vec<Vec<f32>> = trainable_mut(&mut m2)
            .into_iter()
            .map(|(_, p)| floats(p.value_flat()))
            .collect();
        assert_eq!(v1, v2, "{name}: adapter round trip");
    }
}

#[test]
fn sft_with_lora_writes_an_adapter_that_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    let rows: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"prompt": format!("Say {i} twice."), "response": format!("{i} {i}")})
                .to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let out = tmp.path().join("sft");
    run_ok(job_args(
        "sft",
        "tiny-qwen2-f32",
        &data,
        &out,
        "--lr 1e-2 --optimizer adamw --batch-size 3 --epochs 4 --lora-rank 4 --lora-dropout 0.1",
    ));
    let ckpt = out.join("checkpoint");
    assert!(ckpt.join(adapter::CONFIG_FILE).is_file());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join(adapter::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(cfg["lora_dropout"], 0.1);
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(
        losses.last().unwrap() < &losses[0],
        "the adapter learns the data: {losses:?}"
    );
}

#[test]
fn lora_dropout_draws_from_the_device_seed_in_training_only() {
    let dev = cpu_device();
    let train = dev.device.clone().autodiff();
    let mut b = ModelBundle::load(&fixture("tiny-llama-bf16"), &train).unwrap();
    let cfg = LoraConfig {
        dropout: 0.5,
        ..lora_cfg(4, 8.0)
    };
    lora::attach(&mut b.model, &cfg, 1);
    // B = 0 makes the update vanish; give it values so dropout shows.
    let l = b.model.layers[0].attn.q.lora.as_mut().unwrap();
    let [out, r] = l.b.val().dims();
    l.b = lora::upload(vec![0.1; out * r], [out, r], &l.a.val());
    let l = b.model.layers[0].attn.q.lora.as_ref().unwrap();
    let [_, inp] = l.a.val().dims();
    let x = || Tensor::<2>::ones([3, inp], &train);
    let run = |seed: u64| {
        train.seed(seed);
        floats(l.forward(x()))
    };
    assert_eq!(run(9), run(9), "same seed, same mask");
    assert_ne!(run(9), run(10), "another seed, another mask");
    // Off the autodiff device (generation, scoring) there is no dropout.
    let plain = Tensor::<2>::ones([3, inp], &dev.device);
    let a = floats(l.a.val().inner());
    let want: Vec<f32> = {
        let rows: Vec<f32> = a.chunks(inp).map(|row| row.iter().sum::<f32>()).collect();
        let per_out: f32 = rows.iter().map(|s| s * 0.1).sum::<f32>() * 2.0;
        vec![per_out; 3 * out]
    };
    let lp = Lora {
        a: burn::module::Param::from_tensor(l.a.val().inner()),
        b: burn::module::Param::from_tensor(l.b.val().inner()),
        scale: l.scale,
        dropout: l.dropout,
    };
    let got = floats(lp.forward(plain));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn continuing_an_adapter_with_other_settings_is_refused_naming_them() {
    let all = json("peft_reference.json");
    let dir = fixture(all["tiny-llama-bf16"]["adapter"].as_str().unwrap());
    let dev = cpu_device().device.autodiff();
    let try_with = |cfg: LoraConfig| {
        ModelBundle::load_for_training(&dir, &dev, &cfg, 1)
            .err()
            .map(|e| e.to_string())
    };
    // Its own settings, targets in another order: continued.
    let mut same = lora_cfg(4, 8.0);
    same.targets.reverse();
    assert_eq!(try_with(same), None);
    let err = try_with(lora_cfg(8, 16.0)).unwrap();
    assert_mentions(&err, &["rank 4", "--lora-rank 8", "merge"]);
    let err = try_with(lora_cfg(4, 16.0)).unwrap();
    assert_mentions(&err, &["scale 2", "--lora-alpha 16"]);
    let err = try_with(LoraConfig {
        targets: vec![lora::Target::Q],
        ..lora_cfg(4, 8.0)
    })
    .unwrap();
    assert_mentions(&err, &["--lora-targets q_proj were asked"]);
}

#[test]
fn lora_targets_and_alpha_parse_and_resolve() {
    let t: Vec<lora::Target> = ["q", "k_proj", "down"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        t,
        vec![lora::Target::Q, lora::Target::K, lora::Target::Down]
    );
    assert!("lm_head".parse::<lora::Target>().is_err());
    let c = LoraConfig {
        rank: 16,
        ..Default::default()
    };
    assert_eq!(c.alpha(), 32.0);
    assert!(
        LoraConfig {
            dropout: 1.0,
            ..c.clone()
        }
        .validate()
        .is_err()
    );
    assert!(
        LoraConfig {
            alpha: Some(-1.0),
            ..c.clone()
        }
        .validate()
        .is_err()
    );
}

fn adapter_values(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let w = WeightFiles::open_files(&[dir.join(adapter::WEIGHTS_FILE)]).unwrap();
    let mut names: Vec<String> = w.names().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = w.read(&n).unwrap().data;
            (n, v)
        })
        .collect()
}

#[test]
fn train_with_lora_writes_a_peft_adapter_resumes_after_sigkill_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let flags = "--lr 1e-2 --optimizer adamw --batch-size 2 --epochs 3 --save-every 2 \
                 --lora-rank 4 --lora-targets q,v,down";
    let train = |out: &std::path::Path| job_args("train", "tiny-llama-bf16", &pairs, out, flags);

    let full = tmp.path().join("full");
    run_ok(train(&full));
    let ckpt = full.join("checkpoint");
    for f in [adapter::CONFIG_FILE, adapter::WEIGHTS_FILE, "README.md"] {
        assert!(ckpt.join(f).is_file(), "{f} in the adapter checkpoint");
    }
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "no full weights next to an adapter"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join(adapter::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8, "alpha defaults to 2 x rank");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(
        cfg["base_model_name_or_path"],
        fixture("tiny-llama-bf16").to_str().unwrap()
    );
    let held = adapter_values(&ckpt);
    assert_eq!(held.len(), 2 * 3 * 2, "A and B on 3 targets of 2 layers");
    let metrics = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(last["rewards/margins"].as_f64().unwrap() > 0.0, "{last}");

    // Killed after a mid-run save, resumed: the same adapter as the uninterrupted run.
    let out = tmp.path().join("out");
    let state = out.join("checkpoint").join("trainer_state.json");
    kill_when(
        &train(&out),
        std::time::Duration::from_secs(300),
        "no checkpoint",
        || state.exists(),
    );
    let mut resume = train(&out);
    resume.push("--resume".into());
    run_ok(resume);
    for ((n, a), (_, b)) in held.iter().zip(adapter_values(&out.join("checkpoint"))) {
        let d = max_abs_diff(a, &b);
        assert!(
            d < 1e-5,
            "{n}: max |Δ| {d} between resumed and uninterrupted"
        );
    }

    // Merged, the checkpoint is a plain model with the adapter's log-probs (stored in f32 here:
    // the base's bf16, the default, rounds the merged weights).
    let merged = tmp.path().join("merged");
    run_ok(args(&[
        "merge",
        "--device",
        "cpu",
        "--adapter",
        ckpt.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--dtype",
        "f32",
    ]));
    assert!(merged.join("model.safetensors").is_file() && merged.join("config.json").is_file());
    let dev = cpu_device();
    let ps = pairs_of("tiny-llama-bf16");
    let a = logps(&ModelBundle::load(&ckpt, &dev.device).unwrap(), &ps);
    let b = logps(&ModelBundle::load(&merged, &dev.device).unwrap(), &ps);
    let base = logps(
        &ModelBundle::load(&fixture("tiny-llama-bf16"), &dev.device).unwrap(),
        &ps,
    );
    for i in 0..ps.len() {
        assert_rel(&format!("merged real {i}"), b.real[i], a.real[i], 1e-4);
        assert!(
            (a.real[i] - base.real[i]).abs() > 1e-3,
            "training moved the model"
        );
    }
}

#[test]
fn spin_with_lora_continues_one_adapter_on_the_original_base() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    let mut text = String::new();
    for i in 0..8 {
        text += &serde_json::json!({"prompt": format!("What is {i} plus {i}?"),
            "response": format!("{i} plus {i} is {}.", 2 * i)})
        .to_string();
        text.push('\n');
    }
    std::fs::write(&data, text).unwrap();
    let out = tmp.path().join("spin");
    run_ok(job_args(
        "spin",
        "tiny-llama-bf16",
        &data,
        &out,
        "--iterations 2 --lr 1e-2 --optimizer adamw --max-new-tokens 8 --batch-size 3 \
         --epochs 1 --stop-accuracy 0 --eval-size 2 --lora-rank 2",
    ));
    let dev = cpu_device();
    let mut adapters = vec![];
    for t in 0..2 {
        let ckpt = out.join(format!("iter-{t}")).join("checkpoint");
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(ckpt.join(adapter::CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cfg["base_model_name_or_path"],
            fixture("tiny-llama-bf16").to_str().unwrap(),
            "iteration {t}: relative to the original base"
        );
        adapters.push(adapter_values(&ckpt));
        ModelBundle::load(&ckpt, &dev.device).unwrap();
    }
    assert_ne!(
        adapters[0], adapters[1],
        "iteration 1 trained the adapter further"
    );
    // Iteration 1's reference is θ_1 = base + adapter of iteration 0.
    let refs = std::fs::read_to_string(out.join("iter-1").join("ref_logps.jsonl")).unwrap();
    let first: Value = serde_json::from_str(refs.lines().next().unwrap()).unwrap();
    let theta1 = ModelBundle::load(&out.join("iter-0").join("checkpoint"), &dev.device).unwrap();
    let rows = wgspin::data::read_dataset(
        &out.join("iter-1").join("generated.jsonl"),
        wgspin::data::DataFormat::Auto,
    )
    .unwrap()
    .examples;
    let row = rows
        .iter()
        .find(|e| e.id == first["id"].as_str().unwrap())
        .unwrap();
    let p =
        wgspin::train::tokenize_pairs(&theta1.tokenizer, std::slice::from_ref(row), &train_cfg())
            .unwrap();
    let lp = logps(&theta1, &p);
    assert_rel(
        "iteration 1 reference",
        lp.real[0],
        first["real"].as_f64().unwrap(),
        1e-4,
    );
}

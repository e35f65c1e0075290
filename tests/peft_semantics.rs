//! Adapters mean what PEFT means: for adapters whose `adapter_config.json` restricts where LoRA goes
//! (`target_modules` as a list, a regex or `"all-linear"`, `exclude_modules`, `layers_to_transform`
//! with and without `layers_pattern`, `rank_pattern` / `alpha_pattern`), some with extra matrices in
//! the file for modules the config does not target, wgspin's merge changes exactly the projections
//! PEFT's `merge_and_unload()` changes, by what PEFT changes them by, and leaves the rest bit for bit
//! the base's. The reference is PEFT itself (`tests/fixtures/peft/make_peft_fixtures.py`): per
//! projection, max |ΔW|, ‖ΔW‖ and ΔW·u for a fixed u, with ΔW = merged − base in f32. On the CPU
//! backend.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;
use wgspin::hf::weights::WeightFiles;
use wgspin::model::Transformer;
use wgspin::model::lora::{self, LoraConfig, Target};
use wgspin::model::named::params_mut;

/// |ΔW·u| and ‖ΔW‖ against PEFT's: both are f32 merges of the same f32 matrices (W + s·BA), so they
/// differ by float rounding only (|ΔW| ≲ 0.1 here, its sums over ≤ 96 terms).
const TOL: f64 = 1e-5;

fn peft_dir(name: &str) -> PathBuf {
    fixture("peft").join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture("peft").join("reference.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all["adapters"][name].clone()
}

fn strings(v: &Value) -> Vec<String> {
    let list = v.as_array().unwrap().iter();
    list.map(|s| s.as_str().unwrap().to_string()).collect()
}

/// The probe PEFT's digest multiplies ΔW by: u[j] = ((37 j) mod 17) / 17 − 0.5.
fn probe_vector(n: usize) -> Vec<f64> {
    (0..n)
        .map(|j| ((37 * j) % 17) as f64 / 17.0 - 0.5)
        .collect()
}

/// Every projection weight of `m` by its HF name, as f32.
fn projections(m: &mut Transformer) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    params_mut(m)
        .into_iter()
        .filter(|(n, _)| n.ends_with("_proj.weight"))
        .map(|(n, p)| (n, (p.shape(), floats(p.value_flat()))))
        .collect()
}

/// The modules of `m` that carry an adapter, by name.
fn lora_modules(m: &mut Transformer) -> Vec<String> {
    let mut names: Vec<String> = lora::targets_mut(m)
        .into_iter()
        .filter(|(_, _, lin)| lin.lora.is_some())
        .map(|(l, t, _)| t.module_path(l))
        .collect();
    names.sort();
    names
}

/// Compares the merged projections `got` with PEFT's digest of adapter `name`; returns the largest
/// error of ΔW·u and ‖ΔW‖.
fn assert_merged_as_peft(name: &str, got: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> f64 {
    let base = WeightFiles::open_dir(&fixture("tiny-llama-bf16")).unwrap();
    let want = &reference(name)["projections"];
    let mut max_err = 0.0f64;
    for (module, peft) in want.as_object().unwrap() {
        let key = format!("{module}.weight");
        let (shape, merged) = &got[&key];
        let before = base.read(&key).unwrap().data;
        let delta: Vec<f64> = merged
            .iter()
            .zip(&before)
            .map(|(m, b)| *m as f64 - *b as f64)
            .collect();
        if peft["max_abs"].as_f64().unwrap() == 0.0 {
            assert!(
                merged
                    .iter()
                    .zip(&before)
                    .all(|(m, b)| m.to_bits() == b.to_bits()),
                "{name}: {module} is not targeted (PEFT leaves it as is) but the merge changed it"
            );
            continue;
        }
        let [out, inp] = [shape[0], shape[1]];
        let u = probe_vector(inp);
        let probe: Vec<f64> = (0..out)
            .map(|r| (0..inp).map(|c| delta[r * inp + c] * u[c]).sum())
            .collect();
        let peft_probe: Vec<f64> = peft["probe"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(
            probe.len(),
            peft_probe.len(),
            "{name}: {module} probe length"
        );
        let frob = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
        let mut err = (frob - peft["frob"].as_f64().unwrap()).abs();
        for (a, b) in probe.iter().zip(&peft_probe) {
            err = err.max((a - b).abs());
        }
        assert!(
            err <= TOL,
            "{name}: {module} merged differs from PEFT's by {err:.2e} (> {TOL:.0e})"
        );
        assert!(
            frob > 1e-3,
            "{name}: {module} is targeted but barely changed"
        );
        max_err = max_err.max(err);
    }
    max_err
}

/// Loads adapter `name` as `merge` (load_adapter + merge) and as running does (`ModelBundle::load`),
/// and holds both to PEFT: the modules with LoRA, the ignored keys, the merged weights.
fn check(name: &str) {
    let dev = cpu_device();
    let r = reference(name);
    let dir = peft_dir(name);
    let mut b = ModelBundle::load_adapter(&dir, None, &dev.device).unwrap();
    assert_eq!(
        lora_modules(&mut b.model),
        strings(&r["lora_modules"]),
        "{name}: the modules carrying LoRA"
    );
    let a = b.adapter.as_ref().unwrap();
    let mut ignored = a.ignored_keys.clone();
    ignored.sort();
    assert_eq!(
        ignored,
        strings(&r["unexpected_keys"]),
        "{name}: ignored keys"
    );
    lora::merge(&mut b.model);
    let err = assert_merged_as_peft(name, &projections(&mut b.model));
    let mut run = ModelBundle::load(&dir, &dev.device).unwrap();
    let run_err = assert_merged_as_peft(name, &projections(&mut run.model));
    eprintln!("{name}: max error against PEFT {:.2e}", err.max(run_err));
}

#[test]
fn target_modules_list_ignores_matrices_of_untargeted_modules() {
    check("q-only-extra-keys");
}

#[test]
fn target_modules_regex_must_match_the_full_module_name() {
    check("regex");
}

#[test]
fn layers_to_transform_restricts_the_layers() {
    check("layers-to-transform");
}

#[test]
fn layers_to_transform_as_an_int_with_layers_pattern() {
    check("layers-pattern");
}

#[test]
fn all_linear_is_every_projection_but_the_lm_head() {
    check("all-linear");
}

#[test]
fn exclude_modules_are_left_out() {
    check("exclude");
}

#[test]
fn rank_and_alpha_patterns_give_modules_their_own() {
    check("rank-pattern");
}

fn read_dir_weights(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let files = WeightFiles::open_dir(dir).unwrap();
    let names: Vec<String> = files.names().map(str::to_string).collect();
    names
        .into_iter()
        .filter(|n| n.ends_with("_proj.weight"))
        .map(|n| {
            let t = files.read(&n).unwrap();
            (n, (t.shape, t.data))
        })
        .collect()
}

#[test]
fn wgspin_merge_writes_what_peft_merges_and_warns_of_ignored_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let adapter = peft_dir("q-only-extra-keys");
    let run = run_ok([
        "merge",
        "--device",
        "cpu",
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_mentions(&stderr, &["warning: ignored 24 tensors", "does not target"]);
    let err = assert_merged_as_peft("q-only-extra-keys", &read_dir_weights(&out));
    eprintln!("wgspin merge q-only-extra-keys: max error against PEFT {err:.2e}");
}

#[test]
fn training_continues_only_adapters_the_flags_describe() {
    let dev = cpu_device().device.autodiff();
    let cfg = |targets: &[Target]| LoraConfig {
        rank: 4,
        alpha: Some(8.0),
        dropout: 0.0,
        targets: targets.to_vec(),
    };
    // target_modules ["q_proj"] on every layer: what `--lora-targets q` saves, so it continues,
    // with the adapters the config names and not the file's other matrices.
    let dir = peft_dir("q-only-extra-keys");
    let mut b = ModelBundle::load_for_training(&dir, &dev, &cfg(&[Target::Q]), 1).unwrap();
    let want = strings(&reference("q-only-extra-keys")["lora_modules"]);
    assert_eq!(lora_modules(&mut b.model), want);
    for (name, targets, parts) in [
        (
            "layers-to-transform",
            &[Target::Q, Target::V, Target::Down][..],
            &["some layers", "merge it first"][..],
        ),
        (
            "rank-pattern",
            &[Target::Q, Target::V, Target::Down][..],
            &["rank_pattern", "merge it first"][..],
        ),
    ] {
        let err = ModelBundle::load_for_training(&peft_dir(name), &dev, &cfg(targets), 1)
            .err()
            .unwrap_or_else(|| panic!("{name}: continued an adapter the flags cannot describe"));
        assert_mentions(&err.to_string(), parts);
    }
}

/// A copy of fixture adapter `name` in `tmp` with its config's fields replaced by `edits`.
fn edited(tmp: &Path, name: &str, edits: &[(&str, Value)]) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(peft_dir(name).join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("adapter_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in edits {
        cfg[*k] = v.clone();
    }
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn refusals_name_the_module_or_field() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("tiny-llama-bf16");
    let dev = cpu_device();
    let json = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    for (name, edits, parts) in [
        // Targeted, but the file holds layer 0's q_proj only: PEFT would start layer 1's at its
        // initialisation (random A with init_lora_weights false), which is not this adapter.
        (
            "regex",
            vec![("target_modules", json(r#"".*q_proj""#))],
            vec![
                "model.layers.1.self_attn.q_proj.lora_A.weight",
                "is missing",
                "target_modules",
            ],
        ),
        (
            "q-only-extra-keys",
            vec![("modules_to_save", json(r#"["lm_head"]"#))],
            vec!["adapter_config.json", "modules_to_save", "merge with PEFT"],
        ),
        (
            "q-only-extra-keys",
            vec![("layers_pattern", json(r#""layers""#))],
            vec![
                "adapter_config.json",
                "layers_pattern",
                "layers_to_transform",
            ],
        ),
        (
            "q-only-extra-keys",
            vec![("target_modules", json(r#"["q_proj", "embed_tokens"]"#))],
            vec!["model.embed_tokens", "embeddings"],
        ),
        (
            "regex",
            vec![("target_modules", json(r#""(?!x).*q_proj""#))],
            vec!["target_modules", "look-around"],
        ),
    ] {
        let dir = edited(tmp.path(), name, &edits);
        let err = ModelBundle::load_adapter(&dir, Some(&base), &dev.device)
            .err()
            .unwrap_or_else(|| panic!("{name} with {edits:?} loaded"));
        assert_mentions(&err.to_string(), &parts);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

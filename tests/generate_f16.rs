//! Generation in f16 (`--dtype f16`) against f32 on the same model. The f32 reference is
//! computed here, independently of the decode engine: a cache-free forward pass (the training
//! path) on the CPU backend over each prompt and the tokens f32 greedy decoding chose.
//!
//! - The f32 tokens teacher-forced through the f16 decode path (an f16 prefill into an f16
//!   cache, then f16 decode steps) get log-probs within a tolerance of f32's, relative and
//!   floored at 1 (|Δ log p| ≤ tol · max(1, |log p|)): 1e-2 on the tiny fixtures (measured
//!   2.3e-3), 2e-2 on SmolLM2-135M (measured 1.3e-2 on the CPU backend, 1.1e-2 on lavapipe; the
//!   f16 forward pass of training and scoring is off by as much, so this is f16 activations'
//!   own error in a 30-layer model, not the decode path's).
//! - f16 greedy tokens through the engine (continuous batching) equal the f32 ones until the
//!   rows part, and they may part only at a position where f32's top-2 logit gap is within 4×
//!   the largest |Δ logit| of the f16 decode path there (a flip needs the gap to be within 2×
//!   it; the other 2× covers the engine's prefill and batch shapes, which round differently
//!   from the teacher-forced run). After that the continuations are different texts.
//! - An f16 decode step launches no more kernels than an f32 one, give or take the one launch
//!   burn's fusion varies from run to run (nothing is cast per step),
//!   its cache and decode weights are f16, and the cache takes half the bytes.
//!
//! Tiny fixtures on the CPU backend (f16 in software) and the GPU model on a wgpu adapter with
//! WGSL f16 (lavapipe here); SmolLM2-135M-Instruct when `WGSPIN_SMOLLM2_GGUF` names it, on the
//! CPU backend (6 minutes on lavapipe).

mod common;

use burn::tensor::DType;
use common::*;
use wgspin::ModelBundle;
use wgspin::device::{ComputeDevice, cpu_device};
use wgspin::kernels::common::f16_kernel_available;
use wgspin::model::fused::DecodeWeights;
use wgspin::model::precision::set_compute;
use wgspin::model::static_cache::{LEN_BUCKET, StaticKvCache, capacity_for, ids_tensor};
use wgspin::model::{KvCache, StepInput};

/// Held by the tests that run kernels on wgpu: cubecl's launch observer counts every launch in
/// the process, so the launch count must not see another test's kernels.
static WGPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn wgpu_alone() -> std::sync::MutexGuard<'static, ()> {
    WGPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The largest logit minus the second largest.
fn top2_gap(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in row {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// Logits predicting each of `tokens` after `prompt` `[tokens.len()][vocab]`, from one
/// cache-free forward pass (no decode kernels involved).
fn full_forward_logits(bundle: &ModelBundle, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids: Vec<u32> = prompt.iter().chain(tokens).copied().collect();
    let logits = bundle
        .model
        .forward(&StepInput::right_padded(&[ids], 0), None);
    let v = logits.dims()[2];
    let flat = floats(logits);
    (0..tokens.len())
        .map(|i| {
            let at = prompt.len() - 1 + i;
            flat[at * v..(at + 1) * v].to_vec()
        })
        .collect()
}

/// The same logits through the decode path as the engine runs it, with `tokens` fed instead of
/// sampled: a prefill of `prompt` into the static cache, then one decode step per token.
fn teacher_forced_logits(bundle: &ModelBundle, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f32>> {
    let model = &bundle.model;
    let device = model.device();
    let mut cache = StaticKvCache::new(model, 1, capacity_for(prompt.len(), tokens.len()));
    assert_eq!(
        cache.dtype(),
        model.compute,
        "the cache is in the compute dtype"
    );
    let weights = DecodeWeights::new(model);
    let mut fresh = KvCache::new(model.num_layers());
    let hidden = model.forward_hidden(
        &StepInput::right_padded(&[prompt.to_vec()], 0),
        Some(&mut fresh),
    );
    let [_, s, h] = hidden.dims();
    let last = hidden.reshape([s, h]).slice([s - 1..s, 0..h]);
    let mut out = vec![floats(weights.logits(last))];
    cache.load_rows(fresh, &[0]);
    for (i, &t) in tokens[..tokens.len() - 1].iter().enumerate() {
        let pos = prompt.len() + i;
        let step = cache.step(
            &ids_tensor(&[pos as u32], &device),
            (pos + 1).next_multiple_of(LEN_BUCKET),
        );
        let logits = model.decode_step(&weights, ids_tensor(&[t], &device), &step, &mut cache);
        assert_eq!(logits.dtype(), DType::F32, "logits leave the step in f32");
        out.push(floats(logits));
    }
    out
}

/// What one model's f16-vs-f32 comparison measured on one device.
#[derive(Debug, Default)]
struct Compared {
    /// Largest |Δ log p| / max(1, |log p|) of the f32 tokens.
    logprob_rel: f64,
    /// Largest |Δ logit| anywhere.
    logit_err: f32,
    /// Greedy tokens equal to f32's before the rows part (all of them when they never do).
    tokens_equal: usize,
    tokens: usize,
    /// Positions whose f32 top-2 gap is within 4× that position's |Δ logit| (a flip possible).
    undecided: usize,
}

/// Compares f16 generation on `f16_model` with f32 generation on `f32_model` (CPU backend) for
/// `prompts`, `max_new` greedy tokens each (see the module docs): log-probs of the f32 tokens
/// within `lp_tol`, greedy tokens equal until a position where a flip is possible.
fn compare(
    label: &str,
    (f32_model, f16_model): (&ModelBundle, &ModelBundle),
    prompts: &[Vec<u32>],
    max_new: usize,
    lp_tol: f64,
) -> Compared {
    let want = run_generate(
        f32_model,
        prompts,
        &greedy_opts(prompts.len(), max_new, vec![]),
    );
    // Two slots for three or more prompts: a later prompt joins a running f16 batch.
    let got = run_generate(f16_model, prompts, &greedy_opts(2, max_new, vec![]));
    let mut c = Compared::default();
    for ((prompt, want), got) in prompts.iter().zip(&want).zip(&got) {
        let reference = full_forward_logits(f32_model, prompt, want);
        let forced = teacher_forced_logits(f16_model, prompt, want);
        let mut parted = false;
        for (i, ((r, f), &t)) in reference.iter().zip(&forced).zip(want).enumerate() {
            let (lr, lf) = (log_softmax(r)[t as usize], log_softmax(f)[t as usize]);
            c.logprob_rel = c.logprob_rel.max((lf - lr).abs() / lr.abs().max(1.0));
            let err = max_abs_diff(r, f);
            c.logit_err = c.logit_err.max(err);
            let undecided = top2_gap(r) <= 4.0 * err;
            c.undecided += usize::from(undecided);
            c.tokens += 1;
            if parted {
                continue;
            }
            if got[i] == t {
                c.tokens_equal += 1;
            } else {
                assert!(
                    undecided,
                    "{label}: f16 greedy token {i} is {} where f32's is {t}, whose top-2 gap \
                     {} exceeds 4 × the f16 error {err} there",
                    got[i],
                    top2_gap(r)
                );
                parted = true;
            }
        }
    }
    eprintln!("{label}: {c:?}");
    assert!(
        c.logprob_rel <= lp_tol,
        "{label}: f16 log-probs of the f32 tokens within {:e} of f32's (tolerance {lp_tol:e})",
        c.logprob_rel
    );
    c
}

/// The model at `path` on the CPU backend in f32, and on `dev` in f16.
fn f32_and_f16(path: &std::path::Path, dev: &ComputeDevice) -> (ModelBundle, ModelBundle) {
    let f32_model = ModelBundle::load(path, &cpu_device().device).unwrap();
    let mut f16_model = ModelBundle::load(path, &dev.device).unwrap();
    set_compute(&mut f16_model.model, DType::F16);
    (f32_model, f16_model)
}

/// Whether `dev` runs f16 the way `--dtype auto` would pick it: the CPU backend always (asked
/// explicitly), a GPU only with WGSL f16.
fn takes_f16(dev: &ComputeDevice) -> bool {
    !dev.is_gpu || f16_kernel_available(&dev.device)
}

#[test]
fn f16_greedy_generation_tracks_f32_on_the_fixtures() {
    let _alone = wgpu_alone();
    for dev in devices().into_iter().filter(takes_f16) {
        for name in TINY_MODELS.iter().filter(|m| runs_on(&dev, m)) {
            let dir = fixture(name);
            let r = reference(&dir);
            let mut prompts: Vec<Vec<u32>> =
                r.greedy.iter().map(|g| g.prompt_ids.clone()).collect();
            prompts.extend(r.cases.iter().skip(3).map(|c| c.prompt_ids.clone()));
            let max_new = if dev.is_gpu { 12 } else { 24 };
            let (a, b) = f32_and_f16(&dir, &dev);
            let label = format!("{name} f16 on {}", dev.description);
            compare(&label, (&a, &b), &prompts, max_new, 1e-2);
        }
    }
}

/// SmolLM2-135M-Instruct (real weights, 30 layers) on the CPU backend: f16 computed in software
/// through the same decode path.
#[test]
fn f16_greedy_generation_tracks_f32_on_smollm2() {
    let Some(path) = smollm2_gguf() else { return };
    let r = reference(&shared_fixture("smollm2-135m-instruct"));
    let prompts: Vec<Vec<u32>> = r.greedy.iter().map(|g| g.prompt_ids.clone()).collect();
    let (a, b) = f32_and_f16(&path, &cpu_device());
    compare(
        "smollm2 f16 on the CPU backend",
        (&a, &b),
        &prompts,
        12,
        2e-2,
    );
}

#[test]
fn f16_halves_the_kv_cache_and_decodes_from_f16_weights() {
    let dev = cpu_device();
    let dir = fixture(GPU_MODEL);
    let (a, b) = f32_and_f16(&dir, &dev);
    let (slots, capacity) = (4, capacity_for(100, 200));
    let c32 = StaticKvCache::new(&a.model, slots, capacity);
    let c16 = StaticKvCache::new(&b.model, slots, capacity);
    assert_eq!((c32.dtype(), c16.dtype()), (DType::F32, DType::F16));
    assert_eq!(c16.bytes() * 2, c32.bytes());
    let cfg = &a.config;
    let per_layer = 2 * slots * cfg.num_kv_heads * capacity * cfg.head_dim;
    assert_eq!(c32.bytes(), cfg.num_layers * per_layer * 4);
    let w = DecodeWeights::new(&b.model);
    assert_eq!(w.dtype, DType::F16);
    let l = &w.layers[0];
    for t in [&l.qkv, &l.gate_up, &l.o.0, &l.down.0, &w.embed, &w.head] {
        assert_eq!(t.dtype(), DType::F16);
    }
    for t in [&l.qkv_bias, &l.input_norm, &l.post_attn_norm, &w.norm] {
        assert_eq!(t.dtype(), DType::F16);
    }
}

/// On wgpu an f16 step runs the f32 step's kernels in f16: no launch is added by a cast
/// (counted by cubecl's launch observer, as `bench generate` counts them).
#[test]
fn f16_decode_launches_no_more_kernels_than_f32() {
    use wgspin::generate::GenRequest;
    use wgspin::generate::profile::profile_generate;
    let Some(dev) = devices().into_iter().find(|d| d.is_gpu) else {
        return;
    };
    if !f16_kernel_available(&dev.device) {
        eprintln!("skipped: {} has no WGSL f16", dev.description);
        return;
    }
    let _alone = wgpu_alone();
    let dir = fixture(GPU_MODEL);
    let r = reference(&dir);
    let requests: Vec<GenRequest> = r
        .greedy
        .iter()
        .enumerate()
        .map(|(i, g)| GenRequest {
            index: i as u32,
            prompt: g.prompt_ids.clone(),
        })
        .collect();
    let opts = greedy_opts(requests.len(), 24, vec![]);
    let mut per_step = vec![];
    for dtype in [DType::F32, DType::F16] {
        let mut b = ModelBundle::load(&dir, &dev.device).unwrap();
        set_compute(&mut b.model, dtype);
        let p = profile_generate(&b.model, &requests, &opts).unwrap();
        eprintln!("{dtype:?} on {}: {p:?}", dev.description);
        assert!(p.measured_steps > 0, "{dtype:?}: no steps after warm-up");
        per_step.push((p.launches_per_step.unwrap(), p.kv_cache_bytes));
    }
    let [(l32, kv32), (l16, kv16)] = per_step[..] else {
        unreachable!("two runs")
    };
    // burn's fusion groups the few small state updates of a step (position, sampler step)
    // differently from run to run, moving either count by about a launch per step (more on a
    // loaded machine, where it flushes at other points); a cast per weight would add at least
    // seven per layer, so the bound is one per layer.
    let layers = wgspin::hf::config::ModelConfig::from_dir(&dir)
        .unwrap()
        .num_layers as f64;
    assert!(
        l16 < l32 + layers.max(1.0),
        "f16 {l16} launches per step, f32 {l32} ({layers} layers)"
    );
    assert_eq!(kv16 * 2, kv32, "f16 KV cache bytes");
}

//! Helpers shared by the integration tests: fixture paths, the reference outputs written by
//! `tests/fixtures/make_fixtures.py` (transformers), the devices to run on, running the binary,
//! and the checks several test files make, so each is written (and tightened) in one place.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use wgspin::ModelBundle;
use wgspin::device::{self, ComputeDevice, DeviceSpec};
use wgspin::hf::tokenizer::ChatTokenizer;
use wgspin::train::score::TokenizedPair;

pub mod hub;
pub mod spin_fixture;

pub const TINY_MODELS: &[&str] = &[
    "tiny-llama-bf16",
    "tiny-qwen2-f32",
    "tiny-mistral-f16",
    "tiny-qwen3-bf16",
    "tiny-gemma3-bf16",
    "tiny-gemma3-6l-bf16",
];

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// `../shared/fixtures/<name>` next to the repository (CI and sessions have it).
pub fn shared_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("fixtures")
        .join(name)
}

#[derive(Debug, Deserialize)]
pub struct RefCase {
    pub prompt: String,
    pub response: String,
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    pub token_logprobs: Vec<f64>,
    pub logprob: f64,
    #[serde(default)]
    pub argmax: Vec<u32>,
    #[serde(default)]
    pub last_logits: Vec<f32>,
}

impl RefCase {
    /// Prompt then response: the sequence transformers scored.
    pub fn ids(&self) -> Vec<u32> {
        self.prompt_ids
            .iter()
            .chain(&self.response_ids)
            .copied()
            .collect()
    }

    /// The case as transformers tokenized it, so scoring does not depend on our tokenizer.
    pub fn pair(&self) -> TokenizedPair {
        TokenizedPair {
            prompt: self.prompt_ids.clone(),
            response: self.response_ids.clone(),
        }
    }
}

/// Asserts that `tok` gives transformers' prompt and response ids for every case.
pub fn assert_reference_ids(tok: &ChatTokenizer, cases: &[RefCase], label: &str) {
    for c in cases {
        let pair = TokenizedPair::new(tok, &c.prompt, &c.response).unwrap();
        assert_eq!(
            pair.prompt, c.prompt_ids,
            "{label}: prompt ids of {:?}",
            c.prompt
        );
        assert_eq!(
            pair.response, c.response_ids,
            "{label}: response ids of {:?}",
            c.response
        );
    }
}

#[derive(Debug, Deserialize)]
pub struct RefGreedy {
    pub prompt_ids: Vec<u32>,
    /// `ids` in the shared SmolLM2 reference.
    #[serde(alias = "ids")]
    pub tokens: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub cases: Vec<RefCase>,
    pub greedy: Vec<RefGreedy>,
}

pub fn reference(dir: &std::path::Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

/// The CPU backend and, when the machine has one, the best wgpu adapter. Set
/// `WGSPIN_REQUIRE_GPU=1` (CI does) to make a missing adapter a failure instead of a CPU-only run,
/// or `WGSPIN_TEST_DEVICES=cpu` to test the CPU backend only.
pub fn devices() -> Vec<ComputeDevice> {
    let mut out = vec![device::cpu_device()];
    if std::env::var("WGSPIN_TEST_DEVICES").is_ok_and(|v| v == "cpu") {
        return out;
    }
    match device::select(DeviceSpec::Gpu) {
        Ok(d) => out.push(d),
        Err(e) => {
            if std::env::var("WGSPIN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("WGSPIN_REQUIRE_GPU=1 but no wgpu adapter: {e}");
            }
            eprintln!("note: no wgpu adapter, testing the CPU backend only ({e})");
        }
    }
    out
}

/// The model the (slow, software) GPU legs of the model tests run on: GQA, llama3 RoPE, tied
/// embeddings, explicit head_dim, bf16 weights. On lavapipe one forward pass of a tiny model costs
/// tens of seconds, so the other fixtures are checked on the CPU backend only.
pub const GPU_MODEL: &str = "tiny-llama-bf16";

/// Whether `model` is tested on `dev`.
pub fn runs_on(dev: &ComputeDevice, model: &str) -> bool {
    !dev.is_gpu || model == GPU_MODEL
}

/// Calls `f` for every tiny model on every device it is tested on (see [`runs_on`]), with its
/// name, its transformers reference and the model loaded there.
pub fn each_model_on_each_device(
    mut f: impl FnMut(&ComputeDevice, &str, &Reference, &ModelBundle),
) {
    for dev in devices() {
        for name in TINY_MODELS.iter().filter(|m| runs_on(&dev, m)) {
            let dir = fixture(name);
            let r = reference(&dir);
            let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
            f(&dev, name, &r, &bundle);
        }
    }
}

/// A tensor's values as f32, in row-major order.
pub fn floats<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// Asserts `got` (a device's f32 output) is within `tol · max(1, |want|)` of a host reference in
/// f64, element by element.
pub fn assert_close(label: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let err = (a as f64 - b).abs();
        assert!(
            err <= tol * b.abs().max(1.0),
            "{label}: [{i}] {a} vs {b} (|Δ| {err:e})"
        );
    }
}

/// Asserts that `text` (an error message, say) contains every one of `parts`.
pub fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} not in: {text}");
    }
}

/// Relative difference with a floor on the denominator.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-6)
}

/// `contents` saved as `name` in a fresh temporary folder, which lasts as long as the returned
/// guard; the name is what error messages quote.
pub fn temp_file(name: &str, contents: impl AsRef<[u8]>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, contents).unwrap();
    (dir, p)
}

/// Deterministic pseudo-random numbers (the crate's SplitMix64) so failures reproduce.
#[allow(unused_imports)] // not every test binary draws numbers
pub use wgspin::rng::SplitMix64 as Rng;

/// The `wgspin` binary under test.
pub fn wgspin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgspin"))
}

/// Owned command-line arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `<cmd> --device cpu --model <fixture model> --data <data> --out <out>`, then `flags` as typed
/// on a command line (split at white space): the shape of every command that turns a data file
/// into an output with a model.
pub fn job_args(cmd: &str, model: &str, data: &Path, out: &Path, flags: &str) -> Vec<String> {
    job_args_at(cmd, &fixture(model), data, out, flags)
}

/// [`job_args`] with the model at any path (a copy, a checkpoint a test made).
pub fn job_args_at(cmd: &str, model: &Path, data: &Path, out: &Path, flags: &str) -> Vec<String> {
    let mut v = args(&[cmd, "--device", "cpu", "--model"]);
    v.push(model.to_str().unwrap().into());
    v.extend(args(&["--data", data.to_str().unwrap()]));
    v.extend(args(&["--out", out.to_str().unwrap()]));
    v.extend(flags.split_whitespace().map(String::from));
    v
}

/// Runs `wgspin <args>` to the end and asserts that it succeeded, showing its stderr if not.
pub fn run_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let out = wgspin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `wgspin <args>`, asserts a clean failure (exit 1, no panic), returns stderr.
pub fn run_err<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let out = wgspin()
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure: {err}"
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    err
}

/// Every file under `dir` with its bytes, to check a refused run changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with(wgspin::manifest::LOCK_FILE) {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Starts `wgspin <args>` and kills it (SIGKILL on Unix, TerminateProcess on Windows) as soon as
/// `ready()` holds, to test resuming from what a crash leaves behind. Fails with `never_ready`
/// after `timeout`, or if the run ends before it could be killed.
pub fn kill_when(
    args: &[String],
    timeout: Duration,
    never_ready: &str,
    mut ready: impl FnMut() -> bool,
) {
    let mut child = wgspin().args(args).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "{never_ready}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs the generation engine over `prompts` (request i = prompt i) and returns each one's tokens.
pub fn run_generate(
    bundle: &wgspin::ModelBundle,
    prompts: &[Vec<u32>],
    opts: &wgspin::generate::GenOptions,
) -> Vec<Vec<u32>> {
    let requests: Vec<wgspin::generate::GenRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| wgspin::generate::GenRequest {
            index: i as u32,
            prompt: p.clone(),
        })
        .collect();
    let mut out = vec![vec![]; prompts.len()];
    wgspin::generate::generate(&bundle.model, &requests, opts, |f| {
        out[f.index as usize] = f.tokens;
        Ok(())
    })
    .unwrap();
    out
}

/// Greedy decoding settings: `batch` rows, `max_new` tokens, stopping on `stop`.
pub fn greedy_opts(batch: usize, max_new: usize, stop: Vec<u32>) -> wgspin::generate::GenOptions {
    wgspin::generate::GenOptions {
        batch_size: batch,
        max_new_tokens: max_new,
        sampling: wgspin::kernels::sample::SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop_ids: stop,
        pad_id: 0,
    }
}

/// The SmolLM2 GGUF from `WGSPIN_SMOLLM2_GGUF`; `None` (test skipped) when unset, except in CI
/// (`CI` or `WGSPIN_REQUIRE_GPU=1`), where a missing model is a failure.
pub fn smollm2_gguf() -> Option<PathBuf> {
    match std::env::var_os("WGSPIN_SMOLLM2_GGUF") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "WGSPIN_SMOLLM2_GGUF={} is not a file",
                p.display()
            );
            Some(p)
        }
        None => {
            assert!(
                !is_ci(),
                "WGSPIN_SMOLLM2_GGUF is not set but this is a CI run (CI or WGSPIN_REQUIRE_GPU=1): .ci/run downloads it"
            );
            eprintln!("skipped: set WGSPIN_SMOLLM2_GGUF (see .ci/run)");
            None
        }
    }
}

/// Copies the files of fixture `name` into the folder `dest` (created).
pub fn copy_fixture(name: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
    }
}

/// Rewrites the JSON file at `path` through `f`.
pub fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Eight SPIN pairs (the output shape of `wgspin generate`) for the training jobs' tests.
pub fn write_pairs(path: &Path) {
    let mut text = String::new();
    for i in 0..8 {
        let row = wgspin::generate::job::spin_row(
            &format!("q{i}"),
            &format!("question number {i}?"),
            &format!("the human answer is {}", i * 7),
            &format!("model says {} {}", i, "la ".repeat(i)),
            "eos",
            3,
        );
        text += &row.to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The largest |a − b| over two slices of one length.
/// Log-softmax of one row of logits, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Two gradient lists (aligned by parameter) equal within `rel` of each tensor's largest |value|.
pub fn assert_grads_match(
    label: &str,
    want: &[burn::tensor::Tensor<1>],
    got: &[burn::tensor::Tensor<1>],
    rel: f32,
) {
    assert_eq!(want.len(), got.len(), "{label}: tensor counts");
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        let (a, b) = (floats(a.clone()), floats(b.clone()));
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let worst = max_abs_diff(&a, &b);
        assert!(
            worst <= rel * scale,
            "{label} tensor {i}: max |Δ| {worst} of {scale}"
        );
    }
}

/// A CI run (`CI` set, or `WGSPIN_REQUIRE_GPU=1` as `.ci/run` sets it): what `.ci/run` installs
/// must be there.
pub fn is_ci() -> bool {
    std::env::var_os("CI").is_some() || std::env::var("WGSPIN_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Whether `python3` has `modules`, an independent client `.ci/run` installs (`install` says how):
/// without it the test is skipped with a printed reason, and in CI it fails.
pub fn python_client(modules: &[&str], install: &str) -> bool {
    if python_has(modules) {
        return true;
    }
    assert!(
        !is_ci(),
        "python3 lacks {modules:?} but this is a CI run: .ci/run installs them ({install})"
    );
    eprintln!("skipped: python3 lacks {modules:?}; {install} (see .ci/run)");
    false
}

/// Whether `python3` imports every module in `modules`.
pub fn python_has(modules: &[&str]) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {}", modules.join(", "))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tests/<script>` with `request` (JSON) on stdin and reads back its `{"logprobs",
/// "greedy"}`: what an independent implementation scores and generates.
pub fn python_eval(script: &str, request: serde_json::Value) -> (Vec<f64>, Vec<u32>) {
    use std::io::Write;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed on {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logprobs = v["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let greedy = v["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    (logprobs, greedy)
}

/// wgspin's log-probs of `ids[prompt_len..]` and its greedy continuation (`greedy` tokens, no stop
/// token) of `ids[..prompt_len]`, for the model at `path` on the CPU backend.
pub fn wgspin_scores(
    path: &Path,
    ids: &[u32],
    prompt_len: usize,
    greedy: usize,
) -> (Vec<f64>, Vec<u32>) {
    let dev = wgspin::device::cpu_device();
    let bundle = ModelBundle::load(path, &dev.device).unwrap();
    let input = wgspin::model::StepInput::right_padded(&[ids.to_vec()], 0);
    let logits = bundle.model.forward(&input, None); // [1, s, v]
    let [_, s, v] = logits.dims();
    let flat = floats(logits);
    let logprobs = (prompt_len..s)
        .map(|i| log_softmax(&flat[(i - 1) * v..i * v])[ids[i] as usize])
        .collect();
    let tokens = run_generate(
        &bundle,
        &[ids[..prompt_len].to_vec()],
        &greedy_opts(1, greedy, vec![]),
    )
    .remove(0);
    (logprobs, tokens)
}

//! `generate --server`: generation through an OpenAI-compatible server.
//!
//! The real client test serves SmolLM2 (converted from `WGSPIN_SMOLLM2_GGUF` and exported by
//! wgspin as an f32 GGUF) with llama.cpp through llama-cpp-python's server on loopback, and checks
//! that greedy server generation equals wgspin's own greedy generation, row for row, through both
//! APIs; that a partial output resumes; and that a server killed and restarted mid-run is waited
//! for. It needs `python3 -m llama_cpp.server` (`.ci/run` installs it; skipped elsewhere with a
//! printed reason, a failure in CI). The retry policy itself (which statuses are retried, which
//! end the run) is checked against a minimal HTTP responder that answers with chosen statuses.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_mentions, fixture, python_client, run_err, run_ok, smollm2_gguf, wgspin};

/// Prompts of different kinds and lengths (one answer ends on eos, one runs into the limit).
const PROMPTS: &[(&str, &str)] = &[
    ("capital", "What is the capital of France?"),
    ("colors", "Name three colors."),
    ("haiku", "Write a haiku about the sea."),
];
const MAX_NEW: &str = "16";

fn write_prompts(path: &Path, prompts: &[(&str, &str)]) {
    let rows: String = prompts
        .iter()
        .map(|(id, p)| {
            serde_json::json!({"id": id, "prompt": p, "response": "A reference answer."})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, rows).unwrap();
}

/// `generate` arguments shared by the local and the server runs: greedy, same data and limit.
fn generate_args(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "generate",
        "--model",
        &model.to_string_lossy(),
        "--data",
        &data.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--temperature",
        "0",
        "--max-new-tokens",
        MAX_NEW,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// (id, generated text, finish_reason, generated_tokens) of each output row.
fn rows(path: &Path) -> Vec<(String, String, String, u64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                r["id"].as_str().unwrap().to_string(),
                r["generated"][1]["content"].as_str().unwrap().to_string(),
                r["finish_reason"].as_str().unwrap().to_string(),
                r["generated_tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// llama-cpp-python's server, or a skip (a failure in CI) without it.
fn require_llama_cpp_server() -> bool {
    python_client(
        &["llama_cpp.server"],
        "pip install 'llama-cpp-python[server]'",
    )
}

/// llama-cpp-python's server on loopback, killed when dropped.
struct LlamaServer {
    child: Child,
}

impl LlamaServer {
    fn start(gguf: &Path, port: u16, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // Greedy decoding is deterministic; one thread keeps the CI machine's other core free;
            // an f32 KV cache (llama.cpp's default is f16) keeps its numbers as close to wgspin's
            // as f32 weights allow.
            .args(["--n_ctx", "1024", "--n_threads", "1", "--verbose", "false"])
            .args(["--type_k", "0", "--type_v", "0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child }
    }

    /// Waits until `/v1/models` answers.
    fn wait_ready(&mut self, port: u16, log: &Path) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the llama.cpp server exited ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if ureq::get(format!("http://127.0.0.1:{port}/v1/models"))
                .call()
                .is_ok()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the llama.cpp server did not answer within 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SmolLM2 from the GGUF, converted into `dir` as a Hugging Face folder in f32: the model both
/// sides of a comparison use.
fn smollm2_f32_folder(gguf: &Path, dir: &Path) -> PathBuf {
    let hf = dir.join("smollm2-hf");
    let g = wgspin::gguf::GgufModel::load(gguf).unwrap();
    g.write_hf_folder(&hf, wgspin::hf::weights::StoredDtype::F32)
        .unwrap();
    hf
}

/// `spin --device cpu --model <model> --data <data> --out <out>` followed by `flags`.
fn spin_args(model: &Path, data: &Path, out: &Path, flags: &[&str]) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> = ["spin", "--device", "cpu"].map(String::from).to_vec();
    a.extend(["--model".into(), path(model), "--data".into(), path(data)]);
    a.extend(["--out".into(), path(out)]);
    a.extend(flags.iter().map(|f| f.to_string()));
    a
}

#[test]
fn llama_cpp_server_generation_equals_local_greedy_resumes_and_survives_a_restart() {
    let Some(gguf) = smollm2_gguf() else { return };
    if !require_llama_cpp_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // One model for both sides: the GGUF converted to a Hugging Face folder (f32), exported by
    // wgspin as an f32 GGUF for llama.cpp. (Served from the Q4_1 file directly, llama.cpp's
    // quantized matmuls would pick other tokens where the top two are close.)
    let hf = smollm2_f32_folder(&gguf, tmp.path());
    let served = tmp.path().join("smollm2-f32.gguf");
    wgspin::gguf::writer::export_hf_folder(&hf, &served, wgspin::gguf::writer::ExportDtype::F32)
        .unwrap();
    let data = tmp.path().join("prompts.jsonl");
    write_prompts(&data, PROMPTS);

    let local = tmp.path().join("local.jsonl");
    run_ok(generate_args(&hf, &data, &local, &["--device", "cpu"]));
    let want = rows(&local);
    assert_eq!(want.len(), PROMPTS.len());

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = tmp.path().join("server.log");
    let mut server = LlamaServer::start(&served, port, &log);
    server.wait_ready(port, &log);

    for api in ["completions", "chat"] {
        let out = tmp.path().join(format!("server-{api}.jsonl"));
        let args = generate_args(&hf, &data, &out, &["--server", &url, "--server-api", api]);
        let err = String::from_utf8_lossy(&run_ok(&args).stderr).into_owned();
        assert_mentions(&err, &[&url]);
        assert_eq!(
            rows(&out),
            want,
            "{api}: server rows differ from local greedy"
        );
        // The run record names the server: a rerun with another server or API is refused.
        let record = std::fs::read_to_string(wgspin::generate::job::run_record_path(&out)).unwrap();
        assert_mentions(&record, &[&format!("\"api\": \"{api}\""), &url]);
    }

    // The run record names the API: continuing the file through the other one is refused.
    let other = generate_args(
        &hf,
        &data,
        &tmp.path().join("server-completions.jsonl"),
        &["--server", &url, "--server-api", "chat"],
    );
    assert_mentions(&run_err(&other), &["api", "--overwrite"]);

    // A partial output (as a killed run leaves it) resumes and ends byte-identical.
    let full = tmp.path().join("server-completions.jsonl");
    let complete = std::fs::read_to_string(&full).unwrap();
    let first_line = complete.lines().next().unwrap();
    std::fs::write(&full, format!("{first_line}\n")).unwrap();
    let err = run_ok(generate_args(&hf, &data, &full, &["--server", &url]));
    let err = String::from_utf8_lossy(&err.stderr);
    assert_mentions(&err, &["kept 1 rows"]);
    assert_eq!(std::fs::read_to_string(&full).unwrap(), complete);

    // The server goes away before the run starts and comes back after a few seconds: the run
    // retries its connections (asking /v1/models for the model name, then the prompts) and
    // finishes with the same rows.
    drop(server);
    let restarted = tmp.path().join("restarted.jsonl");
    let args = generate_args(&hf, &data, &restarted, &["--server", &url]);
    let child = wgspin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut server = LlamaServer::start(&served, port, &log);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run across a restart failed: {stderr}"
    );
    assert_eq!(rows(&restarted), want);
    server.wait_ready(port, &log);

    // spin's --server-cmd refuses to start beside a server already answering at --server: that
    // one would generate instead of the iteration's model.
    let cmd = format!("python3 -m llama_cpp.server --model {{gguf}} --port {port}");
    let spin = spin_args(
        &hf,
        &data,
        &tmp.path().join("spin"),
        &[
            "--iterations",
            "1",
            "--eval-size",
            "1",
            "--server",
            &url,
            "--server-cmd",
            &cmd,
        ],
    );
    assert_mentions(&run_err(spin), &["already answers", &url, "--server-cmd"]);
}

/// `spin --server --server-cmd`: each iteration's θt (θ1 a LoRA adapter, merged for serving) is
/// exported and served by llama.cpp, and the whole run (pairs of both iterations, the final
/// adapter) equals the same spin run generating locally, greedily.
#[test]
fn spin_through_a_server_started_per_iteration_equals_local_spin() {
    let Some(gguf) = smollm2_gguf() else { return };
    if !require_llama_cpp_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = smollm2_f32_folder(&gguf, tmp.path());
    let data = tmp.path().join("sft.jsonl");
    let rows: String = [
        ("What is the capital of France?", "Paris."),
        ("Name a primary colour.", "Red."),
        ("What is 2 + 2?", "4."),
        ("Say hello.", "Hello!"),
        ("What colour is grass?", "Green."),
        ("Which animal says moo?", "A cow."),
    ]
    .iter()
    .map(|(p, r)| serde_json::json!({"prompt": p, "response": r}).to_string() + "\n")
    .collect();
    std::fs::write(&data, rows).unwrap();
    let spin = |out: &Path, extra: &[&str]| {
        let mut flags = vec![
            "--iterations",
            "2",
            "--eval-size",
            "2",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--lora-rank",
            "2",
            "--stop-accuracy",
            "0",
        ];
        flags.extend_from_slice(extra);
        spin_args(&hf, &data, out, &flags)
    };
    let local = tmp.path().join("local");
    run_ok(spin(&local, &[]));

    let port = free_port();
    let served = tmp.path().join("served");
    let cmd = format!(
        "python3 -m llama_cpp.server --model {{gguf}} --host 127.0.0.1 --port {port} \
         --n_ctx 1024 --n_threads 1 --type_k 0 --type_v 0"
    );
    let url = format!("http://127.0.0.1:{port}");
    run_ok(spin(
        &served,
        &[
            "--server",
            &url,
            "--server-cmd",
            &cmd,
            "--server-gguf-dtype",
            "f32",
        ],
    ));
    let mut identical = true;
    for t in 0..2 {
        let theta = if t == 0 {
            hf.clone()
        } else {
            local.join(format!("iter-{}/checkpoint", t - 1))
        };
        for f in ["generated.jsonl", "eval_generated.jsonl"] {
            let (a, b) = (
                local.join(format!("iter-{t}/{f}")),
                served.join(format!("iter-{t}/{f}")),
            );
            identical &= same_or_near_ties(&theta, &b, &a, &format!("iteration {t} {f}"));
        }
        let iter = served.join(format!("iter-{t}"));
        assert!(iter.join("server.log").is_file());
        assert!(
            !iter.join("served-model.gguf").exists(),
            "the exported θ{t} is removed"
        );
        assert!(
            !iter.join("served-model").exists(),
            "the merged θ{t} is removed"
        );
    }
    // Same pairs, same training: the same final adapter.
    let weights =
        |d: &Path| std::fs::read(d.join("iter-1/checkpoint/adapter_model.safetensors")).unwrap();
    if identical {
        assert_eq!(weights(&served), weights(&local));
    } else {
        eprintln!("a near-tie changed a pair, so the final adapters are not compared");
    }

    // One server without a command serves one model: a second iteration is refused at once.
    let refused = spin(
        &tmp.path().join("refused"),
        &["--server", "http://127.0.0.1:9"],
    );
    assert_mentions(&run_err(&refused), &["--server-cmd", "--iterations 1"]);
}

/// Whether the rows of `got` (server) equal those of `want` (local) — the same ids, texts and
/// finish reasons — asserting that where a text differs, it is at a near-tie of θ: the two
/// diverging tokens' log-probs under wgspin's θ are within 1e-4 (with f32 weights and KV cache,
/// llama.cpp's log-probs of SmolLM2 are within 2e-5 of wgspin's, so only such ties can flip a
/// greedy choice).
fn same_or_near_ties(theta: &Path, got: &Path, want: &Path, label: &str) -> bool {
    let parse = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (got, want) = (parse(got), parse(want));
    let ids = |rows: &[serde_json::Value]| rows.iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want), "{label}: ids");
    let mut identical = true;
    let mut bundle = None;
    for (g, w) in got.iter().zip(&want) {
        let text =
            |r: &serde_json::Value| r["generated"][1]["content"].as_str().unwrap().to_string();
        if text(g) == text(w) && g["finish_reason"] == w["finish_reason"] {
            continue;
        }
        identical = false;
        let b = bundle.get_or_insert_with(|| {
            wgspin::ModelBundle::load(theta, &wgspin::device::cpu_device().device).unwrap()
        });
        let tok = &b.tokenizer;
        let prompt = tok
            .prompt_ids(g["real"][0]["content"].as_str().unwrap())
            .unwrap();
        let eos = tok.eos_token_id;
        let tokens = |r: &serde_json::Value| {
            let mut t = tok.encode(&text(r), false).unwrap();
            if r["finish_reason"] == "eos" {
                t.push(eos);
            }
            t
        };
        let (a, c) = (tokens(g), tokens(w));
        let k = a.iter().zip(&c).take_while(|(x, y)| x == y).count();
        let (Some(&ta), Some(&tc)) = (a.get(k), c.get(k)) else {
            panic!("{label}: {} vs {}: one stops inside the other", g, w)
        };
        let mut seq = prompt.clone();
        seq.extend_from_slice(&c[..k]);
        let input = wgspin::model::StepInput::right_padded(&[seq.clone()], 0);
        let logits = common::floats(b.model.forward(&input, None));
        let v = logits.len() / seq.len();
        let row = &logits[(seq.len() - 1) * v..];
        let gap = (row[ta as usize] - row[tc as usize]).abs();
        eprintln!(
            "{label}: {} diverges at token {k}, logit gap {gap:.2e}",
            g["id"]
        );
        assert!(
            gap < 1e-4,
            "{label}: {g} vs {w}: not a near-tie (gap {gap})"
        );
    }
    identical
}

/// A loopback HTTP responder that answers each request with the next of `statuses` (200 gets a
/// completion body) and records the request lines.
fn responder(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = vec![];
        for status in statuses {
            let (stream, _) = listener.accept().unwrap();
            seen.push(answer(stream, status));
        }
        seen
    });
    (url, handle)
}

fn answer(mut stream: TcpStream, status: u16) -> String {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let reply = match status {
        200 => {
            serde_json::json!({"choices": [{"text": "Blue.", "finish_reason": "stop"}]}).to_string()
        }
        _ => format!("{{\"error\": \"status {status} chosen by the test\"}}"),
    };
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )
    .unwrap();
    format!("{} {}", request_line.trim(), String::from_utf8_lossy(&body))
}

fn tiny_model() -> PathBuf {
    fixture("tiny-qwen2-f32")
}

#[test]
fn server_errors_5xx_are_retried_and_4xx_end_the_run_with_the_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("one.jsonl");
    write_prompts(&data, &[("q", "Which color is the sky?")]);

    // 503 and 429 are retried (0.5 s, then 1 s of backoff), then the answer is written.
    let (url, seen) = responder(vec![503, 429, 200]);
    let out = tmp.path().join("ok.jsonl");
    let args = generate_args(
        &tiny_model(),
        &data,
        &out,
        &["--server", &url, "--server-model", "m"],
    );
    run_ok(&args);
    let seen = seen.join().unwrap();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert!(request.starts_with("POST /v1/completions "), "{request}");
        // Every sampling setting is sent, so the server's own defaults never apply (top-k off is
        // 0, which llama-cpp-python takes and -1 it refuses).
        for key in [
            "\"temperature\":0.0",
            "\"top_k\":0",
            "\"top_p\":",
            "\"min_p\":",
            "\"seed\":",
        ] {
            assert!(request.contains(key), "{key} not sent: {request}");
        }
    }
    // The prompt sent is what the model sees locally once a server tokenizes it the usual way
    // (adding the BOS this tokenizer adds by itself, so the template's own is not sent twice).
    let body: serde_json::Value =
        serde_json::from_str(&seen[0][seen[0].find('{').unwrap()..]).unwrap();
    let tok = wgspin::hf::tokenizer::ChatTokenizer::from_dir(&tiny_model(), &[]).unwrap();
    assert_eq!(
        tok.encode(body["prompt"].as_str().unwrap(), true).unwrap(),
        tok.prompt_ids("Which color is the sky?").unwrap()
    );
    let (_, text, finish, _) = rows(&out).remove(0);
    assert_eq!((text.as_str(), finish.as_str()), ("Blue.", "eos"));

    // A 400 ends the run at once with the server's words; nothing is written for the prompt.
    let (url, seen) = responder(vec![400]);
    let out = tmp.path().join("bad.jsonl");
    let args = generate_args(
        &tiny_model(),
        &data,
        &out,
        &["--server", &url, "--server-model", "m"],
    );
    let err = run_err(&args);
    assert_mentions(&err, &[&url, "HTTP 400", "status 400 chosen by the test"]);
    assert_eq!(seen.join().unwrap().len(), 1);
    assert!(std::fs::read_to_string(&out).unwrap_or_default().is_empty());

    // Retries run out: the message says how many and which flag raises them.
    let (url, seen) = responder(vec![500, 500]);
    let args = generate_args(
        &tiny_model(),
        &data,
        &out,
        &[
            "--server",
            &url,
            "--server-model",
            "m",
            "--server-retries",
            "1",
        ],
    );
    let err = run_err(&args);
    assert_mentions(
        &err,
        &["HTTP 500", "gave up after 1 retries", "--server-retries"],
    );
    assert_eq!(seen.join().unwrap().len(), 2);
}

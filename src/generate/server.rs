//! The opponent's generation through an OpenAI-compatible server (vLLM, llama.cpp's
//! `llama-server`, llama-cpp-python, TGI, SGLang): for SFT sets larger than one machine samples in
//! an evening, as SPIN's authors moved generation to vLLM.
//!
//! Prompts are rendered and truncated exactly as local generation does them (the `--model`'s
//! tokenizer and chat template), then sent as text to `/v1/completions`; or, with the chat API,
//! the user turn goes to `/v1/chat/completions` and the server applies its own template. Every
//! sampling setting is sent explicitly, because servers' defaults differ from wgspin's (llama-cpp-
//! python samples with top-k 40, min-p 0.05 and a repeat penalty unless told otherwise). Each
//! request carries its own seed derived from (`--sampling-seed`, request index), so a resumed run
//! asks for the same responses; whether the server honours seeds is up to the server.
//!
//! Up to `concurrency` requests are in flight (the server batches them). Transport failures,
//! timeouts, HTTP 408/429 and 5xx are retried with exponential backoff, so a server that restarts
//! (a new checkpoint loaded) costs a wait, not the run; any other status is an error quoting the
//! server's reply.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{FinishReason, GenOptions};
use crate::error::{Error, Result};

/// Which endpoint receives the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerApi {
    /// `/v1/completions` with the prompt rendered by wgspin's chat template: the same prompt text
    /// local generation uses.
    Completions,
    /// `/v1/chat/completions` with the user turn; the server renders it with its own template.
    Chat,
}

/// How to reach the server (the `--server*` flags).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Base URL, with or without a trailing `/v1` (`http://127.0.0.1:8080`).
    pub url: String,
    /// The served model's name; `None` asks `/v1/models` and takes the first.
    pub model: Option<String>,
    pub api: ServerApi,
    /// Requests in flight at once (default 8).
    pub concurrency: usize,
    /// Retries of a request after a retryable failure before giving up (default 8: 91.5 s of
    /// backoff, enough for a server to restart).
    pub retries: u32,
    /// Longest wait for one response (default 600 s).
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
}

impl ServerOptions {
    pub const DEFAULT_CONCURRENCY: usize = 8;
    pub const DEFAULT_RETRIES: u32 = 8;
    pub const DEFAULT_TIMEOUT_S: u64 = 600;

    /// The URL without a trailing `/` or `/v1`, after checking the settings (before anything
    /// is started or exported for the server).
    pub fn base_url(&self) -> Result<String> {
        let url = self.url.trim().trim_end_matches('/');
        let base = url.strip_suffix("/v1").unwrap_or(url).to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "--server {:?}: expected an http:// or https:// URL such as http://127.0.0.1:8080",
                redact_credentials(&self.url)
            )));
        }
        if self.concurrency == 0 {
            return Err(Error::Invalid("--concurrency must be at least 1".into()));
        }
        Ok(base)
    }
}

/// `scheme://user:password@host/...` → `scheme://***@host/...`: what may be written to run
/// records, cards and messages. The user part ends at the last `@` before the path.
pub fn redact_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}{tail}", &authority[at + 1..]),
        None => url.to_string(),
    }
}

/// The environment variable the CLI reads an API key from (never a flag: command lines are
/// visible to other users and kept in shell histories).
pub const API_KEY_ENV: &str = "WGSPIN_SERVER_API_KEY";

/// First backoff after a retryable failure; each retry doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Server replies are short JSON; a reply larger than this is not one.
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// One prompt to send: the request index (its seed and place in the output) and its contents.
#[derive(Debug, Clone)]
pub struct ServerPrompt {
    pub index: u32,
    /// The rendered prompt (completions API).
    pub text: String,
    /// The user turn (chat API).
    pub user: String,
}

/// A server's response to one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub index: u32,
    pub text: String,
    pub finish: FinishReason,
}

/// A connection to one server and model.
pub struct ServerClient {
    agent: ureq::Agent,
    base: String,
    model: Option<String>,
    opts: ServerOptions,
}

/// What went wrong with one HTTP exchange, and whether trying again may help.
struct Failure {
    message: String,
    retryable: bool,
}

impl ServerClient {
    /// Connects to `opts.url` and settles the model name (asking `/v1/models` when none is given;
    /// retried like any request, so a server still loading is waited for).
    pub fn connect(opts: ServerOptions) -> Result<Self> {
        let base = opts.base_url()?;
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            .build();
        let mut client = Self {
            agent: config.into(),
            base,
            model: opts.model.clone(),
            opts,
        };
        if client.model.is_none() {
            let models =
                client.with_retries(&AtomicBool::new(false), || client.get("/v1/models"))?;
            client.model = models
                .get("data")
                .and_then(|d| d.get(0))
                .and_then(|m| m.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        Ok(client)
    }

    /// The model name sent with every request (`None` when the server named none).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Which endpoint receives the prompts.
    pub fn api(&self) -> ServerApi {
        self.opts.api
    }

    /// What a run record keeps of the server: where, which model, which API.
    pub fn identity(&self) -> Value {
        json!({ "url": redact_credentials(&self.base), "model": self.model, "api": self.opts.api })
    }

    /// Sends `prompts` with up to `concurrency` in flight and calls `on_reply` (on this thread) as
    /// each completes, in completion order. Stops at the first error, after the requests already
    /// in flight return; replies handed over before it are kept by the caller.
    pub fn generate(
        &self,
        prompts: &[ServerPrompt],
        opts: &GenOptions,
        mut on_reply: impl FnMut(Reply) -> Result<()>,
    ) -> Result<()> {
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<Reply>>();
        std::thread::scope(|scope| {
            for _ in 0..self.opts.concurrency.min(prompts.len()) {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = prompts.get(i) else { break };
                        if tx.send(self.complete(p, opts, stop)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut first_error = None;
            for reply in rx {
                // After the first error nothing more is handed over: a row written after a failed
                // write would follow a torn line. The replies in flight are drained unread.
                if first_error.is_some() {
                    continue;
                }
                if let Err(e) = reply.and_then(&mut on_reply) {
                    stop.store(true, Ordering::Relaxed);
                    first_error = Some(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// One prompt, retried as the module docs say.
    fn complete(&self, p: &ServerPrompt, opts: &GenOptions, stop: &AtomicBool) -> Result<Reply> {
        let body = self.request_body(p, opts);
        let path = match self.opts.api {
            ServerApi::Completions => "/v1/completions",
            ServerApi::Chat => "/v1/chat/completions",
        };
        let reply = self.with_retries(stop, || self.post(path, &body))?;
        self.parse_reply(p.index, &reply)
    }

    fn request_body(&self, p: &ServerPrompt, opts: &GenOptions) -> Value {
        let s = &opts.sampling;
        let mut body = json!({
            "max_tokens": opts.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            // 0 is "off" to llama.cpp (any k ≤ 0) and to vLLM from 0.8; llama-cpp-python refuses
            // -1, the older vLLM spelling (tests/server.rs found it).
            "top_k": s.top_k,
            "min_p": s.min_p,
            "seed": request_seed(s.seed, p.index),
            // llama.cpp's name; other servers ignore it (vLLM's default is already 1).
            "repeat_penalty": 1.0,
            "n": 1,
            "stream": false,
        });
        if let Some(m) = &self.model {
            body["model"] = json!(m);
        }
        match self.opts.api {
            ServerApi::Completions => body["prompt"] = json!(p.text),
            ServerApi::Chat => body["messages"] = json!([{"role": "user", "content": p.user}]),
        }
        body
    }

    fn parse_reply(&self, index: u32, reply: &Value) -> Result<Reply> {
        let choice = reply.get("choices").and_then(|c| c.get(0));
        let text = match self.opts.api {
            ServerApi::Completions => choice.and_then(|c| c.get("text")),
            ServerApi::Chat => choice
                .and_then(|c| c.get("message"))
                .and_then(|m| m.get("content")),
        }
        .and_then(Value::as_str);
        let Some(text) = text else {
            return Err(self.error(format!(
                "its reply has no choices[0] text: {}",
                excerpt(&reply.to_string())
            )));
        };
        // "stop" (an end-of-sequence token or a stop string) and "length" are OpenAI's; anything
        // else (vLLM's "abort", a content filter) is not a finished response.
        let finish = match choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
        {
            Some("stop") | Some("eos") => FinishReason::Eos,
            Some("length") => FinishReason::Length,
            other => {
                return Err(self.error(format!(
                    "it ended request {index} with finish_reason {other:?}, not \"stop\" or \
                     \"length\""
                )));
            }
        };
        Ok(Reply {
            index,
            text: text.to_string(),
            finish,
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of retries, or `stop` is set
    /// (another request failed: the run ends, so waiting on this one is pointless).
    fn with_retries(
        &self,
        stop: &AtomicBool,
        mut attempt: impl FnMut() -> std::result::Result<Value, Failure>,
    ) -> Result<Value> {
        let mut wait = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.retryable && tries < self.opts.retries => {
                    tries += 1;
                    // The backoff in short slices, so a stopping run is not held up by it.
                    let until = std::time::Instant::now() + wait;
                    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Err(
                            self.error(format!("{} (not retried: the run is stopping)", f.message))
                        );
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Err(f) => {
                    let after = if f.retryable {
                        format!(" (gave up after {tries} retries; raise --server-retries)")
                    } else {
                        String::new()
                    };
                    return Err(self.error(format!("{}{after}", f.message)));
                }
            }
        }
    }

    fn get(&self, path: &str) -> std::result::Result<Value, Failure> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(key) = &self.opts.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        read_reply(path, req.call())
    }

    fn post(&self, path: &str, body: &Value) -> std::result::Result<Value, Failure> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(key) = &self.opts.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        read_reply(path, req.send(body.to_string()))
    }

    fn error(&self, message: String) -> Error {
        Error::Server {
            url: redact_credentials(&self.base),
            message,
        }
    }
}

/// The JSON of a reply, or why there is none.
fn read_reply(
    path: &str,
    sent: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> std::result::Result<Value, Failure> {
    let mut resp = sent.map_err(|e| Failure {
        message: format!("{path}: {e}"),
        // Refused or reset connections, timeouts, DNS: the server may be (re)starting.
        retryable: true,
    })?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_REPLY_BYTES)
        .read_to_string()
        .map_err(|e| Failure {
            message: format!("{path}: reading the reply: {e}"),
            // A reply over the size limit will be as large the next time.
            retryable: !matches!(e, ureq::Error::BodyExceedsLimit(_)),
        })?;
    if !(200..300).contains(&status) {
        let hint = match (status, path) {
            (404, "/v1/models") => " (the server lists no models there: pass --server-model)",
            (401 | 403, _) => " (set the API key in WGSPIN_SERVER_API_KEY)",
            _ => "",
        };
        return Err(Failure {
            message: format!("{path}: HTTP {status}{hint}: {}", excerpt(&text)),
            retryable: status == 408 || status == 429 || status >= 500,
        });
    }
    serde_json::from_str(&text).map_err(|e| Failure {
        message: format!("{path}: the reply is not JSON ({e}): {}", excerpt(&text)),
        retryable: false,
    })
}

/// The start of a reply, for error messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// The seed sent with request `index`: a mix of the run's seed and the index (SplitMix64's
/// finaliser), kept below 2³¹ because llama.cpp takes 32-bit seeds and reads 0xFFFFFFFF as "random".
pub fn request_seed(seed: u64, index: u32) -> u64 {
    let mut z = seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 0x7FFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_seeds_differ_by_index_and_seed_and_fit_31_bits() {
        let a: Vec<u64> = (0..1000).map(|i| request_seed(7, i)).collect();
        let mut uniq = a.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), a.len());
        assert!(a.iter().all(|&s| s < 1 << 31));
        assert_ne!(request_seed(7, 3), request_seed(8, 3));
    }

    #[test]
    fn credentials_are_redacted_up_to_the_last_at_of_the_authority() {
        assert_eq!(
            redact_credentials("https://me:p@ss@host:8000/v1?x=a@b"),
            "https://***@host:8000/v1?x=a@b"
        );
        assert_eq!(
            redact_credentials("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(redact_credentials("not a url"), "not a url");
    }

    #[test]
    fn excerpt_cuts_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let e = excerpt(&long);
        assert!(e.ends_with("..."));
        assert_eq!(e.chars().count(), 303);
    }
}

//! Serving θ_t for `spin --server ... --server-cmd ...`: each iteration's opponent is a different
//! model, so the server must be (re)started on it. wgspin writes θ_t as a GGUF file (adapters
//! merged first) and starts the user's command with `{gguf}` (and `{model}`, the Hugging Face
//! folder, for servers that read those) filled in, waits until `/v1/models` answers, generates,
//! and stops the server when the stage ends.
//!
//! The command is split into a program and arguments here (whitespace, with '...' and "..."
//! quoting) and started directly, never through a shell, so it behaves the same on Windows,
//! macOS and Linux.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gguf::writer::{ExportDtype, export_hf_folder};
use crate::hf::bundle::ModelBundle;
use crate::hf::weights::StoredDtype;

/// How `spin` has a server generate for each iteration.
#[derive(Debug, Clone)]
pub struct SpinServer {
    pub options: super::server::ServerOptions,
    /// The command that serves `{gguf}` (or `{model}`); without one, the server must already serve
    /// θ_0 and only iteration 0 can run on it.
    pub command: Option<String>,
    /// Matrix type of the GGUF file written for the server.
    pub gguf_dtype: ExportDtype,
}

/// A server process started for one stage; stopped when dropped, and the files written for it
/// (a model's size each iteration) removed then.
pub struct ServerProcess {
    child: Child,
    log: PathBuf,
    written: Vec<PathBuf>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in &self.written {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

impl ServerProcess {
    /// Writes `theta` (a model folder, adapter folder or GGUF file) as a GGUF file under `dir`,
    /// starts `command` on it with output to `dir/server.log`, and waits (up to `timeout`) until
    /// it answers at `url`.
    pub fn start(
        command: &str,
        theta: &Path,
        dir: &Path,
        dtype: ExportDtype,
        url: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let (gguf, folder, written) = serve_files(theta, dir, dtype)?;
        let words = split_command(command)?;
        let fill = |w: &str| {
            w.replace("{gguf}", &gguf.to_string_lossy())
                .replace("{model}", &folder.to_string_lossy())
        };
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err_file = log_file.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = Command::new(fill(&words[0]))
            .args(words[1..].iter().map(|w| fill(w)))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| {
                Error::Invalid(format!("--server-cmd: cannot start {:?}: {e}", words[0]))
            })?;
        let mut p = Self {
            child,
            log,
            written,
        };
        p.wait_ready(url, timeout)?;
        Ok(p)
    }

    fn wait_ready(&mut self, url: &str, timeout: Duration) -> Result<()> {
        let base = url.trim_end_matches('/').trim_end_matches("/v1");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Invalid(format!(
                    "--server-cmd exited ({status}) before serving; its output is in {}",
                    self.log.display()
                )));
            }
            let probe = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build();
            let agent: ureq::Agent = probe.into();
            if agent
                .get(format!("{base}/v1/models"))
                .call()
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::Invalid(format!(
                    "--server-cmd did not answer at {base}/v1/models within {} s (see {}); check \
                     that it listens where --server points",
                    timeout.as_secs(),
                    self.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The GGUF file and Hugging Face folder a server is started on: a GGUF θ as it is; a folder
/// exported (an adapter merged into its base first) next to the iteration's outputs.
fn serve_files(
    theta: &Path,
    dir: &Path,
    dtype: ExportDtype,
) -> Result<(PathBuf, PathBuf, Vec<PathBuf>)> {
    if theta.is_file() && crate::gguf::reader::is_gguf(theta) {
        return Ok((theta.to_path_buf(), theta.to_path_buf(), vec![]));
    }
    let mut folder = theta.to_path_buf();
    let mut written = vec![];
    if crate::hf::adapter::is_adapter_dir(theta) {
        folder = dir.join("served-model");
        let b = ModelBundle::load(theta, &crate::device::cpu_device().device)?;
        crate::hf::checkpoint::save(&b.model, &b.dir, &folder, StoredDtype::F32, None, &[])?;
        written.push(folder.clone());
    }
    let gguf = dir.join("served-model.gguf");
    export_hf_folder(&folder, &gguf, dtype)?;
    written.push(gguf.clone());
    Ok((gguf, folder, written))
}

/// Splits a command line into words: whitespace separates, '...' and "..." group (no escapes
/// inside single quotes; `\"` and `\\` inside double quotes).
pub fn split_command(line: &str) -> Result<Vec<String>> {
    let mut words = vec![];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' | '"' => {
                in_word = true;
                let quote = c;
                loop {
                    match chars.next() {
                        Some(q) if q == quote => break,
                        Some('\\') if quote == '"' => match chars.next() {
                            Some(e @ ('"' | '\\')) => word.push(e),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => break,
                        },
                        Some(ch) => word.push(ch),
                        None => {
                            return Err(Error::Invalid(format!(
                                "--server-cmd {line:?}: a {quote} quote is not closed"
                            )));
                        }
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(Error::Invalid("--server-cmd is empty".into()));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell_would_for_plain_quoting() {
        let w =
            split_command(r#"llama-server -m {gguf} --alias 'my model' --chat-template "a \"b\"""#)
                .unwrap();
        assert_eq!(
            w,
            [
                "llama-server",
                "-m",
                "{gguf}",
                "--alias",
                "my model",
                "--chat-template",
                "a \"b\""
            ]
        );
        assert!(split_command("python3 'oops").is_err());
        assert!(split_command("   ").is_err());
        assert_eq!(split_command("a '' b").unwrap(), ["a", "", "b"]);
    }
}

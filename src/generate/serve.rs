//! Serving θ_t for `spin --server ... --server-cmd ...`: each iteration's opponent is a different
//! model, so the server must be (re)started on it. wgspin writes θ_t as a GGUF file (adapters
//! merged first) and starts the user's command with `{gguf}` (and `{model}`, the Hugging Face
//! folder, for servers that read those) filled in, waits until `/v1/models` answers, generates,
//! and stops the server when the stage ends.
//!
//! The command is split into a program and arguments here (whitespace, with '...' and "..."
//! quoting) and started directly, never through a shell, so it behaves the same on Windows,
//! macOS and Linux. On Unix it runs in its own process group, and stopping it signals the group
//! (SIGTERM, then SIGKILL after 10 s), so workers it starts go too; elsewhere the process started
//! is killed, so it should be the server itself rather than a wrapper. `{api_key}` in the command
//! becomes WGSPIN_SERVER_API_KEY (spin_config.json records the template, not the key). A server
//! already answering at the URL before the start is refused: its answers would come from another
//! model.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gguf::writer::{ExportDtype, export_hf_folder};
use crate::hf::weights::StoredDtype;
use crate::load::bundle::ModelBundle;

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
        stop_process(&mut self.child);
        remove_all(&self.written);
    }
}

/// Asks the server's process group to end (SIGTERM), gives it [`STOP_GRACE`] to free its port
/// and memory, then kills the group. Elsewhere than Unix the process itself is killed.
#[cfg(unix)]
fn stop_process(child: &mut Child) {
    let group = -(child.id() as i32);
    // SAFETY: kill(2) with a negative pid signals the group the child leads (process_group(0)
    // at spawn); it touches no memory of this process.
    unsafe { libc::kill(group, libc::SIGTERM) };
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above; the group may be gone already (ESRCH), which is what is wanted.
    unsafe { libc::kill(group, libc::SIGKILL) };
    let _ = child.wait();
}

#[cfg(not(unix))]
fn stop_process(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How long a server gets to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl ServerProcess {
    /// Writes `theta` (a model folder, adapter folder or GGUF file) as the command needs it under
    /// `dir`, starts `command` on it with output to `dir/server.log`, and waits (up to the
    /// server timeout) until it answers at the server URL.
    pub fn start(
        command: &str,
        theta: &Path,
        dir: &Path,
        dtype: ExportDtype,
        server: &super::server::ServerOptions,
    ) -> Result<Self> {
        let words = split_command(command)?;
        let base = server.base_url()?;
        if answers(&base, server.api_key.as_deref()) {
            return Err(Error::Invalid(format!(
                "something already answers at {base} before --server-cmd started: it would \
                 generate instead of this iteration's model; stop it, or point --server and \
                 --server-cmd at a free port"
            )));
        }
        let needs = |key: &str| words.iter().any(|w| w.contains(key));
        let (gguf, folder, written) =
            serve_files(theta, dir, dtype, needs("{gguf}"), needs("{model}"))?;
        let key = server.api_key.clone().unwrap_or_default();
        let fill = |w: &str| {
            w.replace("{gguf}", &gguf.to_string_lossy())
                .replace("{model}", &folder.to_string_lossy())
                .replace("{api_key}", &key)
        };
        let log = dir.join("server.log");
        let spawned = std::fs::File::create(&log)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|e| Error::io(&log, e))
            .and_then(|(out, err)| {
                let mut cmd = Command::new(fill(&words[0]));
                cmd.args(words[1..].iter().map(|w| fill(w)))
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err);
                // Its own process group, so stopping it reaches the workers it starts (vLLM).
                #[cfg(unix)]
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                cmd.spawn().map_err(|e| {
                    Error::Invalid(format!("--server-cmd: cannot start {:?}: {e}", words[0]))
                })
            });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                remove_all(&written);
                return Err(e);
            }
        };
        let mut p = Self {
            child,
            log,
            written,
        };
        p.wait_ready(&base, server.api_key.as_deref(), server.timeout)?;
        Ok(p)
    }

    fn wait_ready(&mut self, base: &str, key: Option<&str>, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.exited(status));
            }
            if answers(base, key) {
                // The answer must come from the process started, not one that held the port.
                return match self.child.try_wait() {
                    Ok(Some(status)) => Err(self.exited(status)),
                    _ => Ok(()),
                };
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

    fn exited(&self, status: std::process::ExitStatus) -> Error {
        Error::Invalid(format!(
            "--server-cmd exited ({status}) before serving; its output is in {}",
            self.log.display()
        ))
    }
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    }
}

/// Whether a server answers `GET base/v1/models` with a success status within 5 s.
fn answers(base: &str, key: Option<&str>) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut req = agent.get(format!("{base}/v1/models"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    req.call().is_ok_and(|r| r.status().is_success())
}

/// The GGUF file and Hugging Face folder a server is started on: a GGUF θ as it is; a folder
/// exported (an adapter merged into its base first) next to the iteration's outputs. Only what
/// the command names (`{gguf}`, `{model}`) is written; the list says what was.
fn serve_files(
    theta: &Path,
    dir: &Path,
    dtype: ExportDtype,
    gguf_needed: bool,
    folder_needed: bool,
) -> Result<(PathBuf, PathBuf, Vec<PathBuf>)> {
    if theta.is_file() && crate::gguf::reader::is_gguf(theta) {
        return Ok((theta.to_path_buf(), theta.to_path_buf(), vec![]));
    }
    let mut folder = theta.to_path_buf();
    let mut written = vec![];
    if crate::load::adapter::is_adapter_dir(theta) && (gguf_needed || folder_needed) {
        folder = dir.join("served-model");
        let b = ModelBundle::load(theta, &crate::device::cpu_device().device)?;
        crate::load::checkpoint::save(&b.model, &b.dir, &folder, StoredDtype::F32, None, &[])?;
        written.push(folder.clone());
    }
    let gguf = dir.join("served-model.gguf");
    if gguf_needed {
        if let Err(e) = export_hf_folder(&folder, &gguf, dtype) {
            remove_all(&written);
            return Err(e);
        }
        written.push(gguf.clone());
    }
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

//! The loopback Hugging Face Hub (`tests/hub_server.py`) the Hub tests run against, and a
//! command that sees none of the machine's own Hub settings.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The loopback Hub, killed when dropped.
pub struct Hub {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Hub {
    /// Starts `tests/hub_server.py` with `args` (`--repo`, `--dataset`, `--token`, `--cut`), its
    /// request log in `dir`.
    pub fn start(dir: &Path, args: &[String]) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!(
            "hub-{}.log",
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hub_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tests/hub_server.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the server prints its port");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// The requests it served, one JSON object each.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cmd` without the HF_* settings of the machine, its home (where a login token would be) in
/// `dir`.
pub fn without_hub_settings(mut cmd: Command, dir: &Path) -> Command {
    for key in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
    ] {
        cmd.env_remove(key);
    }
    cmd.env("HOME", dir.join("home"));
    cmd
}

/// Asserts that Python's `huggingface_hub` finds `file` of `repo` (a `repo_type`: model or
/// dataset) in `cache`: its own reading of a cache wgspin wrote.
pub fn assert_found_by_huggingface_hub(repo: &str, file: &str, cache: &Path, repo_type: &str) {
    let found = Command::new("python3")
        .args([
            "-c",
            "import sys; from huggingface_hub import try_to_load_from_cache as t; \
             print(t(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3], repo_type=sys.argv[4]))",
        ])
        .args([repo, file])
        .arg(cache)
        .arg(repo_type)
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        Path::new(&path).is_file(),
        "huggingface_hub did not find {file} of {repo}: {path:?}"
    );
}

/// Python `huggingface_hub`'s `snapshot_download` of `repo` (a `repo_type`) from the Hub at
/// `endpoint` into `cache`: a cache laid out by the library itself. Asserts that it succeeded.
pub fn snapshot_download(repo: &str, repo_type: &str, cache: &Path, endpoint: &str) {
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys; from huggingface_hub import snapshot_download; \
             snapshot_download(sys.argv[1], repo_type=sys.argv[2], cache_dir=sys.argv[3], endpoint=sys.argv[4])",
        ])
        .args([repo, repo_type])
        .arg(cache)
        .arg(endpoint)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .status()
        .unwrap();
    assert!(status.success(), "snapshot_download of {repo} failed");
}

/// Whether python3 has huggingface_hub, which `.ci/run` installs (a CI run without it fails).
pub fn has_huggingface_hub() -> bool {
    super::python_client(&["huggingface_hub"], "pip install huggingface_hub")
}

//! `--model ORG/NAME[@REVISION]` through the Hugging Face cache (`src/hf/hub.rs`), against a
//! loopback server in the Hub's URL layout (`tests/hub_server.py`; there is no real Hub here) and a
//! cache laid out by Python's `huggingface_hub` itself (its `snapshot_download` from that server).
//! Every run's log-probs are compared byte for byte with the same command on the local fixture.
//!
//! Needs python3 with huggingface_hub (`.ci/run` installs it; a CI run without it fails).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::hub::{
    Hub, assert_found_by_huggingface_hub, has_huggingface_hub, snapshot_download,
    without_hub_settings,
};
use common::{fixture, wgspin};

const REPO: &str = "wgspin-test/tiny-qwen3";
const SHARDED: &str = "wgspin-test/tiny-qwen2";

/// The loopback Hub serving the two fixture models, with `extra` options.
fn start(dir: &Path, extra: &[&str]) -> Hub {
    let mut args = vec![
        "--repo".to_string(),
        format!("{REPO}={}", fixture("tiny-qwen3-bf16").display()),
        "--repo".to_string(),
        format!("{SHARDED}={}", fixture("tiny-qwen2-f32").display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Hub::start(dir, &args)
}

fn pairs(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"What is the capital of France?\", \"response\": \"Paris.\"}\n\
         {\"prompt\": \"Add 12 and 30.\", \"response\": \"12 + 30 = 42\"}\n",
    )
    .unwrap();
    path
}

/// `wgspin logprobs --model MODEL` with `env` (and no inherited HF_* settings); its output file.
fn logprobs(dir: &Path, model: &str, env: &[(&str, String)], tag: &str) -> (Output, String) {
    let out = dir.join(format!("{tag}.jsonl"));
    let mut cmd = without_hub_settings(wgspin(), dir);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let output = cmd
        .args(["logprobs", "--device", "cpu", "--model", model, "--data"])
        .arg(pairs(dir))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    (output, std::fs::read_to_string(&out).unwrap_or_default())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What the local fixture gives.
fn local(dir: &Path, name: &str) -> String {
    let (o, text) = logprobs(
        dir,
        fixture(name).to_str().unwrap(),
        &[],
        &format!("local-{name}"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    text
}

#[test]
fn a_cache_written_by_huggingface_hub_loads_offline_without_the_network() {
    if !has_huggingface_hub() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = dir.join("py-cache");
    let hub = start(dir, &[]);
    snapshot_download(REPO, "model", &cache, &hub.url);
    let served = hub.requests().len();
    let want = local(dir, "tiny-qwen3-bf16");
    let offline = [
        ("HF_HUB_OFFLINE", "1".to_string()),
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_ENDPOINT", hub.url.clone()),
    ];
    let (o, got) = logprobs(dir, REPO, &offline, "offline");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(got, want);
    assert_eq!(hub.requests().len(), served, "offline mode made requests");
    // HF_HOME/hub is the same cache.
    let home = dir.join("hf-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::rename(&cache, home.join("hub")).unwrap();
    let (o, got) = logprobs(
        dir,
        &format!("{REPO}@main"),
        &[
            ("HF_HUB_OFFLINE", "1".into()),
            ("HF_HOME", home.display().to_string()),
        ],
        "offline-home",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(got, want);
    // A PEFT adapter whose base_model_name_or_path is the Hub id (as PEFT writes it) finds its
    // base in the cache; loading an adapter never downloads.
    let pairs_for_sft = dir.join("sft.jsonl");
    common::write_pairs(&pairs_for_sft);
    let lora = dir.join("lora");
    common::run_ok(common::job_args(
        "sft",
        "tiny-qwen3-bf16",
        &pairs_for_sft,
        &lora,
        "--lr 1e-2 --epochs 1 --batch-size 2 --lora-rank 4",
    ));
    let adapter = lora.join("checkpoint");
    common::edit_json(&adapter.join("adapter_config.json"), |v| {
        v["base_model_name_or_path"] = REPO.into()
    });
    let with_home = [
        ("HF_HUB_OFFLINE", "1".to_string()),
        ("HF_HOME", home.display().to_string()),
    ];
    let (o, _) = logprobs(dir, adapter.to_str().unwrap(), &with_home, "adapter");
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, _) = logprobs(
        dir,
        adapter.to_str().unwrap(),
        &[("HF_HUB_CACHE", dir.join("none").display().to_string())],
        "adapter-uncached",
    );
    assert!(!o.status.success());
    common::assert_mentions(
        &stderr(&o),
        &[REPO, "not in the Hugging Face cache", "merge --base"],
    );
    // Offline without the files: a refusal that says what to do, and still no request.
    let (o, _) = logprobs(
        dir,
        REPO,
        &[
            ("HF_HUB_OFFLINE", "1".into()),
            ("HF_HUB_CACHE", dir.join("empty").display().to_string()),
        ],
        "offline-empty",
    );
    assert!(!o.status.success());
    common::assert_mentions(
        &stderr(&o),
        &[
            "--model",
            REPO,
            "HF_HUB_OFFLINE",
            "huggingface-cli download",
        ],
    );
    assert_eq!(hub.requests().len(), served);
}

#[test]
fn downloads_resume_after_a_broken_connection_and_a_gated_repo_needs_its_token() {
    if !has_huggingface_hub() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = dir.join("cache");
    // Gated, and the first download of the weights breaks after 20000 bytes.
    let hub = start(
        dir,
        &["--token", "hf_secret", "--cut", "model.safetensors:20000"],
    );
    let online = |token: Option<&str>| {
        let mut env = vec![
            ("HF_ENDPOINT", hub.url.clone()),
            ("HF_HUB_CACHE", cache.display().to_string()),
        ];
        if let Some(t) = token {
            env.push(("HF_TOKEN", t.to_string()));
        }
        env
    };
    let (o, _) = logprobs(dir, REPO, &online(None), "no-token");
    assert!(!o.status.success());
    common::assert_mentions(&stderr(&o), &[REPO, "gated", "HF_TOKEN"]);
    let (o, _) = logprobs(dir, REPO, &online(Some("hf_wrong")), "wrong-token");
    assert!(!o.status.success());
    common::assert_mentions(&stderr(&o), &[REPO, "no access"]);

    let want = local(dir, "tiny-qwen3-bf16");
    let (o, got) = logprobs(dir, REPO, &online(Some("hf_secret")), "token");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(got, want);
    common::assert_mentions(&stderr(&o), &["downloading model.safetensors"]);
    let resumed = hub.requests().into_iter().any(|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/model.safetensors"))
            && r["range"]
                .as_str()
                .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-0" && r != "bytes=0-")
    });
    assert!(
        resumed,
        "no range request resumed the broken download: {:?}",
        hub.requests()
    );

    // A sharded model: the index, then every shard it names.
    let (o, got) = logprobs(dir, SHARDED, &online(Some("hf_secret")), "sharded");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(got, local(dir, "tiny-qwen2-f32"));
    assert_eq!(stderr(&o).matches("downloading model-0000").count(), 4);

    // What wgspin wrote is a cache huggingface_hub reads.
    assert_found_by_huggingface_hub(REPO, "model.safetensors", &cache, "model");

    // The Hub gone: the complete cached copy serves an online run too.
    drop(hub);
    let (o, got) = logprobs(
        dir,
        REPO,
        &[
            ("HF_ENDPOINT", "http://127.0.0.1:9".into()),
            ("HF_HUB_CACHE", cache.display().to_string()),
        ],
        "unreachable",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(got, want);
    common::assert_mentions(&stderr(&o), &["cannot be reached", "cached copy"]);
}

#[test]
fn a_local_folder_wins_over_a_hub_id_of_the_same_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    common::copy_fixture(
        "tiny-qwen3-bf16",
        &dir.join("wgspin-test").join("tiny-qwen3"),
    );
    let mut cmd = wgspin();
    cmd.current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.join("empty"))
        .args(["logprobs", "--device", "cpu", "--model", REPO, "--data"])
        .arg(pairs(dir))
        .arg("--out")
        .arg(dir.join("out.jsonl"));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

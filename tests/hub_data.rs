//! `--data ORG/NAME[@REVISION][:SPLIT]` through the Hugging Face cache (`src/hf/hub_data.rs`,
//! `src/hf/data_files.rs`), against the loopback Hub (`tests/hub_server.py`) serving the datasets
//! `tests/fixtures/data/hub/make_hub_datasets.py` writes: UltraChat 200k's layout scaled down
//! (card `configs`, four splits, sharded Parquet of multi-turn `messages`), a repo without a card
//! (splits from file names) and JSON lines with two subsets. What `generate` reads is compared
//! with the rows that script computed in Python, split by split, for `--turns last` and `first`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::hub::{
    Hub, assert_found_by_huggingface_hub, has_huggingface_hub, snapshot_download,
    without_hub_settings,
};
use common::{assert_mentions, fixture, wgspin};
use serde_json::{Value, json};

const ULTRACHAT: &str = "wgspin-test/ultrachat";
/// The train_sft shard whose first download the gated server breaks.
const CUT_SHARD: &str = "data/train_sft-00001-of-00003-d6991aab487d568a.parquet";

fn hub_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data/hub")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(hub_fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The loopback Hub serving the three fixture datasets, with `extra` options.
fn start(dir: &Path, extra: &[&str]) -> Hub {
    let mut args = vec![];
    for name in ["ultrachat", "plain", "jsonl"] {
        args.push("--dataset".to_string());
        args.push(format!(
            "wgspin-test/{name}={}",
            hub_fixture(name).display()
        ));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Hub::start(dir, &args)
}

/// `wgspin generate --data DATA FLAGS` (one token per row, on the CPU) with `env` and no other
/// HF_* settings; its output rows.
fn generate(
    dir: &Path,
    data: &str,
    flags: &str,
    env: &[(&str, String)],
    tag: &str,
) -> (Output, Vec<Value>) {
    let out = dir.join(format!("{tag}.jsonl"));
    let mut cmd = without_hub_settings(wgspin(), dir);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args([
        "generate",
        "--device",
        "cpu",
        "--max-new-tokens",
        "1",
        "--model",
    ])
    .arg(fixture("tiny-qwen3-bf16"))
    .args(["--data", data, "--out"])
    .arg(&out)
    .args(flags.split_whitespace());
    let output = cmd.output().unwrap();
    let rows = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output, rows)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that `got` (generate's rows) are `want` (expected.json's rows) read at `turns`
/// ("turns_last" or "turns_first"): the same order, ids where the data has them, and `real` the
/// history, the prompt and the human response.
fn assert_rows(got: &[Value], want: &[Value], turns: &str, label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !w["id"].is_null() {
            assert_eq!(g["id"], w["id"], "{label}: row {i} id");
        }
        let t = &w[turns];
        let mut real = t["history"].as_array().unwrap().clone();
        real.push(json!({"role": "user", "content": t["prompt"]}));
        real.push(json!({"role": "assistant", "content": t["response"]}));
        assert_eq!(g["real"], Value::Array(real), "{label}: row {i}");
    }
}

/// expected.json's rows of `dataset`'s `config`, split `split`.
fn rows(e: &Value, dataset: &str, config: &str, split: &str) -> Vec<Value> {
    e["datasets"][dataset]["configs"][config]["rows"][split]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_cache_written_by_huggingface_hub_reads_offline_as_the_card_splits_it() {
    if !has_huggingface_hub() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = dir.join("py-cache");
    let hub = start(dir, &[]);
    for name in ["ultrachat", "plain", "jsonl"] {
        snapshot_download(&format!("wgspin-test/{name}"), "dataset", &cache, &hub.url);
    }
    let served = hub.requests().len();
    let offline = [
        ("HF_HUB_OFFLINE", "1".to_string()),
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_ENDPOINT", hub.url.clone()),
    ];
    let e = expected();
    for (i, (data, flags, (dataset, config, split), turns)) in [
        (
            format!("{ULTRACHAT}:train_sft"),
            "",
            ("ultrachat", "default", "train_sft"),
            "turns_last",
        ),
        (
            format!("{ULTRACHAT}:train_sft"),
            "--turns first",
            ("ultrachat", "default", "train_sft"),
            "turns_first",
        ),
        (
            ULTRACHAT.to_string(),
            "--split test_gen --turns first",
            ("ultrachat", "default", "test_gen"),
            "turns_first",
        ),
        (
            format!("{ULTRACHAT}@main:test_sft"),
            "",
            ("ultrachat", "default", "test_sft"),
            "turns_last",
        ),
        (
            "wgspin-test/plain".into(),
            "",
            ("plain", "default", "train"),
            "turns_last",
        ),
        (
            "wgspin-test/plain:test".into(),
            "",
            ("plain", "default", "test"),
            "turns_last",
        ),
        (
            "wgspin-test/jsonl".into(),
            "",
            ("jsonl", "chat", "train"),
            "turns_last",
        ),
        (
            "wgspin-test/jsonl".into(),
            "--split validation --turns first",
            ("jsonl", "chat", "validation"),
            "turns_first",
        ),
        (
            "wgspin-test/jsonl".into(),
            "--subset qa",
            ("jsonl", "qa", "train"),
            "turns_last",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("{data} {flags}");
        let (o, got) = generate(dir, &data, flags, &offline, &format!("g{i}"));
        assert!(o.status.success(), "{label}: {}", stderr(&o));
        assert_rows(&got, &rows(&e, dataset, config, split), turns, &label);
    }
    // --limit reads the first rows, across shards.
    let (o, got) = generate(
        dir,
        &format!("{ULTRACHAT}:train_sft"),
        "--limit 9",
        &offline,
        "limit",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_rows(
        &got,
        &rows(&e, "ultrachat", "default", "train_sft")[..9],
        "turns_last",
        "limit 9",
    );
    assert_eq!(hub.requests().len(), served, "offline mode made requests");

    // Splits and subsets that are not there are listed.
    let (o, _) = generate(
        dir,
        &format!("{ULTRACHAT}:train"),
        "",
        &offline,
        "bad-split",
    );
    assert!(!o.status.success());
    assert_mentions(
        &stderr(&o),
        &[
            "no split \"train\"",
            "train_sft, test_sft, train_gen, test_gen",
        ],
    );
    let (o, _) = generate(dir, ULTRACHAT, "", &offline, "no-split");
    assert_mentions(&stderr(&o), &["no train split", "--split"]);
    let (o, _) = generate(
        dir,
        "wgspin-test/jsonl",
        "--subset nope",
        &offline,
        "bad-subset",
    );
    assert_mentions(&stderr(&o), &["no subset \"nope\"", "qa, chat"]);
    let (o, _) = generate(
        dir,
        &format!("{ULTRACHAT}:test_sft"),
        "--split train_sft",
        &offline,
        "two-splits",
    );
    assert_mentions(&stderr(&o), &["--split train_sft", "different splits"]);

    // A snapshot missing one shard of the split is refused offline, naming the shard.
    let snap = std::fs::read_dir(cache.join("datasets--wgspin-test--ultrachat/snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(snap.join(CUT_SHARD)).unwrap();
    let (o, _) = generate(
        dir,
        &format!("{ULTRACHAT}:train_sft"),
        "",
        &offline,
        "partial",
    );
    assert!(!o.status.success());
    assert_mentions(
        &stderr(&o),
        &["00001-of-00003 is missing", "HF_HUB_OFFLINE"],
    );
    // Other splits of that snapshot are whole.
    let (o, _) = generate(
        dir,
        &format!("{ULTRACHAT}:test_gen"),
        "",
        &offline,
        "other-split",
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Not cached at all: a refusal that says what to do, and still no request.
    let empty = [
        ("HF_HUB_OFFLINE", "1".to_string()),
        ("HF_HUB_CACHE", dir.join("empty").display().to_string()),
    ];
    let (o, _) = generate(dir, &format!("{ULTRACHAT}:train_sft"), "", &empty, "empty");
    assert!(!o.status.success());
    assert_mentions(
        &stderr(&o),
        &[
            ULTRACHAT,
            "HF_HUB_OFFLINE",
            "hf download wgspin-test/ultrachat --repo-type dataset --revision main",
        ],
    );
    assert_eq!(hub.requests().len(), served);
}

#[test]
fn online_only_the_split_downloads_a_broken_download_resumes_and_a_gated_repo_needs_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = dir.join("cache");
    let cut = format!("{CUT_SHARD}:3000");
    // The Hub's Parquet conversion of a dataset: SUBSET/SPLIT/0000.parquet.
    let converted = dir.join("converted");
    for (split, file) in [
        ("train", "train-00000-of-00002"),
        ("test", "test-00000-of-00001"),
    ] {
        let to = converted.join("default").join(split);
        std::fs::create_dir_all(&to).unwrap();
        let from = hub_fixture("plain")
            .join("data")
            .join(format!("{file}.parquet"));
        std::fs::copy(from, to.join("0000.parquet")).unwrap();
    }
    let served = format!("wgspin-test/converted={}", converted.display());
    let hub = start(
        dir,
        &["--token", "hf_secret", "--cut", &cut, "--dataset", &served],
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
    let data = format!("{ULTRACHAT}:train_sft");
    let (o, _) = generate(dir, &data, "", &online(None), "no-token");
    assert!(!o.status.success());
    assert_mentions(&stderr(&o), &[ULTRACHAT, "gated", "HF_TOKEN"]);
    let (o, _) = generate(dir, &data, "", &online(Some("hf_wrong")), "wrong-token");
    assert!(!o.status.success());
    assert_mentions(&stderr(&o), &[ULTRACHAT, "no access", "dataset's terms"]);

    let e = expected();
    let want = rows(&e, "ultrachat", "default", "train_sft");
    let (o, got) = generate(dir, &data, "--limit 4", &online(Some("hf_secret")), "token");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_rows(&got, &want[..4], "turns_last", "online --limit 4");
    assert_eq!(stderr(&o).matches("downloading data/train_sft-").count(), 3);
    let requests = hub.requests();
    let fetched = |r: &Value| r["path"].as_str().unwrap_or("").to_string();
    assert!(
        !requests
            .iter()
            .any(|r| fetched(r).contains("/data/t") && !fetched(r).contains("/data/train_sft-")),
        "a file of another split was requested: {requests:?}"
    );
    let resumed = requests.iter().any(|r| {
        fetched(r).ends_with(CUT_SHARD)
            && r["range"]
                .as_str()
                .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-0" && r != "bytes=0-")
    });
    assert!(
        resumed,
        "no range request resumed the broken download: {requests:?}"
    );

    // The revision the Hub converts every dataset to Parquet at has its own layout.
    let (o, conv) = generate(
        dir,
        "wgspin-test/converted@refs/convert/parquet:test",
        "",
        &online(Some("hf_secret")),
        "converted",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_rows(
        &conv,
        &rows(&e, "plain", "default", "test"),
        "turns_last",
        "converted",
    );

    // The second run finds every file cached: no download, the same rows.
    let (o, again) = generate(
        dir,
        &data,
        "--limit 4 --overwrite",
        &online(Some("hf_secret")),
        "token",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("downloading"), "{}", stderr(&o));
    assert_eq!(again, got);

    // What wgspin wrote is a cache huggingface_hub reads.
    if has_huggingface_hub() {
        assert_found_by_huggingface_hub(ULTRACHAT, CUT_SHARD, &cache, "dataset");
    }

    // The Hub gone: the cached snapshot serves an online run too.
    drop(hub);
    let (o, got) = generate(
        dir,
        &data,
        "--limit 4 --overwrite",
        &[
            ("HF_ENDPOINT", "http://127.0.0.1:9".into()),
            ("HF_HUB_CACHE", cache.display().to_string()),
        ],
        "unreachable",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_rows(&got, &want[..4], "turns_last", "unreachable");
    assert_mentions(&stderr(&o), &["cannot be reached", "cached copy"]);
}

#[test]
fn a_local_path_wins_and_split_flags_need_a_hub_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A local file named like a Hub id is read as the file.
    let local = dir.join("wgspin-test").join("ultrachat:train_sft");
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::write(&local, "{\"prompt\": \"Say hi.\", \"response\": \"Hi.\"}\n").unwrap();
    let mut cmd = without_hub_settings(wgspin(), dir);
    let o = cmd
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.join("empty"))
        .args([
            "generate",
            "--device",
            "cpu",
            "--max-new-tokens",
            "1",
            "--model",
        ])
        .arg(fixture("tiny-qwen3-bf16"))
        .args([
            "--data",
            "wgspin-test/ultrachat:train_sft",
            "--out",
            "g.jsonl",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cmd = without_hub_settings(wgspin(), dir);
    let o = cmd
        .args(["generate", "--device", "cpu", "--model"])
        .arg(fixture("tiny-qwen3-bf16"))
        .arg("--data")
        .arg(&local)
        .args(["--split", "test", "--out"])
        .arg(dir.join("g2.jsonl"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_mentions(&stderr(&o), &["--split test", "local file"]);
}

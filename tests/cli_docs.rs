//! The docs and `--help` agree: every flag README.md or a page under docs/ shows beside a `wgspin`
//! command exists in that command's `--help`, and every flag they name in prose exists in some
//! command. A failure names the file.

mod common;

use std::collections::BTreeSet;

use common::wgspin;

/// README.md and every docs/*.md, as (path from the repository root, text), in path order.
fn doc_files() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("README.md")];
    let mut pages: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    paths.extend(pages);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.strip_prefix(root).unwrap().display().to_string();
            (name, text)
        })
        .collect()
}

/// `--flag` tokens of `text`, in order.
fn flags(text: &str) -> Vec<String> {
    let mut out = vec![];
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        let starts = b[i] == b'-' && b[i + 1] == b'-' && b[i + 2].is_ascii_lowercase();
        if starts && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-')) {
            let mut j = i + 2;
            while j < b.len()
                && (b[j].is_ascii_lowercase() || b[j].is_ascii_digit() || b[j] == b'-')
            {
                j += 1;
            }
            out.push(text[i..j].trim_end_matches('-').to_string());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Flags of `wgspin <path…> --help`.
fn help_flags(path: &[&str]) -> BTreeSet<String> {
    let out = wgspin().args(path).arg("--help").output().unwrap();
    assert!(out.status.success(), "wgspin {path:?} --help failed");
    flags(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .collect()
}

/// The commands `wgspin --help` lists (and `bench`'s subcommands as `bench <sub>`).
fn commands() -> Vec<Vec<String>> {
    let list = |path: &[&str]| -> Vec<String> {
        let out = wgspin().args(path).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    };
    let mut all = vec![];
    for c in list(&[]) {
        if c == "bench" {
            for s in list(&["bench"]) {
                all.push(vec![c.clone(), s]);
            }
        } else {
            all.push(vec![c]);
        }
    }
    all
}

/// Code lines of `text` that run `wgspin <cmd>` (directly or through `cargo run --release --`),
/// with their continuation lines joined, as (command path, the text after it).
fn invocations(text: &str, cmds: &[Vec<String>]) -> Vec<(Vec<String>, String)> {
    let mut joined: Vec<String> = vec![];
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let continues = line.starts_with("    ") && !joined.is_empty();
        match joined.last_mut() {
            Some(last) if continues || last.ends_with('\\') => {
                last.push(' ');
                last.push_str(line);
            }
            _ => joined.push(line.to_string()),
        }
    }
    let mut out = vec![];
    for line in joined {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .windows(4)
            .position(|w| w == ["cargo", "run", "--release", "--"])
            .map(|p| p + 4)
            .or_else(|| words.iter().position(|w| *w == "wgspin").map(|p| p + 1))
        else {
            continue;
        };
        let rest = &words[at.min(words.len())..];
        let Some(cmd) = cmds
            .iter()
            .filter(|c| rest.len() >= c.len() && rest[..c.len()] == c[..])
            .max_by_key(|c| c.len())
        else {
            continue;
        };
        out.push((cmd.clone(), rest[cmd.len()..].join(" ")));
    }
    out
}

#[test]
fn doc_flags_exist_in_their_commands_help() {
    let cmds = commands();
    assert!(cmds.len() >= 10, "commands from --help: {cmds:?}");
    let docs = doc_files();
    assert!(
        docs.len() >= 10,
        "README.md and docs/*.md: {} files",
        docs.len()
    );
    // (file, command path, the text after it) for every invocation in every file.
    let calls: Vec<(&str, Vec<String>, String)> = docs
        .iter()
        .flat_map(|(name, text)| {
            invocations(text, &cmds)
                .into_iter()
                .map(move |(c, rest)| (name.as_str(), c, rest))
        })
        .collect();
    let seen: BTreeSet<&Vec<String>> = calls.iter().map(|(_, c, _)| c).collect();
    for c in [
        "generate",
        "train",
        "spin",
        "sft",
        "logprobs",
        "convert",
        "export-gguf",
    ] {
        assert!(
            seen.contains(&vec![c.to_string()]),
            "neither README.md nor docs/*.md shows a `wgspin {c}` line"
        );
    }
    let mut help = std::collections::BTreeMap::new();
    let mut missing = vec![];
    for (file, cmd, rest) in &calls {
        let known = help.entry(cmd.clone()).or_insert_with(|| {
            let path: Vec<&str> = cmd.iter().map(String::as_str).collect();
            help_flags(&path)
        });
        for f in flags(rest) {
            if !known.contains(&f) {
                missing.push(format!("{file}: wgspin {} {f}", cmd.join(" ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags shown beside a command its --help does not have: {missing:?}"
    );
}

#[test]
fn doc_prose_flags_exist_in_some_command() {
    let mut known = BTreeSet::new();
    for c in commands() {
        let path: Vec<&str> = c.iter().map(String::as_str).collect();
        known.extend(help_flags(&path));
    }
    // Flags of other programs the docs show: cargo (and cargo fuzz's `--dev`),
    // huggingface-cli, the PyTorch baselines' `--threads` and `--autocast`
    // (scripts/bench_*.py), the real-model run's `--wgspin` (scripts/smollm2_spin.py), the
    // servers' `--port` (vllm, llama-server) and tensorboard's `--logdir`.
    let foreign = [
        "--release",
        "--dev",
        "--path",
        "--local-dir",
        "--threads",
        "--autocast",
        "--wgspin",
        "--port",
        "--logdir",
    ];
    let mut missing = vec![];
    for (file, text) in doc_files() {
        let mut unknown: Vec<String> = flags(&text)
            .into_iter()
            .filter(|f| !known.contains(f) && !foreign.contains(&f.as_str()))
            .collect();
        unknown.dedup();
        missing.extend(unknown.into_iter().map(|f| format!("{file}: {f}")));
    }
    assert!(missing.is_empty(), "flags no command has: {missing:?}");
}

//! `--config FILE.toml`: any flag of a subcommand as a TOML key (`beta = 0.2`,
//! `max-new-tokens = 64`; `_` and `-` both work). The file's values become the flags' defaults,
//! so flags given on the command line override it.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The subcommand name and the `--config` path in `args`, if any.
fn find(args: &[OsString]) -> Option<(String, PathBuf)> {
    let sub = args
        .iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))?
        .to_string_lossy()
        .into_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(|p| (sub, PathBuf::from(p)));
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some((sub, PathBuf::from(p)));
        }
    }
    None
}

/// Where a flag of an earlier release went, for files written for it.
fn renamed(sub: &str, long: &str) -> &'static str {
    match long {
        "batch-size" if sub == "generate" => " (now --gen-batch-size)",
        "seed" => " (now --sampling-seed for generation, --data-seed for the training data order)",
        "pairs" => " (now --data)",
        "prompts" => " (now --limit)",
        _ => "",
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Applies the `--config` file of `args` (if any) to `cmd` as argument defaults.
pub fn apply(mut cmd: clap::Command, args: &[OsString]) -> Result<clap::Command> {
    let Some((sub, path)) = find(args) else {
        return Ok(cmd);
    };
    let text = wgspin::fsutil::read_text(&path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
    let Some(sc) = cmd.find_subcommand(&sub) else {
        return Ok(cmd);
    };
    let known: Vec<String> = sc
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "config" && l != "help")
        .collect();
    let mut values = vec![];
    for (key, value) in &table {
        let long = key.replace('_', "-");
        if !known.contains(&long) {
            bail!(
                "{}: unknown key {key:?} for `wgspin {sub}`{}; valid keys: {}",
                path.display(),
                renamed(&sub, &long),
                known.join(", ")
            );
        }
        let Some(v) = scalar(value) else {
            bail!(
                "{}: key {key:?} must be a string, number or boolean",
                path.display()
            );
        };
        // Parsed here, where the file is known: as a default, a bad value would fail later in
        // clap with a message about the flag and not the file.
        if let Some(arg) = sc
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            && arg.get_action().takes_values()
            && clap::Command::new(sub.clone())
                .no_binary_name(true)
                .arg(arg.clone().required(false))
                .try_get_matches_from([format!("--{long}={v}")])
                .is_err()
        {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|p| p.get_name().to_string())
                .collect();
            let hint = if values.is_empty() {
                String::new()
            } else {
                format!(" (possible values: {})", values.join(", "))
            };
            bail!(
                "{}: key {key:?} = {v:?} is not a valid value for --{long}{hint}",
                path.display()
            );
        }
        values.push((long, v));
    }
    cmd = cmd.mut_subcommand(&sub, |mut sc| {
        for (long, v) in values {
            let id = sc
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .map(|a| a.get_id().clone());
            if let Some(id) = id {
                sc = sc.mut_arg(id, |a| a.default_value(v).required(false));
            }
        }
        sc
    });
    Ok(cmd)
}

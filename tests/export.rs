//! `wgspin export-pairs` against files pyarrow wrote in the layouts TRL, uclaml/SPIN and
//! LLaMA-Factory document (tests/fixtures/export/make_export_fixtures.py): the same rows, and for
//! Parquet the same leaf columns (path, type, nesting levels), so the Python stacks read ours as
//! they read theirs.

mod common;

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::Value;

use common::*;

const FORMATS: [&str; 3] = ["trl", "spin", "sharegpt"];

fn export_dir() -> std::path::PathBuf {
    fixture("export")
}

/// `export-pairs` of `data` as `format` into `out`, then `extra` flags.
fn export_from(data: &Path, format: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["export-pairs", "--format", format, "--data"]);
    a.push(data.to_str().unwrap().into());
    a.extend(args(&["--out", out.to_str().unwrap()]));
    a.extend(args(extra));
    a
}

/// `export-pairs` of the fixture pairs.
fn export(format: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    export_from(&export_dir().join("pairs.jsonl"), format, out, extra)
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each leaf column as (path, physical type, logical type, max definition / repetition level).
fn leaves(reader: &SerializedFileReader<std::fs::File>) -> Vec<String> {
    let schema = reader.metadata().file_metadata().schema_descr();
    schema
        .columns()
        .iter()
        .map(|c| {
            format!(
                "{} {:?} {:?} def {} rep {}",
                c.path(),
                c.physical_type(),
                c.logical_type_ref(),
                c.max_def_level(),
                c.max_rep_level()
            )
        })
        .collect()
}

/// Rows as JSON: the string, list and struct fields these layouts hold (anything else fails).
fn parquet_rows(reader: &SerializedFileReader<std::fs::File>) -> Vec<Value> {
    fn group(row: &Row) -> Value {
        Value::Object(
            row.get_column_iter()
                .map(|(k, f)| (k.clone(), field(f)))
                .collect(),
        )
    }
    fn field(f: &Field) -> Value {
        match f {
            Field::Str(s) => Value::String(s.clone()),
            Field::Group(row) => group(row),
            Field::ListInternal(list) => Value::Array(list.elements().iter().map(field).collect()),
            other => panic!("unexpected field {other:?}"),
        }
    }
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| group(&r.unwrap()))
        .collect()
}

fn open(path: &Path) -> SerializedFileReader<std::fs::File> {
    SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap()
}

#[test]
fn exports_match_what_pyarrow_writes_for_each_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for format in FORMATS {
        let out = tmp.path().join(format!("{format}.jsonl"));
        run_ok(export(format, &out, &[]));
        let want = jsonl(&export_dir().join(format!("{format}.jsonl")));
        assert_eq!(jsonl(&out), want, "{format}: JSON lines rows");

        let out = tmp.path().join(format!("{format}.parquet"));
        run_ok(export(format, &out, &[]));
        let (ours, theirs) = (
            open(&out),
            open(&export_dir().join(format!("{format}.parquet"))),
        );
        assert_eq!(leaves(&ours), leaves(&theirs), "{format}: Parquet columns");
        assert_eq!(
            parquet_rows(&ours),
            parquet_rows(&theirs),
            "{format}: Parquet rows"
        );
        // And the rows are the JSON lines rows.
        assert_eq!(parquet_rows(&ours), want, "{format}: Parquet vs JSON lines");
    }
}

/// The spin layout is also wgspin's own input: read back, it gives the pairs exported.
#[test]
fn spin_layout_reads_back_as_the_same_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = wgspin::data::read_dataset(
        &export_dir().join("pairs.jsonl"),
        wgspin::data::DataFormat::Spin,
    )
    .unwrap();
    for ext in ["jsonl", "parquet"] {
        let out = tmp.path().join(format!("pairs.{ext}"));
        run_ok(export("spin", &out, &[]));
        let back = wgspin::data::read_dataset(&out, wgspin::data::DataFormat::Auto).unwrap();
        assert_eq!(back.format, wgspin::data::DataFormat::Spin);
        let strip = |d: &wgspin::data::Dataset| -> Vec<(String, String, Option<String>)> {
            d.examples
                .iter()
                .map(|e| (e.prompt.clone(), e.response.clone(), e.generated.clone()))
                .collect()
        };
        assert_eq!(strip(&back), strip(&input), "{ext}");
    }
}

#[test]
fn export_refuses_data_without_generations_and_an_existing_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trl.jsonl");
    let sft = fixture("data").join("prompt_response.jsonl");
    let e = run_err(export_from(&sft, "trl", &out, &[]));
    assert_mentions(&e, &["prompt_response.jsonl"]);
    assert!(!out.exists());

    std::fs::write(&out, "keep").unwrap();
    assert_mentions(&run_err(export("trl", &out, &[])), &["--overwrite"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep");
    run_ok(export("trl", &out, &["--overwrite"]));
    assert_eq!(jsonl(&out), jsonl(&export_dir().join("trl.jsonl")));
}

/// A multi-turn pair keeps every turn in every layout: the shared turns (system turn, earlier
/// exchange, last user turn) in TRL's `prompt` and ShareGPT's `conversations`, whole
/// conversations in SPIN's; as JSON lines and Parquet, and the spin layout reads back as the same
/// example.
#[test]
fn multi_turn_pairs_keep_every_turn_in_each_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
    let s = |from: &str, value: &str| serde_json::json!({"from": from, "value": value});
    let shared = [
        m("system", "Be brief."),
        m("user", "u1"),
        m("assistant", "a1"),
        m("user", "u2"),
    ];
    let side = |last: &str| Value::Array([&shared[..], &[m("assistant", last)]].concat());
    let data = tmp.path().join("pairs.jsonl");
    let row = serde_json::json!({"id": "x", "real": side("a2"), "generated": side("g2")});
    std::fs::write(&data, format!("{row}\n")).unwrap();
    let want = [
        (
            "trl",
            serde_json::json!({
                "prompt": shared,
                "chosen": [m("assistant", "a2")],
                "rejected": [m("assistant", "g2")],
            }),
        ),
        (
            "spin",
            serde_json::json!({"real": side("a2"), "generated": side("g2")}),
        ),
        (
            "sharegpt",
            serde_json::json!({
                "conversations": [
                    s("system", "Be brief."), s("human", "u1"), s("gpt", "a1"), s("human", "u2")
                ],
                "chosen": s("gpt", "a2"),
                "rejected": s("gpt", "g2"),
            }),
        ),
    ];
    for (format, want) in want {
        let out = tmp.path().join(format!("{format}.jsonl"));
        run_ok(export_from(&data, format, &out, &[]));
        assert_eq!(
            jsonl(&out),
            std::slice::from_ref(&want),
            "{format}: JSON lines"
        );
        let out = tmp.path().join(format!("{format}.parquet"));
        run_ok(export_from(&data, format, &out, &[]));
        assert_eq!(parquet_rows(&open(&out)), [want], "{format}: Parquet");
    }
    let input = wgspin::data::read_dataset(&data, wgspin::data::DataFormat::Spin).unwrap();
    let back = wgspin::data::read_dataset(
        &tmp.path().join("spin.parquet"),
        wgspin::data::DataFormat::Auto,
    )
    .unwrap();
    assert_eq!(back.examples[0].history.len(), 3);
    assert_eq!(back.examples[0].history, input.examples[0].history);
    assert_eq!(back.examples[0].prompt, "u2");
}

/// A conversation LLaMA-Factory's ShareGPT converter would drop (a system turn after the first)
/// is refused by name rather than written for it to discard.
#[test]
fn sharegpt_layout_refuses_turns_it_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
    let shared = [m("user", "u1"), m("system", "late"), m("user", "u2")];
    let side = |last: &str| Value::Array([&shared[..], &[m("assistant", last)]].concat());
    let data = tmp.path().join("pairs.jsonl");
    let row = serde_json::json!({"id": "odd", "real": side("a"), "generated": side("g")});
    std::fs::write(&data, format!("{row}\n")).unwrap();
    let out = tmp.path().join("sharegpt.jsonl");
    assert_mentions(
        &run_err(export_from(&data, "sharegpt", &out, &[])),
        &["\"odd\"", "turn 1", "trl or spin"],
    );
    assert!(!out.exists());
    run_ok(export_from(&data, "trl", &out, &[]));
}

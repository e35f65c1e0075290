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

//! Data readers: every row shape from JSON lines and Parquet (fixtures made by
//! `tests/fixtures/data/make_data_fixtures.py`), format detection, skipped rows, and the errors.

use std::path::{Path, PathBuf};

use wgspin::data::{DataFormat, Dataset, SftExample, Skipped, read_dataset, read_prompt_responses};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn ex(id: &str, prompt: &str, response: &str, generated: Option<&str>) -> SftExample {
    SftExample {
        id: id.into(),
        prompt: prompt.into(),
        response: response.into(),
        generated: generated.map(Into::into),
    }
}

/// Reads `name.jsonl` and `name.parquet` (Auto) and checks both give the same result.
fn read_both(name: &str) -> Dataset {
    let j = read_dataset(&fixture(&format!("{name}.jsonl")), DataFormat::Auto).unwrap();
    let p = read_dataset(&fixture(&format!("{name}.parquet")), DataFormat::Auto).unwrap();
    assert_eq!(j.format, p.format, "{name}");
    assert_eq!(j.examples, p.examples, "{name}");
    assert_eq!(j.skipped, p.skipped, "{name}");
    j
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err(path: &Path, format: DataFormat) -> String {
    match read_dataset(path, format) {
        Ok(d) => panic!("{} should fail, read {:?}", path.display(), d.examples),
        Err(e) => e.to_string(),
    }
}

#[test]
fn messages_ultrachat_style() {
    let d = read_both("messages");
    assert_eq!(d.format, DataFormat::Messages);
    assert_eq!(
        d.examples,
        [
            ex("p1", "What is 2+2?", "4", None),
            ex("p4", "Name a color.", "Blue.", None)
        ]
    );
    assert_eq!(d.skipped.len(), 2);
    assert_eq!(d.skipped[0].line, 2);
    assert!(
        d.skipped[0].reason.contains("no assistant turn"),
        "{:?}",
        d.skipped
    );
    assert_eq!(d.skipped[1].line, 3);
    assert!(d.skipped[1].reason.contains("empty"), "{:?}", d.skipped);
}

#[test]
fn spin_pairs() {
    let d = read_both("spin");
    assert_eq!(d.format, DataFormat::Spin);
    assert_eq!(
        d.examples,
        [
            ex("row-1", "Hi", "Hello!", Some("Hey.")),
            ex("row-2", "Sky color?", "Blue.", Some("Green.")),
        ]
    );
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(d.skipped[0].line, 3);
    assert!(d.skipped[0].reason.contains("differ"), "{:?}", d.skipped);
}

#[test]
fn sharegpt_conversations() {
    let d = read_both("sharegpt");
    assert_eq!(d.format, DataFormat::ShareGpt);
    assert_eq!(
        d.examples,
        [
            ex("c1", "Capital of France?", "Paris.", None),
            ex("c2", "Capital of Italy?", "Rome.", None)
        ]
    );
    assert!(d.skipped.is_empty());
}

#[test]
fn prompt_response_with_numeric_ids() {
    let d = read_both("prompt_response");
    assert_eq!(d.format, DataFormat::PromptResponse);
    assert_eq!(
        d.examples,
        [
            ex("10", "Say yes.", "Yes.", None),
            ex("12", "Say no.", "No.", None)
        ]
    );
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(d.skipped[0].line, 2);
    assert!(
        d.skipped[0].reason.contains("empty \"response\""),
        "{:?}",
        d.skipped
    );
}

#[test]
fn alpaca_instruction_input_output() {
    let d = read_both("alpaca");
    assert_eq!(d.format, DataFormat::PromptResponse);
    assert_eq!(
        d.examples,
        [
            ex("row-1", "Translate to English.\n\nHallo", "Hello", None),
            ex("row-2", "Say hi.", "Hi", None)
        ]
    );
}

#[test]
fn path_is_kept() {
    let p = fixture("spin.parquet");
    assert_eq!(read_dataset(&p, DataFormat::Spin).unwrap().path, p);
}

#[test]
fn auto_skips_rows_of_another_shape() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "mixed.jsonl",
        concat!(
            "\n",
            r#"{"prompt": "a", "response": "b"}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
            "\n",
            r#"{"foo": 1}"#,
            "\n",
            r#"{"prompt": "c", "completion": "d"}"#,
            "\n"
        ),
    );
    let data = read_dataset(&p, DataFormat::Auto).unwrap();
    assert_eq!(data.format, DataFormat::PromptResponse);
    assert_eq!(
        data.examples,
        [ex("row-2", "a", "b", None), ex("row-5", "c", "d", None)]
    );
    let lines: Vec<usize> = data.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, [3, 4]);
    assert!(
        data.skipped[0].reason.contains("messages row")
            && data.skipped[0].reason.contains("line 2"),
        "{:?}",
        data.skipped
    );
    assert!(
        data.skipped[1].reason.contains("prompt-response"),
        "{:?}",
        data.skipped
    );
}

#[test]
fn auto_detection_waits_for_a_known_shape() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "late.jsonl",
        "[1, 2]\n{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\n",
    );
    let data = read_dataset(&p, DataFormat::Auto).unwrap();
    assert_eq!(data.format, DataFormat::ShareGpt);
    assert_eq!(data.examples, [ex("row-2", "q", "a", None)]);
    assert_eq!(data.skipped.len(), 1);
    assert_eq!(data.skipped[0].line, 1);
}

#[test]
fn explicit_format_skips_other_rows() {
    // ultrachat rows have "prompt" too, but no response key: as prompt-response every row is
    // unusable, and as messages they read as in auto mode.
    let p = fixture("messages.jsonl");
    let d = read_dataset(&p, DataFormat::Messages).unwrap();
    assert_eq!(d.examples.len(), 2);
    let e = err(&p, DataFormat::PromptResponse);
    assert!(
        e.contains("messages.jsonl")
            && e.contains("all 4 rows were skipped")
            && e.contains("prompt-response"),
        "{e}"
    );
    // SPIN files hold messages lists, but not under "messages".
    let e = err(&fixture("spin.parquet"), DataFormat::Messages);
    assert!(e.contains("a spin row, but the format is messages"), "{e}");
}

#[test]
fn malformed_json_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "bad.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": \"a\", \n",
    );
    let e = err(&p, DataFormat::Auto);
    assert!(
        e.contains("bad.jsonl:3:") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn json_array_file_gets_a_hint() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "array.json",
        "[\n  {\"prompt\": \"a\", \"response\": \"b\"}\n]\n",
    );
    let e = err(&p, DataFormat::Auto);
    assert!(
        e.contains("array.json:1:") && e.contains("JSON lines"),
        "{e}"
    );
}

#[test]
fn empty_file_lists_accepted_shapes() {
    let d = tempfile::tempdir().unwrap();
    let p = write(&d, "empty.jsonl", "\n  \n");
    let e = err(&p, DataFormat::Auto);
    assert!(e.contains("empty.jsonl") && e.contains("empty"), "{e}");
    for shape in [
        "prompt-response",
        "messages",
        "spin",
        "sharegpt",
        "\"conversations\"",
    ] {
        assert!(e.contains(shape), "{shape}: {e}");
    }
}

#[test]
fn no_usable_rows_quotes_reasons() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "unusable.jsonl",
        concat!(
            r#"{"prompt": "", "response": "b"}"#,
            "\n",
            r#"{"prompt": "a", "response": 3}"#,
            "\n",
            r#"{"prompt": "a", "response": "  "}"#,
            "\n",
            r#"{"prompt": "a"}"#,
            "\n"
        ),
    );
    let e = err(&p, DataFormat::Auto);
    assert!(
        e.contains("all 4 rows were skipped")
            && e.contains("line 1: ")
            && e.contains("empty \"prompt\"")
            && e.contains("line 2: ")
            && e.contains("a number")
            && e.contains("..."),
        "{e}"
    );
}

#[test]
fn duplicate_ids_name_both_lines() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "dup.jsonl",
        concat!(
            r#"{"id": "a", "prompt": "p", "response": "r"}"#,
            "\n",
            r#"{"id": "b", "prompt": "p", "response": "r"}"#,
            "\n",
            r#"{"id": "a", "prompt": "p", "response": "r"}"#,
            "\n"
        ),
    );
    let e = err(&p, DataFormat::Auto);
    assert!(
        e.contains("dup.jsonl:3:") && e.contains("\"a\"") && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn skipped_rows_do_not_claim_ids() {
    // The first "a" is unusable, so the second is the only example with that id.
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "dup-skipped.jsonl",
        concat!(
            r#"{"id": "a", "prompt": "p", "response": ""}"#,
            "\n",
            r#"{"id": "a", "prompt": "p", "response": "r"}"#,
            "\n"
        ),
    );
    let data = read_dataset(&p, DataFormat::Auto).unwrap();
    assert_eq!(data.examples, [ex("a", "p", "r", None)]);
    assert_eq!(
        data.skipped,
        [Skipped {
            line: 1,
            reason: "not a prompt-response row: empty \"response\"".into()
        }]
    );
}

#[test]
fn id_falls_back_to_row_number() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "ids.jsonl",
        concat!(
            "\n",
            r#"{"prompt": "p", "response": "r", "id": null}"#,
            "\n",
            r#"{"prompt": "p", "response": "r", "prompt_id": 42}"#,
            "\n"
        ),
    );
    let ids: Vec<String> = read_dataset(&p, DataFormat::Auto)
        .unwrap()
        .examples
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["row-2", "42"]);
}

#[test]
fn corrupt_parquet_is_an_error_naming_the_file() {
    let bytes = std::fs::read(fixture("messages.parquet")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cut.parquet");
    // Keeps the leading magic (so it is read as Parquet) but loses the footer.
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&p, DataFormat::Auto);
    assert!(e.contains("cut.parquet") && e.contains("Parquet"), "{e}");
}

#[test]
fn missing_file_says_what_data_takes() {
    let e = err(Path::new("/nonexistent/train.jsonl"), DataFormat::Auto);
    assert!(
        e.contains("train.jsonl") && e.contains("not found") && e.contains("Parquet"),
        "{e}"
    );
}

#[test]
fn format_names_round_trip() {
    for f in DataFormat::ALL {
        assert_eq!(f.to_string().parse::<DataFormat>().unwrap(), f);
    }
    assert_eq!(
        "ShareGPT".parse::<DataFormat>().unwrap(),
        DataFormat::ShareGpt
    );
    let e = "alpaca".parse::<DataFormat>().unwrap_err().to_string();
    assert!(
        e.contains("alpaca") && e.contains("prompt-response, messages, spin, sharegpt"),
        "{e}"
    );
    assert_eq!(DataFormat::default(), DataFormat::Auto);
}

#[test]
fn prompt_responses_stay_strict() {
    // `logprobs` writes one score per row, so a row read_dataset would skip is an error here.
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "pairs.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \"response\": \"\"}\n",
    );
    let e = read_prompt_responses(&p).unwrap_err().to_string();
    assert!(
        e.contains("pairs.jsonl:2:") && e.contains("response"),
        "{e}"
    );
    // Other shapes read as prompt/response pairs.
    let rows = read_prompt_responses(&fixture("sharegpt.parquet")).unwrap();
    assert_eq!(rows[1].prompt, "Capital of Italy?");
    assert_eq!(rows[1].response, "Rome.");
}

#[test]
fn corrupt_parquet_bytes_never_panic() {
    // The parquet crate's row reader asserts on some corrupt inputs (two single-byte flips of this
    // fixture hit one); read_dataset must turn that into an error, not a panic.
    let bytes = std::fs::read(fixture("messages.parquet")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("flipped.parquet");
    for i in 4..bytes.len() - 4 {
        let mut b = bytes.clone();
        b[i] ^= 0xa5;
        std::fs::write(&p, &b).unwrap();
        let r = std::panic::catch_unwind(|| read_dataset(&p, DataFormat::Auto));
        assert!(r.is_ok(), "flipping byte {i} panicked");
    }
}

//! Data readers: every row shape from JSON lines and Parquet (fixtures made by
//! `tests/fixtures/data/make_data_fixtures.py`), format detection, skipped rows, and the errors.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_mentions, temp_file};

use wgspin::data::{DataFormat, Dataset, SftExample, Skipped, read_dataset, read_prompt_responses};
use wgspin::hf::chat_template::Message;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn ex(id: &str, prompt: &str, response: &str, generated: Option<&str>) -> SftExample {
    SftExample {
        id: id.into(),
        history: vec![],
        prompt: prompt.into(),
        response: response.into(),
        generated: generated.map(Into::into),
    }
}

/// `e` with the turns `history` (role, content) before its prompt.
fn with_history(mut e: SftExample, history: &[(&str, &str)]) -> SftExample {
    e.history = history
        .iter()
        .map(|(role, content)| Message {
            role: role.to_string(),
            content: content.to_string(),
        })
        .collect();
    e
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

/// Asserts that exactly the rows at `want`'s lines were skipped, each for a reason containing
/// its text.
fn assert_skipped(skipped: &[Skipped], want: &[(usize, &str)]) {
    assert_eq!(skipped.len(), want.len(), "{skipped:?}");
    for (s, &(line, reason)) in skipped.iter().zip(want) {
        assert_eq!(s.line, line, "{skipped:?}");
        assert!(s.reason.contains(reason), "{skipped:?}");
    }
}

fn err(path: &Path, format: DataFormat) -> String {
    match read_dataset(path, format) {
        Ok(d) => panic!("{} should fail, read {:?}", path.display(), d.examples),
        Err(e) => e.to_string(),
    }
}

/// `f` on the path of `contents` saved as `name`, while the file lasts.
fn with_file<T>(name: &str, contents: impl AsRef<[u8]>, f: impl FnOnce(&Path) -> T) -> T {
    let (_dir, p) = temp_file(name, contents);
    f(&p)
}

fn read_text(name: &str, text: &str) -> Dataset {
    with_file(name, text, |p| read_dataset(p, DataFormat::Auto).unwrap())
}

fn err_text(name: &str, text: &str) -> String {
    with_file(name, text, |p| err(p, DataFormat::Auto))
}

#[test]
fn messages_ultrachat_style() {
    let d = read_both("messages");
    assert_eq!(d.format, DataFormat::Messages);
    assert_eq!(
        d.examples,
        [
            // Every turn before the last answer is the prompt, the system turn included.
            with_history(
                ex("p1", "And 3+3?", "6", None),
                &[
                    ("system", "Be brief."),
                    ("user", "What is 2+2?"),
                    ("assistant", "4")
                ]
            ),
            ex("p4", "Name a color.", "Blue.", None)
        ]
    );
    assert_skipped(&d.skipped, &[(2, "no assistant turn"), (3, "empty")]);
    assert_eq!(d.ties, 0);
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
    assert_skipped(&d.skipped, &[(3, "differ")]);
}

#[test]
fn sharegpt_conversations() {
    let d = read_both("sharegpt");
    assert_eq!(d.format, DataFormat::ShareGpt);
    assert_eq!(
        d.examples,
        [
            with_history(
                ex("c1", "Capital of France?", "Paris.", None),
                &[("system", "You are helpful.")]
            ),
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
    assert_skipped(&d.skipped, &[(2, "empty \"response\"")]);
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
    let data = read_text(
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
    assert_eq!(data.format, DataFormat::PromptResponse);
    assert_eq!(
        data.examples,
        [ex("row-2", "a", "b", None), ex("row-5", "c", "d", None)]
    );
    assert_skipped(
        &data.skipped,
        &[(3, "messages row"), (4, "prompt-response")],
    );
    assert_mentions(&data.skipped[0].reason, &["line 2"]);
}

#[test]
fn auto_detection_waits_for_a_known_shape() {
    let data = read_text(
        "late.jsonl",
        "[1, 2]\n{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\n",
    );
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
    assert_mentions(
        &e,
        &[
            "messages.jsonl",
            "all 4 rows were skipped",
            "prompt-response",
        ],
    );
    // SPIN files hold messages lists, but not under "messages".
    let e = err(&fixture("spin.parquet"), DataFormat::Messages);
    assert_mentions(&e, &["a spin row, but the format is messages"]);
}

#[test]
fn malformed_json_names_file_and_line() {
    let e = err_text(
        "bad.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": \"a\", \n",
    );
    assert_mentions(&e, &["bad.jsonl:3:", "invalid JSON"]);
}

#[test]
fn a_json_array_file_reads_as_datasets_reads_it() {
    // `datasets` reads a .json file of one array (yahma/alpaca-cleaned's layout) as rows.
    let data = read_text(
        "array.json",
        "\u{feff}\n  [\n  {\"prompt\": \"a\", \"response\": \"b\"},\n  {\"id\": \"x\", \"prompt\": \"c\", \"response\": \"d\"}\n]\n",
    );
    let got: Vec<(&str, &str)> = data
        .examples
        .iter()
        .map(|e| (e.id.as_str(), e.prompt.as_str()))
        .collect();
    assert_eq!(got, [("row-1", "a"), ("x", "c")]);
    let data = read_text(
        "bom.json",
        "\u{feff}[{\"prompt\": \"a\", \"response\": \"b\"}]",
    );
    assert_eq!(data.examples.len(), 1);
    let e = err_text(
        "broken.json",
        "[\n {\"prompt\": \"a\", \"response\": \"b\"},\n {\"prompt\": }\n]",
    );
    assert_mentions(&e, &["broken.json:3:", "invalid JSON"]);
    // A pretty-printed object gets a hint.
    let e = err_text("object.json", "{\n  \"prompt\": \"a\"\n}\n");
    assert_mentions(&e, &["object.json:1:", "JSON lines", "jq"]);
}

#[test]
fn empty_file_lists_accepted_shapes() {
    let e = err_text("empty.jsonl", "\n  \n");
    assert_mentions(&e, &["empty.jsonl", "empty"]);
    assert_mentions(
        &e,
        &[
            "prompt-response",
            "messages",
            "spin",
            "sharegpt",
            "\"conversations\"",
        ],
    );
}

#[test]
fn no_usable_rows_quotes_reasons() {
    let e = err_text(
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
    assert_mentions(
        &e,
        &[
            "all 4 rows were skipped",
            "line 1: ",
            "empty \"prompt\"",
            "line 2: ",
            "a number",
            "...",
        ],
    );
}

#[test]
fn duplicate_ids_name_both_lines() {
    let e = err_text(
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
    assert_mentions(&e, &["dup.jsonl:3:", "\"a\"", "line 1"]);
}

#[test]
fn a_repeated_prompt_id_is_numbered_but_a_repeated_id_is_an_error() {
    // prompt_id is a hash of the prompt (UltraChat's): two rows asking the same question share it.
    let row = |pid: &str, answer: &str| {
        format!(
            "{{\"prompt_id\": \"{pid}\", \"messages\": [{{\"role\": \"user\", \"content\": \"q\"}}, \
             {{\"role\": \"assistant\", \"content\": \"{answer}\"}}]}}\n"
        )
    };
    let text = row("h1", "a") + &row("h2", "b") + &row("h1", "c") + &row("h1", "d");
    let data = read_text("pid.jsonl", &text);
    let ids: Vec<&str> = data.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["h1", "h2", "h1#2", "h1#3"]);
    assert_eq!(data.repeated_prompts, 2);
    // An explicit id that repeats is still refused (see duplicate_ids_name_both_lines).
    let e = err_text("id.jsonl", &text.replace("prompt_id", "id"));
    assert_mentions(&e, &["duplicate id \"h1\"", "line 1"]);
}

#[test]
fn skipped_rows_do_not_claim_ids() {
    // The first "a" is unusable, so the second is the only example with that id.
    let data = read_text(
        "dup-skipped.jsonl",
        concat!(
            r#"{"id": "a", "prompt": "p", "response": ""}"#,
            "\n",
            r#"{"id": "a", "prompt": "p", "response": "r"}"#,
            "\n"
        ),
    );
    assert_eq!(data.examples, [ex("a", "p", "r", None)]);
    assert_eq!(
        data.skipped,
        [Skipped {
            file: 0,
            line: 1,
            reason: "not a prompt-response row: empty \"response\"".into()
        }]
    );
}

#[test]
fn id_falls_back_to_row_number() {
    let ids: Vec<String> = read_text(
        "ids.jsonl",
        concat!(
            "\n",
            r#"{"prompt": "p", "response": "r", "id": null}"#,
            "\n",
            r#"{"prompt": "p", "response": "r", "prompt_id": 42}"#,
            "\n"
        ),
    )
    .examples
    .into_iter()
    .map(|e| e.id)
    .collect();
    assert_eq!(ids, ["row-2", "42"]);
}

#[test]
fn corrupt_parquet_is_an_error_naming_the_file() {
    let bytes = std::fs::read(fixture("messages.parquet")).unwrap();
    // Keeps the leading magic (so it is read as Parquet) but loses the footer.
    let cut = &bytes[..bytes.len() / 2];
    let e = with_file("cut.parquet", cut, |p| err(p, DataFormat::Auto));
    assert_mentions(&e, &["cut.parquet", "Parquet"]);
}

#[test]
fn missing_file_says_what_data_takes() {
    let e = err(Path::new("/nonexistent/train.jsonl"), DataFormat::Auto);
    assert_mentions(&e, &["train.jsonl", "not found", "Parquet"]);
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
    assert_mentions(&e, &["alpaca", "prompt-response, messages, spin, sharegpt"]);
    assert_eq!(DataFormat::default(), DataFormat::Auto);
}

#[test]
fn prompt_responses_stay_strict() {
    // `logprobs` writes one score per row, so a row read_dataset would skip is an error here.
    let text =
        "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \"response\": \"\"}\n";
    let e = with_file("pairs.jsonl", text, |p| {
        read_prompt_responses(p).unwrap_err().to_string()
    });
    assert_mentions(&e, &["pairs.jsonl:2:", "response"]);
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

#[test]
fn parquet_dictionary_declaring_more_values_than_it_holds_is_refused() {
    // A dictionary page that declares 2^27 values in 8 bytes (see make_inflated_dictionary.py):
    // the parquet crate sized the dictionary from the header, gigabytes, before decoding it.
    let e = err(&fixture("inflated_dictionary.parquet"), DataFormat::Auto);
    assert_mentions(
        &e,
        &[
            "inflated_dictionary.parquet",
            "column \"prompt\"",
            "declares 134217728 values",
            "corrupt",
        ],
    );
}

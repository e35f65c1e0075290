//! Multi-turn conversations keep their turns: a row's prompt is every turn before its last
//! assistant turn (system turns included), rendered through the chat template as transformers'
//! `apply_chat_template(messages[:-1], add_generation_prompt=True)` renders it
//! (tests/fixtures/conversations/make_conversation_fixtures.py), and every stage — reading,
//! tokenizing, training, generating — sees the whole conversation. Single-turn data reads,
//! tokenizes and hashes as before.

mod common;

use std::path::Path;

use serde_json::{Value, json};

use common::*;
use wgspin::data::{DataFormat, SftExample, read_dataset};
use wgspin::hf::chat_template::Message;
use wgspin::hf::tokenizer::ChatTokenizer;
use wgspin::train::score::TokenizedPair;

fn turn(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

/// The shared turns of the issue's pair: `real = [system, u1, a1, u2, a2]`,
/// `generated = [system, u1, a1, u2, g2]`.
fn prefix(i: usize) -> Vec<Value> {
    vec![
        turn("system", "You answer in one word."),
        turn("user", &format!("What colour is thing {i}?")),
        turn("assistant", "Blue."),
        turn("user", &format!("And thing {}?", i + 1)),
    ]
}

/// A SPIN row whose two sides share `prefix` and end with `real` / `generated`.
fn pair_row(id: &str, prefix: &[Value], real: &str, generated: &str) -> Value {
    let side = |answer: &str| {
        let mut t = prefix.to_vec();
        t.push(turn("assistant", answer));
        t
    };
    json!({"id": id, "real": side(real), "generated": side(generated)})
}

fn write_rows(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn multi_turn_pair_reads_as_its_last_answer_given_every_turn_before() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pairs.jsonl");
    let mut other = prefix(0);
    other[2] = turn("assistant", "Grey.");
    let real_b = [prefix(0), vec![turn("assistant", "Green.")]].concat();
    let generated_b = [other, vec![turn("assistant", "Red.")]].concat();
    write_rows(
        &path,
        &[
            pair_row("a", &prefix(0), "Green.", "Red."),
            // Same last user turn, another earlier answer: not the same prompt.
            json!({"id": "b", "real": real_b, "generated": generated_b}),
        ],
    );
    let d = read_dataset(&path, DataFormat::Auto).unwrap();
    assert_eq!(d.format, DataFormat::Spin);
    assert_eq!(
        d.examples,
        [SftExample {
            id: "a".into(),
            history: vec![
                msg("system", "You answer in one word."),
                msg("user", "What colour is thing 0?"),
                msg("assistant", "Blue."),
            ],
            prompt: "And thing 1?".into(),
            response: "Green.".into(),
            generated: Some("Red.".into()),
        }]
    );
    assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
    assert_eq!(d.skipped[0].line, 2);
    assert_mentions(&d.skipped[0].reason, &["differ", "turn 2"]);
    assert_eq!(d.ties, 0);
}

/// The conversation of conversations.json, as transformers rendered it for each fixture.
#[test]
fn multi_turn_prompt_renders_and_tokenizes_as_transformers_does() {
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("conversations/conversations.json")).unwrap(),
    )
    .unwrap();
    for (name, case) in want["models"].as_object().unwrap() {
        let tok = ChatTokenizer::from_dir(&fixture(name), &[]).unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let text = tok.render_chat(&messages, true).unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "{name}: rendered text"
        );
        let (last, history) = messages.split_last().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(
            tok.chat_prompt_ids(history, &last.content).unwrap(),
            ids,
            "{name}: prompt ids"
        );
        // And the same through a data row: a messages row of these turns and an answer.
        let mut turns: Vec<Value> = messages.iter().map(|m| turn(&m.role, &m.content)).collect();
        turns.push(turn("assistant", "Green."));
        let (_dir, path) = temp_file(
            "messages.jsonl",
            format!("{}\n", json!({"id": "x", "messages": turns})),
        );
        let e = &read_dataset(&path, DataFormat::Auto).unwrap().examples[0];
        let pair = TokenizedPair::chat(&tok, &e.history, &e.prompt, &e.response).unwrap();
        assert_eq!(pair.prompt, ids, "{name}: prompt ids of the data row");
        assert_eq!(pair.response, tok.response_ids("Green.").unwrap());
    }
}

/// Without a chat template there is no way to write the earlier turns: refused, not dropped.
#[test]
fn multi_turn_prompt_without_a_chat_template_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-qwen2-f32");
    std::fs::copy(
        src.join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(tmp.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = ChatTokenizer::from_dir(tmp.path(), &[]).unwrap();
    assert!(!tok.has_chat_template());
    let e = tok
        .chat_prompt_ids(&[msg("system", "Be brief.")], "Hi")
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["multi-turn prompt needs a chat template"]);
    // A single-turn prompt still tokenizes as plain text with special tokens.
    assert_eq!(
        tok.chat_prompt_ids(&[], "Hi").unwrap(),
        tok.encode("Hi", true).unwrap()
    );
}

/// Single-turn examples serialize as before history existed, so the content hash a resumed run
/// compares (manifest::content_hash of the examples) is unchanged; and they tokenize as before.
#[test]
fn single_turn_data_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pairs.jsonl");
    write_rows(
        &path,
        &[pair_row("s", &[turn("user", "Hi")], "Hello!", "Hey.")],
    );
    let d = read_dataset(&path, DataFormat::Auto).unwrap();
    let e = &d.examples[0];
    assert!(e.history.is_empty());
    assert_eq!(
        serde_json::to_string(e).unwrap(),
        r#"{"id":"s","prompt":"Hi","response":"Hello!","generated":"Hey."}"#
    );
    // Tokenized as transformers tokenizes a single-turn prompt (the fixture's reference ids).
    let model = fixture("tiny-llama-bf16");
    let tok = ChatTokenizer::from_dir(&model, &[]).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("reference.json")).unwrap())
            .unwrap();
    let case = &reference["cases"][0];
    let ids = |k: &str| -> Vec<u32> {
        case[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let pair = TokenizedPair::chat(
        &tok,
        &[],
        case["prompt"].as_str().unwrap(),
        case["response"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(pair.prompt, ids("prompt_ids"));
    assert_eq!(pair.response, ids("response_ids"));
}

/// The issue's pair trained: before, it read as (u1, a1, a1), a tie with gradient norm 0.
#[test]
fn training_on_multi_turn_pairs_has_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    let rows: Vec<Value> = (0..2)
        .map(|i| pair_row(&format!("q{i}"), &prefix(i), "Green.", "Red, I think."))
        .collect();
    write_rows(&pairs, &rows);
    let out = tmp.path().join("run");
    let st = run_ok(job_args(
        "train",
        "tiny-llama-bf16",
        &pairs,
        &out,
        "--lr 1e-3 --batch-size 2 --epochs 1",
    ));
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(
        !stderr.contains("are ties") && !stderr.contains("is a tie"),
        "{stderr}"
    );
    let metrics = jsonl(&out.join("metrics.jsonl"));
    let norm = metrics[0]["grad_norm"].as_f64().unwrap();
    assert!(norm > 0.0, "gradient norm {norm}: {metrics:?}");
}

/// Ties are counted; a file of nothing else is warned about before any work.
#[test]
fn ties_are_counted_and_all_ties_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    let out = tmp.path().join("trl.jsonl");
    let export = || {
        let mut a = args(&["export-pairs", "--format", "trl", "--overwrite", "--data"]);
        a.push(pairs.to_str().unwrap().into());
        a.extend(args(&["--out", out.to_str().unwrap()]));
        String::from_utf8_lossy(&run_ok(a).stderr).into_owned()
    };
    let tie = pair_row("t", &prefix(0), "Green.", "Green.");
    write_rows(&pairs, std::slice::from_ref(&tie));
    assert_eq!(read_dataset(&pairs, DataFormat::Spin).unwrap().ties, 1);
    assert_mentions(
        &export(),
        &[
            "warning",
            "every one of the 1 pairs is a tie",
            "gradient norm 0",
        ],
    );
    write_rows(&pairs, &[tie, pair_row("u", &prefix(1), "Green.", "Red.")]);
    let stderr = export();
    assert_mentions(&stderr, &["1 of 2 pairs are ties"]);
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// `generate` on multi-turn `messages` rows answers the last user turn given every turn before
/// it, and writes the whole conversation on both sides, which reads back as the same example.
#[test]
fn generate_writes_whole_conversations() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("chats.jsonl");
    let rows: Vec<Value> = (0..2)
        .map(|i| {
            let mut turns = prefix(i);
            turns.push(turn("assistant", "Green."));
            json!({"id": format!("c{i}"), "messages": turns})
        })
        .collect();
    write_rows(&data, &rows);
    let out = tmp.path().join("gen.jsonl");
    run_ok(job_args(
        "generate",
        "tiny-llama-bf16",
        &data,
        &out,
        "--max-new-tokens 4 --temperature 0",
    ));
    let got = jsonl(&out);
    assert_eq!(got.len(), 2);
    for (i, row) in got.iter().enumerate() {
        let want_real = [prefix(i), vec![turn("assistant", "Green.")]].concat();
        assert_eq!(row["real"], Value::Array(want_real), "row {i}");
        let generated = row["generated"].as_array().unwrap();
        assert_eq!(
            &generated[..4],
            &prefix(i)[..],
            "row {i}: generated side's prompt"
        );
        assert_eq!(generated[4]["role"], "assistant");
    }
    let input = read_dataset(&data, DataFormat::Auto).unwrap();
    let back = read_dataset(&out, DataFormat::Auto).unwrap();
    assert_eq!(back.format, DataFormat::Spin);
    assert_eq!(
        back.examples.len(),
        input.examples.len(),
        "rows skipped on the way back: {:?}",
        back.skipped
    );
    for (a, b) in input.examples.iter().zip(&back.examples) {
        assert_eq!(
            (&a.id, &a.history, &a.prompt, &a.response),
            (&b.id, &b.history, &b.prompt, &b.response)
        );
    }
}

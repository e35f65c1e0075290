//! Tokenizer parity on the real SmolLM2-135M-Instruct tokenizer files in `../shared/fixtures`
//! (ids made by transformers for `cases.jsonl`), including its chat template with a default
//! system prompt, and a round trip of hard strings (digits, whitespace runs, emoji, accents).

mod common;

use common::*;
use wgspin::hf::config::ModelConfig;
use wgspin::hf::tokenizer::ChatTokenizer;

fn smollm2() -> (std::path::PathBuf, ChatTokenizer) {
    let dir = shared_fixture("smollm2-135m-instruct");
    assert!(
        dir.join("tokenizer.json").exists(),
        "{} is missing: these tests need the shared fixtures next to the repository",
        dir.display()
    );
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let tok = ChatTokenizer::from_dir(&dir, &cfg.eos_token_ids).unwrap();
    (dir, tok)
}

#[test]
fn smollm2_ids_match_transformers() {
    let (dir, tok) = smollm2();
    let r = reference(&dir);
    assert!(!r.cases.is_empty());
    assert_reference_ids(&tok, &r.cases, "smollm2");
}

#[test]
fn smollm2_round_trips_hard_strings() {
    let (_, tok) = smollm2();
    for s in [
        "1234567890 and 3.14159",
        "tabs\tand    runs   of spaces\n\n\nnew lines",
        "emoji 😀🚀 and accents: café, naïve, Straße, Ångström",
        "中文和日本語",
    ] {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
    }
    // SmolLM's pre-tokenizer splits digits one by one.
    let ids = tok.encode("2024", false).unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
}

//! The demo's toy task: shift every letter of a three-letter word one step along the alphabet
//! (`shift: cat` → `dbu`, z wraps to a). Answers are checked exactly, and the "human" responses
//! are written in one fixed style (the shifted letters, nothing else), so exact-match accuracy
//! measures what SFT and SPIN taught. Held-out words are unseen, so a model must learn the rule
//! (a per-letter map at a fixed offset), not the words; a tiny model does so in minutes.

use wgspin::data::SftExample;

/// Letters the strings are made of; small, so a tiny model can learn the task in minutes.
pub const LETTERS: &str = "abcdefghijklmnopqrstuvwxyz";
pub const PREFIX: &str = "shift: ";
pub const WORD_LEN: usize = 3;

use wgspin::rng::SplitMix64 as Rng;

/// The expected answer for a prompt of this task.
pub fn answer(word: &str) -> String {
    word.chars()
        .map(|c| match LETTERS.find(c) {
            Some(i) => LETTERS.as_bytes()[(i + 1) % LETTERS.len()] as char,
            None => c,
        })
        .collect()
}

/// `n` distinct examples, seeded, none of whose prompts is in `exclude`.
pub fn examples(n: usize, seed: u64, exclude: &[SftExample]) -> Vec<SftExample> {
    let letters: Vec<char> = LETTERS.chars().collect();
    let mut rng = Rng(seed);
    let mut seen: std::collections::HashSet<String> =
        exclude.iter().map(|e| e.prompt.clone()).collect();
    let mut out = vec![];
    while out.len() < n {
        let word: String = (0..WORD_LEN)
            .map(|_| letters[rng.below(letters.len())])
            .collect();
        let prompt = format!("{PREFIX}{word}");
        if !seen.insert(prompt.clone()) {
            continue;
        }
        out.push(SftExample {
            id: format!("ex-{}", out.len()),
            response: answer(&word),
            prompt,
            generated: None,
        });
    }
    out
}

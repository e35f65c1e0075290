//! The demo's toy task: reverse a short string of letters. Answers are checked exactly, and the
//! "human" responses are written in one fixed style (the reversed letters, nothing else), so
//! exact-match accuracy measures what SFT and SPIN taught.

use crate::data::SftExample;

/// Letters the strings are made of; small, so a tiny model can learn the task in minutes.
pub const LETTERS: &str = "abcdef";
pub const PREFIX: &str = "reverse: ";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The expected answer for a prompt of this task.
pub fn answer(word: &str) -> String {
    word.chars().rev().collect()
}

/// `n` distinct examples of 3–5 letters, seeded; the word is the prompt's suffix.
pub fn examples(n: usize, seed: u64, exclude: &[SftExample]) -> Vec<SftExample> {
    let letters: Vec<char> = LETTERS.chars().collect();
    let mut rng = Rng(seed);
    let mut seen: std::collections::HashSet<String> =
        exclude.iter().map(|e| e.prompt.clone()).collect();
    let mut out = vec![];
    while out.len() < n {
        let len = 3 + rng.below(3);
        let word: String = (0..len)
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

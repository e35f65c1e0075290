//! The demo's toy tasks, whose answers are checked exactly. The "human" responses are written in
//! one fixed style (the answer letters, nothing else), so exact-match accuracy measures what SFT
//! and SPIN taught. Held-out words are unseen, so a model must learn the rule, not the words.
//!
//! `shift` (three letters, `shift: cat` → `dbu`) is the short task; `shift-long` and `reverse` use
//! 5–8-letter words, where an answer is long enough for a model's own early mistakes to derail
//! the rest of it (exposure bias), the failure SPIN's self-generated negatives target.

use clap::ValueEnum;
use serde::Serialize;

use wgspin::data::SftExample;
use wgspin::rng::SplitMix64 as Rng;

/// Letters the words are made of.
pub const LETTERS: &str = "abcdefghijklmnopqrstuvwxyz";

/// A demo task: how prompts are drawn and what the right answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Shift each letter of a 3-letter word one step along the alphabet (cat → dbu).
    Shift,
    /// The same rule on 5–8-letter words (garden → hbsefo).
    ShiftLong,
    /// Write a 5–8-letter word backwards (garden → nedrag).
    Reverse,
}

impl Task {
    fn prefix(self) -> &'static str {
        match self {
            Task::Shift | Task::ShiftLong => "shift: ",
            Task::Reverse => "reverse: ",
        }
    }

    /// Shortest and longest word, inclusive.
    fn word_lengths(self) -> (usize, usize) {
        match self {
            Task::Shift => (3, 3),
            Task::ShiftLong | Task::Reverse => (5, 8),
        }
    }

    /// Longest answer in characters (one token each with the demo's tokenizer).
    pub fn max_answer_len(self) -> usize {
        self.word_lengths().1
    }

    /// One line for the demo's banner.
    pub fn describe(self) -> &'static str {
        match self {
            Task::Shift => "shift the letters of 3-letter words (cat → dbu)",
            Task::ShiftLong => "shift the letters of 5–8-letter words (garden → hbsefo)",
            Task::Reverse => "write 5–8-letter words backwards (garden → nedrag)",
        }
    }

    /// The expected answer for `word`.
    pub fn answer(self, word: &str) -> String {
        match self {
            Task::Shift | Task::ShiftLong => word
                .chars()
                .map(|c| match LETTERS.find(c) {
                    Some(i) => LETTERS.as_bytes()[(i + 1) % LETTERS.len()] as char,
                    None => c,
                })
                .collect(),
            Task::Reverse => word.chars().rev().collect(),
        }
    }

    /// `n` distinct examples, seeded, none of whose prompts is in `exclude`.
    pub fn examples(self, n: usize, seed: u64, exclude: &[SftExample]) -> Vec<SftExample> {
        let letters: Vec<char> = LETTERS.chars().collect();
        let (lo, hi) = self.word_lengths();
        let mut rng = Rng(seed);
        let mut seen: std::collections::HashSet<String> =
            exclude.iter().map(|e| e.prompt.clone()).collect();
        let mut out = vec![];
        while out.len() < n {
            let len = lo + rng.below(hi - lo + 1);
            let word: String = (0..len)
                .map(|_| letters[rng.below(letters.len())])
                .collect();
            let prompt = format!("{}{word}", self.prefix());
            if !seen.insert(prompt.clone()) {
                continue;
            }
            out.push(SftExample {
                id: format!("ex-{}", out.len()),
                history: vec![],
                response: self.answer(&word),
                prompt,
                generated: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_each_rule() {
        assert_eq!(Task::Shift.answer("caz"), "dba");
        assert_eq!(Task::ShiftLong.answer("garden"), "hbsefo");
        assert_eq!(Task::Reverse.answer("garden"), "nedrag");
    }

    #[test]
    fn examples_are_distinct_of_the_right_length_and_avoid_the_excluded() {
        for task in [Task::Shift, Task::ShiftLong, Task::Reverse] {
            let first = task.examples(50, 1, &[]);
            let second = task.examples(50, 2, &first);
            let (lo, hi) = task.word_lengths();
            for e in first.iter().chain(&second) {
                let word = e.prompt.strip_prefix(task.prefix()).unwrap();
                assert!((lo..=hi).contains(&word.len()), "{e:?}");
                assert_eq!(e.response, task.answer(word));
            }
            let mut prompts: Vec<_> = first.iter().chain(&second).map(|e| &e.prompt).collect();
            prompts.sort();
            prompts.dedup();
            assert_eq!(prompts.len(), 100, "{task:?}");
        }
    }
}

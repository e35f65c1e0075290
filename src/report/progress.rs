//! The progress layer: a one-line bar on a terminal (stderr, redrawn at most 10 times a second),
//! plain log lines every 10% or 30 s when stderr is a file or a pipe (CI logs stay readable).
//! With the metrics writers, the only part of the library that prints.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: usize,
    tty: bool,
    start: Instant,
    last_draw: Option<Instant>,
    last_logged_tenth: usize,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Self {
            label: label.into(),
            total,
            tty: draws_bars(),
            start: Instant::now(),
            last_draw: None,
            last_logged_tenth: 0,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Reports `done` of `total`, with `extra` (e.g. "812 tok/s") after the counts.
    pub fn update(&mut self, done: usize, extra: &str) {
        let now = Instant::now();
        let elapsed = now - self.start;
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let eta = if done > 0 && done < self.total {
            let secs = elapsed.as_secs_f64() / frac * (1.0 - frac);
            format!(" ETA {}", fmt_secs(secs))
        } else {
            String::new()
        };
        if self.tty {
            if self
                .last_draw
                .is_some_and(|t| now - t < Duration::from_millis(100))
                && done < self.total
            {
                return;
            }
            self.last_draw = Some(now);
            let width = 24;
            let filled = ((frac * width as f64) as usize).min(width);
            let bar: String = "█".repeat(filled) + &"·".repeat(width - filled);
            eprint!(
                "\r\x1b[2K{} [{bar}] {done}/{} {extra} {}{eta}",
                self.label,
                self.total,
                fmt_secs(elapsed.as_secs_f64())
            );
            let _ = std::io::stderr().flush();
        } else {
            let tenth = (frac * 10.0) as usize;
            let stale = self
                .last_draw
                .is_none_or(|t| now - t >= Duration::from_secs(30));
            if tenth > self.last_logged_tenth || stale || done == self.total {
                self.last_logged_tenth = tenth;
                self.last_draw = Some(now);
                eprintln!(
                    "{}: {done}/{} {extra} [{}{eta}]",
                    self.label,
                    self.total,
                    fmt_secs(elapsed.as_secs_f64())
                );
            }
        }
    }

    /// Ends the bar's line on a terminal.
    pub fn finish(&mut self) {
        if self.tty && self.last_draw.is_some() {
            eprintln!();
        }
    }
}

/// Whether stderr takes a redrawn bar: a terminal that understands escape codes (`TERM=dumb`,
/// as Emacs shells and some CI runners set it, prints them as text).
pub fn draws_bars() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

pub fn fmt_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", secs.max(0.0))
    }
}

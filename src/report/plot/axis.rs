//! Tick positions, tick labels and caption wrapping for the SVG plots, apart from the drawing
//! code so the number formatting reads (and is tested) on its own.

/// A step of 1, 2 or 5 × 10^k giving about `target` intervals over `span`: such steps make
/// labels like 0.5, 1, 1.5 where an even split of the range gives 0.750, 1.500.
pub(super) fn nice_step(span: f64, target: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let m = match raw / mag {
        f if f < 1.5 => 1.0,
        f if f < 3.0 => 2.0,
        f if f < 7.0 => 5.0,
        _ => 10.0,
    };
    m * mag
}

/// Tick values inside a range and the step between them (the step sets the label precision).
#[derive(Debug, Clone)]
pub(super) struct Ticks {
    pub values: Vec<f64>,
    pub step: f64,
}

/// At most this many ticks, so a degenerate range cannot produce thousands of labels.
const MAX_TICKS: i64 = 40;

fn multiples(lo: f64, hi: f64, step: f64) -> Ticks {
    // The tolerance keeps a tick that sits on the range end despite rounding (0.1 * 3 > 0.3).
    let k0 = (lo / step - 1e-9).ceil() as i64;
    let k1 = ((hi / step + 1e-9).floor() as i64).min(k0 + MAX_TICKS);
    Ticks {
        values: (k0..=k1).map(|k| k as f64 * step).collect(),
        step,
    }
}

/// Multiples of a round step within [lo, hi], about `target` intervals apart.
pub(super) fn ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    multiples(lo, hi, nice_step(hi - lo, target))
}

/// Every integer within [lo, hi]: iterations and rounds are counted, never fractional.
pub(super) fn integer_ticks(lo: f64, hi: f64) -> Ticks {
    multiples(lo, hi, 1.0)
}

/// `v` with at most the decimals `step` needs (step 0.5 → "1", "1.5"), as a percentage
/// of 1.0 when `percent`; exponent form only for magnitudes fixed notation would make unreadable.
pub(super) fn tick_label(v: f64, step: f64, percent: bool) -> String {
    let (v, step, unit) = if percent {
        (v * 100.0, step * 100.0, "%")
    } else {
        (v, step, "")
    };
    let big = v.abs().max(step.abs());
    let s = if v == 0.0 {
        "0".to_string()
    } else if big >= 1e6 || (step.abs() < 1e-4 && v.abs() < 1e-3) {
        format!("{v:.1e}")
    } else {
        // Steps are 1, 2 or 5 × 10^k, so −log10(step) rounded up is the decimals it needs; the
        // small offset stops log10(0.1) = −0.99999… from asking for a second decimal.
        let decimals = (-step.abs().log10() - 1e-6).ceil().max(0.0) as usize;
        let s = format!("{v:.decimals$}");
        // "1" next to "1.5" reads better than "1.0"; the step still shows in the other labels.
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    // Rounding a tiny negative value gives "-0.0"; a zero tick reads "0".
    let s = match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    };
    format!("{s}{unit}")
}

/// `text` broken at spaces into lines of at most `width` characters; a word longer than a line
/// is split, so no line overflows the panel.
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = vec![];
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        let used = line.chars().count();
        if used > 0 && used + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &Ticks, percent: bool) -> Vec<String> {
        t.values
            .iter()
            .map(|&v| tick_label(v, t.step, percent))
            .collect()
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(3.0, 4), 1.0);
        assert_eq!(nice_step(1.0, 5), 0.2);
        assert_eq!(nice_step(0.3, 5), 0.05);
        assert_eq!(nice_step(1000.0, 5), 200.0);
        assert_eq!(
            labels(&ticks(0.0, 3.0, 5), false),
            ["0", "0.5", "1", "1.5", "2", "2.5", "3"]
        );
        assert_eq!(
            labels(&ticks(-0.03, 1030.0, 5), false),
            ["0", "200", "400", "600", "800", "1000"]
        );
        assert_eq!(
            labels(&ticks(0.55, 0.95, 4), true),
            ["60%", "70%", "80%", "90%"]
        );
        assert_eq!(
            labels(&integer_ticks(-0.1, 3.1), false),
            ["0", "1", "2", "3"]
        );
    }

    #[test]
    fn labels_have_no_negative_zero_and_use_exponents_only_at_extremes() {
        assert_eq!(tick_label(-1e-17, 0.1, false), "0");
        assert_eq!(tick_label(0.6000000000000001, 0.2, false), "0.6");
        assert_eq!(tick_label(2e-6, 1e-6, false), "2.0e-6");
        assert_eq!(tick_label(3e7, 1e7, false), "3.0e7");
        assert_eq!(tick_label(0.25, 0.05, true), "25%");
    }

    #[test]
    fn wrap_respects_the_width_and_keeps_every_word() {
        let text = "Share of held-out prompts where the trained model prefers the human answer";
        let lines = wrap(text, 20);
        assert!(lines.len() > 1 && lines.iter().all(|l| l.chars().count() <= 20));
        assert_eq!(lines.join(" "), text);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert!(wrap("   ", 10).is_empty());
    }
}

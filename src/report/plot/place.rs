//! Where a panel's legend and reference label go: the free corner or side, so they cover as
//! little of the data as the layout allows.

use std::fmt::Write;

use super::{B, COLORS, H, L, Panel, R, T, W, esc};

/// Rough width of `s` at `size` px in a sans-serif font (0.58 em a character).
pub(super) fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.58
}

/// A box: left, top, width, height.
pub(super) type Rect = (f64, f64, f64, f64);

/// Of the `candidates` (top-left corners of a `size` box), the one that covers the fewest drawn
/// points, never leaving the plot area or crossing a box in `avoid` if another can; the first
/// on a tie, so callers list their preferred place first.
pub(super) fn least_covered(
    drawn: &[(f64, f64)],
    candidates: &[(f64, f64)],
    (w, h): (f64, f64),
    avoid: &[Rect],
) -> (f64, f64) {
    let cost = |&(cx, cy): &(f64, f64)| {
        let inside = cx >= L && cx + w <= W - R && cy >= T && cy + h <= H - B;
        let crosses = avoid
            .iter()
            .any(|&(ax, ay, aw, ah)| cx < ax + aw && ax < cx + w && cy < ay + ah && ay < cy + h);
        let covered = drawn
            .iter()
            .filter(|&&(x, y)| x >= cx && x <= cx + w && y >= cy && y <= cy + h)
            .count();
        covered + 10_000 * usize::from(!inside || crosses)
    };
    candidates
        .iter()
        .copied()
        .min_by_key(cost)
        .unwrap_or((L, T))
}

/// Screen points along a polyline, a few per segment, so a legend box over a sparse curve's
/// segment counts as covering it.
pub(super) fn along(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = pts.to_vec();
    for w in pts.windows(2) {
        let ((ax, ay), (bx, by)) = (w[0], w[1]);
        v.extend((1..8).map(|i| {
            let f = i as f64 / 8.0;
            (ax + (bx - ax) * f, ay + (by - ay) * f)
        }));
    }
    v
}

/// The legend in the plot-area corner that covers the fewest drawn points (top-left on a tie),
/// on a semi-opaque white box so the lines under it stay visible but do not garble the names.
pub(super) fn legend(p: &Panel, drawn: &[(f64, f64)], out: &mut String) -> Option<Rect> {
    if p.series.is_empty() {
        return None;
    }
    let widest = p
        .series
        .iter()
        .map(|s| text_width(&s.name, 10.0))
        .fold(0.0, f64::max);
    // The swatch and margins take 30 px besides the names.
    let (bw, bh) = (30.0 + widest, 6.0 + 13.0 * p.series.len() as f64);
    let (left, right, top, bottom) = (L + 6.0, W - R - 6.0 - bw, T + 4.0, H - B - 6.0 - bh);
    let corners = [(left, top), (right, top), (left, bottom), (right, bottom)];
    let (lx, ly) = least_covered(drawn, &corners, (bw, bh), &[]);
    let _ = write!(
        out,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="{bw:.1}" height="{bh:.1}" rx="3" fill="white" fill-opacity="0.85" stroke="#ddd"/>"##
    );
    for (k, s) in p.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let y = ly + 3.0 + 13.0 * k as f64;
        if !s.band.is_empty() {
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="14" height="9" fill="{color}" fill-opacity="0.18"/>"##,
                lx + 6.0,
                y + 2.0
            );
        }
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="14" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"##,
            lx + 6.0,
            y + 5.0,
            lx + 24.0,
            y + 10.0,
            esc(&s.name)
        );
    }
    Some((lx, ly, bw, bh))
}

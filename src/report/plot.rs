//! Plots as plain SVG: small multiples of line charts (one panel per metric), written without a
//! plotting dependency so the report renders in any browser and the crate builds fast everywhere.
//! A panel can carry shaded bands (e.g. an interval over seeds), a dashed reference line (e.g.
//! chance) and a plain-words caption, so the report explains itself to a reader new to SPIN.
//! `report_for_run` draws a `wgspin spin` output folder: loss, reward margins and reward
//! accuracy per training step across iterations, and held-out metrics per iteration.

mod axis;
mod place;
mod run;

use std::fmt::Write;

use axis::{Ticks, integer_ticks, tick_label, ticks, wrap};
use place::{along, least_covered, legend, text_width};
pub(crate) use run::read_jsonl;
pub use run::{report_for_run, run_panels};

/// One named line: points (x, y), optionally with a shaded band around it.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// (x, low, high), e.g. a 95% interval over seeds, drawn as a translucent area under the
    /// line; empty draws none.
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A plain line without a band.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            band: vec![],
        }
    }

    /// The same line with a shaded band of (x, low, high).
    pub fn with_band(mut self, band: Vec<(f64, f64, f64)>) -> Self {
        self.band = band;
        self
    }
}

/// A chart panel.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
    /// One or two plain sentences under the chart saying what it shows; empty draws none.
    pub caption: String,
    /// A dashed horizontal line at this y with its label, e.g. (0.5, "chance (50%)").
    pub reference_y: Option<(f64, String)>,
    /// Y tick labels as percentages of 1.0 (0.25 → "25%").
    pub y_percent: bool,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
/// Panel width and the height of its chart part (a caption adds lines below).
const W: f64 = 420.0;
const H: f64 = 260.0;
/// Plot-area margins inside a panel: left, right, top, bottom.
const L: f64 = 56.0;
const R: f64 = 12.0;
const T: f64 = 28.0;
const B: f64 = 40.0;
/// Characters per caption line at font-size 11 in a 420-wide panel: 64 still fits with a wide
/// sans-serif (DejaVu Sans, what rsvg and many Linux browsers pick), 70 overflows there.
const CAPTION_CHARS: usize = 64;
const CAPTION_LINE: f64 = 14.0;
/// Series with at most this many points get a marker per point: a 4-point curve is otherwise
/// three segments whose measured points cannot be told from the bends.
const MAX_MARKED: usize = 12;

/// Text for SVG element content (titles, names and captions may come from a run's data).
fn esc(s: &str) -> String {
    super::html::escape(s)
}

fn finite(&(x, y): &(f64, f64)) -> bool {
    x.is_finite() && y.is_finite()
}

/// Height of a panel: the chart plus its wrapped caption.
fn panel_height(p: &Panel) -> f64 {
    match wrap(&p.caption, CAPTION_CHARS).len() {
        0 => H,
        n => H + n as f64 * CAPTION_LINE + 8.0,
    }
}

/// Band corners in drawing order: along the top edge, then back along the bottom edge.
fn band_outline(band: &[(f64, f64, f64)]) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64, f64)> = band
        .iter()
        .copied()
        .filter(|(x, lo, hi)| x.is_finite() && lo.is_finite() && hi.is_finite())
        .collect();
    b.sort_by(|a, c| a.0.total_cmp(&c.0));
    let top = b.iter().map(|&(x, _, hi)| (x, hi));
    let bottom = b.iter().rev().map(|&(x, lo, _)| (x, lo));
    top.chain(bottom).collect()
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)))
}

/// Draws `p` at (ox, oy) in a frame `height` tall: its row's height, so frames in a row line up.
fn panel_svg(p: &Panel, ox: f64, oy: f64, height: f64, out: &mut String) {
    let _ = write!(
        out,
        r##"<g transform="translate({ox},{oy})"><rect width="{W}" height="{height}" fill="white" stroke="#ccc"/><text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"##,
        W / 2.0,
        esc(&p.title)
    );
    for (i, line) in wrap(&p.caption, CAPTION_CHARS).iter().enumerate() {
        let _ = write!(
            out,
            r##"<text x="10" y="{}" font-size="11" fill="#555">{}</text>"##,
            H + 12.0 + CAPTION_LINE * i as f64,
            esc(line)
        );
    }
    let bands: Vec<Vec<(f64, f64)>> = p.series.iter().map(|s| band_outline(&s.band)).collect();
    let data: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .chain(bands.iter().flatten().copied())
        .filter(finite)
        .collect();
    if data.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#888">no data</text></g>"##,
            W / 2.0,
            H / 2.0
        );
        return;
    }
    let reference = p.reference_y.as_ref().filter(|(y, _)| y.is_finite());
    let frame = Frame::fit(&data, reference.map(|r| r.0));
    frame.axes_svg(p, out);
    if let Some((y, _)) = reference {
        // Under the data; its label comes after the lines, where it covers the fewest of them.
        let _ = write!(
            out,
            r##"<line class="reference" x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#888" stroke-dasharray="5 4"/>"##,
            W - R,
            y = frame.sy(*y)
        );
    }
    let drawn = frame.series_svg(p, &bands, out);
    let legend_box = legend(p, &drawn, out);
    if let Some((y, label)) = reference {
        let (w, h, y) = (text_width(label, 10.0), 11.0, frame.sy(*y));
        let (left, right) = (L + 4.0, W - R - 4.0 - w);
        let candidates = [
            (right, y - 14.0),
            (right, y + 3.0),
            (left, y - 14.0),
            (left, y + 3.0),
        ];
        let avoid = legend_box.into_iter().collect::<Vec<_>>();
        let (lx, ly) = least_covered(&drawn, &candidates, (w, h), &avoid);
        let _ = write!(
            out,
            r##"<text x="{lx:.1}" y="{:.1}" font-size="10" fill="#666" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"##,
            ly + 9.0,
            esc(label)
        );
    }
    out.push_str("</g>");
}

/// A panel's data range, padded, and its map to the plot area's pixels.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// Integer x ticks (iterations, epochs) where the x range is short and whole.
    integer_x: bool,
}

impl Frame {
    /// The range of `data` (and the reference line's `y`), widened where it is flat.
    fn fit(data: &[(f64, f64)], reference: Option<f64>) -> Self {
        let (mut x0, mut x1) = range(data.iter().map(|p| p.0));
        let (mut y0, mut y1) = range(data.iter().map(|p| p.1).chain(reference));
        let integer_x = x1 - x0 <= 20.0 && data.iter().all(|p| p.0.fract() == 0.0);
        if x1 - x0 < 1e-12 {
            x0 -= 1.0;
            x1 += 1.0;
        }
        if y1 - y0 < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        // Padding keeps end markers off the axes and the extreme points off the frame.
        let (px, py) = ((x1 - x0) * 0.03, (y1 - y0) * 0.05);
        Self {
            x0: x0 - px,
            x1: x1 + px,
            y0: y0 - py,
            y1: y1 + py,
            integer_x,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        L + (x - self.x0) / (self.x1 - self.x0) * (W - L - R)
    }

    fn sy(&self, y: f64) -> f64 {
        T + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * (H - T - B)
    }

    /// Grid lines and tick labels, the two axes and the x label.
    fn axes_svg(&self, p: &Panel, out: &mut String) {
        let xt: Ticks = if self.integer_x {
            integer_ticks(self.x0, self.x1)
        } else {
            ticks(self.x0, self.x1, 5)
        };
        let yt = ticks(self.y0, self.y1, 5);
        for &v in &yt.values {
            let _ = write!(
                out,
                r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"##,
                W - R,
                L - 4.0,
                self.sy(v) + 3.0,
                tick_label(v, yt.step, p.y_percent),
                y = self.sy(v)
            );
        }
        for &v in &xt.values {
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"##,
                H - B,
                H - B + 4.0,
                H - B + 14.0,
                tick_label(v, xt.step, false),
                x = self.sx(v)
            );
        }
        let _ = write!(
            out,
            r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/><text x="{}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            H - B,
            W - R,
            H - B,
            H - B,
            (L + W - R) / 2.0,
            H - 6.0,
            esc(&p.x_label)
        );
    }

    /// The finite points of `pts` in pixels.
    fn to_screen(&self, pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
        pts.iter()
            .filter(|p| finite(p))
            .map(|&(x, y)| (self.sx(x), self.sy(y)))
            .collect()
    }

    /// The bands, then the lines and their markers; returns the pixels drawn over, which the
    /// legend and the reference label avoid.
    fn series_svg(
        &self,
        p: &Panel,
        bands: &[Vec<(f64, f64)>],
        out: &mut String,
    ) -> Vec<(f64, f64)> {
        let fmt = |pts: &[(f64, f64)]| -> String {
            pts.iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        // Every band goes under every line, so no shading hides another series' line.
        for (k, band) in bands.iter().enumerate() {
            if !band.is_empty() {
                let _ = write!(
                    out,
                    r##"<polygon fill="{}" fill-opacity="0.18" stroke="none" points="{}"/>"##,
                    COLORS[k % COLORS.len()],
                    fmt(&self.to_screen(band))
                );
            }
        }
        let mut drawn = vec![];
        for (k, s) in p.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts = self.to_screen(&s.points);
            let _ = write!(
                out,
                r##"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"##,
                fmt(&pts)
            );
            if pts.len() <= MAX_MARKED {
                for (x, y) in &pts {
                    let _ = write!(
                        out,
                        r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}" stroke="white" stroke-width="0.8"/>"##
                    );
                }
            }
            drawn.extend(along(&pts));
            drawn.extend(bands[k].iter().map(|&(x, y)| (self.sx(x), self.sy(y))));
        }
        drawn
    }
}

/// An SVG document of `panels`, two per row; each row is as tall as its tallest panel.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let cols = 2;
    let rows: Vec<f64> = panels
        .chunks(cols)
        .map(|row| row.iter().map(panel_height).fold(H, f64::max))
        .collect();
    let w = cols as f64 * (W + 10.0) + 10.0;
    let h = rows.iter().map(|rh| rh + 10.0).sum::<f64>().max(H + 10.0) + 44.0;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif"><rect width="{w}" height="{h}" fill="#fafafa"/><text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"##,
        w / 2.0,
        esc(title)
    );
    let mut y = 40.0;
    for (row, rh) in panels.chunks(cols).zip(&rows) {
        for (c, p) in row.iter().enumerate() {
            panel_svg(p, 10.0 + c as f64 * (W + 10.0), y, *rh, &mut out);
        }
        y += rh + 10.0;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening and closing tags pair up, every `&` starts an entity and nothing is left open:
    /// enough to catch an unescaped title or a `<g>` left unclosed without an XML dependency.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<&str> = vec![];
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            assert!(
                !rest[..i].contains('>'),
                "stray '>' before {:?}",
                &rest[i..]
            );
            let j = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..j];
            assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(closing.trim()), "mismatched </{closing}>");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap_or(""));
            }
            rest = &rest[j + 1..];
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        for (i, _) in svg.match_indices('&') {
            let entity = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"];
            assert!(
                entity.iter().any(|e| svg[i..].starts_with(e)),
                "bare & at byte {i}"
            );
        }
    }

    /// The attribute text of every `<tag …>` in `svg`, with a leading space.
    fn tags<'a>(svg: &'a str, tag: &str) -> Vec<&'a str> {
        svg.split(&format!("<{tag}"))
            .skip(1)
            .filter(|t| t.starts_with(' '))
            .filter_map(|t| Some(&t[..t.find('>')?]))
            .collect()
    }

    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let v = &tag[tag.find(&format!(" {name}=\""))? + name.len() + 3..];
        Some(&v[..v.find('"')?])
    }

    /// Values of `name="…"` in every `<tag …>` of `svg` that has it.
    fn attrs<'a>(svg: &'a str, tag: &str, name: &str) -> Vec<&'a str> {
        tags(svg, tag)
            .into_iter()
            .filter_map(|t| attr(t, name))
            .collect()
    }

    /// Contents of every `<text …>…</text>`.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text ")
            .skip(1)
            .filter_map(|t| {
                let t = &t[t.find('>')? + 1..];
                Some(&t[..t.find("</text>")?])
            })
            .collect()
    }

    fn points(s: &str) -> Vec<(f64, f64)> {
        s.split_whitespace()
            .filter_map(|p| {
                let (x, y) = p.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect()
    }

    fn panel(series: Vec<Series>) -> Panel {
        Panel {
            title: "t".into(),
            x_label: "x".into(),
            series,
            ..Panel::default()
        }
    }

    fn rounds(ys: &[f64]) -> Vec<(f64, f64)> {
        ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect()
    }

    #[test]
    fn band_is_a_polygon_inside_the_plot_area() {
        let band = vec![(0.0, 0.0, 0.7), (1.0, 0.3, 0.9), (2.0, 0.4, 1.2)];
        let svg = svg(
            "bands",
            &[panel(vec![
                Series::line("spin", rounds(&[0.4, 0.5, 0.6])).with_band(band),
                Series::line("sft", rounds(&[0.45, 0.5, 0.55])),
            ])],
        );
        assert_well_formed(&svg);
        let polys = attrs(&svg, "polygon", "points");
        assert_eq!(polys.len(), 1, "only the series with a band gets one");
        let corners = points(polys[0]);
        assert_eq!(corners.len(), 6, "top and bottom edge of 3 band points");
        // The y-range covers the band, not only the line.
        assert!(corners.iter().all(|&(_, y)| (T..=H - B).contains(&y)));
        assert!(svg.contains(r#"fill-opacity="0.18""#));
        assert_eq!(
            attrs(&svg, "circle", "cx").len(),
            6,
            "a marker per point of short curves"
        );
    }

    #[test]
    fn integer_x_ticks_sit_on_the_integers() {
        let svg = svg(
            "ints",
            &[panel(vec![Series::line(
                "a",
                rounds(&[0.1, 0.4, 0.2, 0.3]),
            )])],
        );
        // The y values are fractional, so every integer label is an x tick.
        let integers: Vec<&str> = texts(&svg)
            .into_iter()
            .filter(|t| t.parse::<i64>().is_ok())
            .collect();
        assert_eq!(integers, ["0", "1", "2", "3"]);
        assert!(!svg.contains("0.750") && !svg.contains("2.250"));
        // Fractional x keeps round-step labels: 0, 0.5, 1, … never 0.750.
        let fractional = Series::line("a", vec![(0.0, 1.0), (0.5, 2.0), (3.0, 1.0)]);
        let svg = super::svg("x", &[panel(vec![fractional])]);
        assert!(!svg.contains(">0.750<") && texts(&svg).contains(&"0.5"));
    }

    #[test]
    fn long_caption_wraps_and_grows_the_row() {
        let caption = "Share of held-out prompts where the trained model prefers the human \
                       answer over its own generation; SPIN has converged when this nears 50%, \
                       because the model can no longer tell the two apart & <stops>."
            .to_string();
        let captioned = Panel {
            caption: caption.clone(),
            ..panel(vec![Series::line("a", rounds(&[0.9, 0.7, 0.55]))])
        };
        let svg = svg(
            "captions",
            &[captioned.clone(), panel(vec![]), panel(vec![])],
        );
        assert_well_formed(&svg);
        let lines: Vec<&str> = texts(&svg)
            .into_iter()
            .filter(|t| {
                caption.contains(
                    &t.replace("&amp;", "&")
                        .replace("&lt;", "<")
                        .replace("&gt;", ">"),
                )
            })
            .filter(|t| t.len() > 10)
            .collect();
        assert!(lines.len() >= 3, "wrapped into {lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= CAPTION_CHARS + 8));
        // The second row starts below the captioned panel, not at the uncaptioned height.
        let second_row = format!("translate(10,{})", 40.0 + panel_height(&captioned) + 10.0);
        assert!(
            panel_height(&captioned) > H && svg.contains(&second_row),
            "{second_row}"
        );
    }

    #[test]
    fn reference_line_is_inside_the_plot_area_and_escaped() {
        let p = Panel {
            title: "accuracy <held-out> & more".into(),
            reference_y: Some((0.5, "chance (50%)".into())),
            y_percent: true,
            ..panel(vec![Series::line("a", rounds(&[0.6, 0.9, 0.8, 0.7]))])
        };
        let svg = svg("ref", &[p]);
        assert_well_formed(&svg);
        assert!(svg.contains("accuracy &lt;held-out&gt; &amp; more"));
        let y: f64 = tags(&svg, "line")
            .into_iter()
            .find(|t| attr(t, "class") == Some("reference"))
            .and_then(|t| attr(t, "y1")?.parse().ok())
            .expect("a reference line");
        assert!(
            y > T && y < H - B,
            "reference at {y} outside [{T}, {}]",
            H - B
        );
        let labels = texts(&svg);
        assert!(
            labels.contains(&"chance (50%)") && labels.contains(&"50%"),
            "{labels:?}"
        );
        assert!(labels.contains(&"90%") && !labels.iter().any(|l| l.contains("0.9")));
    }

    #[test]
    fn run_folder_panels_explain_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let it = dir.path().join("iter-0");
        std::fs::create_dir_all(&it).unwrap();
        std::fs::write(
            it.join("metrics.jsonl"),
            "{\"step\":1,\"loss\":0.69,\"rewards/margins\":0.0,\"rewards/accuracies\":0.5}\n\
             {\"step\":2,\"loss\":0.5,\"rewards/margins\":0.4,\"rewards/accuracies\":0.75}\n",
        )
        .unwrap();
        std::fs::write(it.join("eval.json"), r#"{"reward_accuracy":0.8}"#).unwrap();
        let panels = run_panels(dir.path()).unwrap();
        assert_eq!(panels.len(), 4);
        assert!(panels.iter().all(|p| !p.caption.is_empty()));
        let held_out = &panels[3];
        assert!(held_out.y_percent && held_out.reference_y.as_ref().map(|r| r.0) == Some(0.5));
        let path = report_for_run(dir.path()).unwrap();
        assert_well_formed(&std::fs::read_to_string(path).unwrap());
    }
}

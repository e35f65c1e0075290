//! `report.html`: one self-contained page per run (inline CSS, inline SVG charts, no script, font
//! or image from anywhere), readable with JavaScript off, so a teacher can project it from a
//! laptop without a network. While the run goes on the page says which stage is running and
//! reloads itself every few seconds; the last rewrite, when the run ends, stops the reloading.
//! Everything that comes from data or models is escaped: answers are model output.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::error::Result;

/// The page's file name in a run folder.
pub const PAGE_FILE: &str = "report.html";

/// Seconds between reloads while the run is live.
const RELOAD_SECONDS: u32 = 5;

/// Where the run is.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Still running: the stage, and how far it is (e.g. "iteration 2 of 3").
    Running { stage: String, progress: String },
    /// Ended (the page no longer reloads).
    Done,
    /// Ended with an error, in the run's words.
    Failed(String),
}

/// One answer pair of the game: the human answer and the opponent's, and what θ_{t+1} made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub id: String,
    pub prompt: String,
    pub human: String,
    pub generated: String,
    /// θ_{t+1}'s reward margin on the pair (real − generated, β-scaled), if it was scored.
    pub margin: Option<f64>,
    /// Picked because its margin moved most since the previous iteration (not by the seed).
    pub moved: bool,
}

impl Round {
    /// The opponent wrote exactly the human answer (the demo's exact match), as training counts
    /// ties (`SftExample::is_tie`).
    pub fn tie(&self) -> bool {
        self.human == self.generated
    }
}

/// One iteration's part of the game.
#[derive(Debug, Clone, PartialEq)]
pub struct GameIteration {
    /// t: θ_t generated, θ_{t+1} was trained on it.
    pub iteration: usize,
    /// Held-out reward accuracy of θ_{t+1} against θ_t, when evaluated.
    pub reward_accuracy: Option<f64>,
    pub rounds: Vec<Round>,
}

/// A table with its caption and, beside it, what it shows in plain words (may be empty).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub caption: String,
    pub explain: String,
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// What a page shows, top to bottom: status, verdict, the glance, the game, the tables, the
/// charts.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub title: String,
    pub status: Option<Status>,
    /// The run at a glance: (label, value), e.g. ("model", path), ("command", …).
    pub glance: Vec<(String, String)>,
    /// A plain-words conclusion (the demo's verdict), shown first.
    pub verdict: Option<String>,
    /// What the glance section means (e.g. the demo's stages), beside it.
    pub glance_explain: String,
    pub tables: Vec<Table>,
    /// The charts (an SVG document from `report::plot::svg`) and what they explain.
    pub charts: Option<(String, String)>,
    /// The game, per iteration, and what it explains.
    pub game: Vec<GameIteration>,
    pub game_explain: String,
}

/// Text made safe for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Words longer than this product are not diffed (an LCS table of that many cells is the cap).
const DIFF_CELLS: usize = 250_000;

/// `text` escaped, with the words that `other` does not share (by a longest common subsequence
/// of whitespace-separated words) marked, so a reader sees where two answers part. Two one-word
/// answers (`nedrag` against `nedarg`) are compared letter by letter instead.
fn marked(text: &str, other: &str) -> String {
    let one_word = |s: &str| !s.trim().contains(char::is_whitespace);
    let letters = one_word(text) && one_word(other);
    let (a, b) = (pieces(text, letters), pieces(other, letters));
    if a.len().saturating_mul(b.len()) > DIFF_CELLS {
        return escape(text);
    }
    let word = |w: &str| w.trim_end().to_string();
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if word(a[i]) == word(b[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() {
        if j < b.len() && word(a[i]) == word(b[j]) {
            out.push_str(&escape(a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && lcs[i][j + 1] >= lcs[i + 1][j] {
            j += 1;
        } else {
            let w = a[i];
            let core = w.trim_end();
            let _ = write!(out, "<mark>{}</mark>{}", escape(core), &w[core.len()..]);
            i += 1;
        }
    }
    // Neighbouring marked letters read as one change.
    out.replace("</mark><mark>", "")
}

/// `s` as letters, or as words each with the white space after it.
fn pieces(s: &str, letters: bool) -> Vec<&str> {
    if letters {
        s.char_indices()
            .map(|(i, c)| &s[i..i + c.len_utf8()])
            .collect()
    } else {
        s.split_inclusive(char::is_whitespace).collect()
    }
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1180px;\
padding:16px 24px;color:#1d1d1f;background:#fff;line-height:1.4}\
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}\
.status{padding:8px 12px;border-radius:6px;background:#eef4ff;border:1px solid #b9d0f7}\
.status.done{background:#eefaf0;border-color:#b6dfbf}.status.failed{background:#fdeeee;border-color:#f0b4b4}\
.verdict{font-size:1.15em;padding:10px 14px;background:#fff8e6;border-left:4px solid #f0b400}\
.explain{color:#555;font-size:.95em;max-width:60em}\
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ddd;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f4f4f6}\
table.glance th{width:9em}code{font-size:.92em;word-break:break-all}\
.chart svg{max-width:100%;height:auto}\
.game td{max-width:24em;white-space:pre-wrap;word-break:break-word}\
mark{background:#ffe08a;padding:0 1px}.tie{color:#17663a;font-weight:600}\
.margin.pos{color:#17663a}.margin.neg{color:#a11}.moved{font-size:.85em;color:#666}\
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}";

/// The page as one HTML document.
pub fn render(page: &Page) -> String {
    let mut h = String::new();
    let live = matches!(page.status, Some(Status::Running { .. }));
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if live {
        let _ = write!(
            h,
            "<meta http-equiv=\"refresh\" content=\"{RELOAD_SECONDS}\">"
        );
    }
    let _ = write!(
        h,
        "<title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>",
        escape(&page.title),
        escape(&page.title)
    );
    match &page.status {
        Some(Status::Running { stage, progress }) => {
            let _ = write!(
                h,
                "<p class=\"status\" id=\"status\">Running: <b>{}</b> {} \
                 <small>(this page reloads every {RELOAD_SECONDS} s until the run ends)</small></p>",
                escape(stage),
                escape(progress)
            );
        }
        Some(Status::Done) => {
            h.push_str("<p class=\"status done\" id=\"status\">The run has ended.</p>")
        }
        Some(Status::Failed(why)) => {
            let _ = write!(
                h,
                "<p class=\"status failed\" id=\"status\">The run stopped: {}</p>",
                escape(why)
            );
        }
        None => {}
    }
    if let Some(v) = &page.verdict {
        let _ = write!(h, "<p class=\"verdict\">{}</p>", escape(v));
    }
    if !page.glance.is_empty() {
        h.push_str("<h2 id=\"glance\">The run at a glance</h2>");
        explain(&mut h, &page.glance_explain);
        h.push_str("<table class=\"glance\">");
        for (k, v) in &page.glance {
            let _ = write!(
                h,
                "<tr><th>{}</th><td><code>{}</code></td></tr>",
                escape(k),
                escape(v)
            );
        }
        h.push_str("</table>");
    }
    if !page.game.is_empty() {
        game(&mut h, page);
    }
    for t in &page.tables {
        let _ = write!(h, "<h2>{}</h2>", escape(&t.caption));
        explain(&mut h, &t.explain);
        h.push_str("<table><tr>");
        for c in &t.head {
            let _ = write!(h, "<th>{}</th>", escape(c));
        }
        h.push_str("</tr>");
        for r in &t.rows {
            h.push_str("<tr>");
            for c in r {
                let _ = write!(h, "<td>{}</td>", escape(c));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    if let Some((svg, text)) = &page.charts {
        h.push_str("<h2 id=\"curves\">The curves</h2>");
        explain(&mut h, text);
        let _ = write!(h, "<div class=\"chart\">{}</div>", inline_svg(svg));
    }
    h.push_str("</body></html>\n");
    h
}

/// A section's plain-words explanation, paragraph by paragraph (blank lines part them).
fn explain(h: &mut String, text: &str) {
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let _ = write!(h, "<p class=\"explain\">{}</p>", escape(para));
    }
}

/// The game's section: per iteration (the latest open), the sampled prompts with both answers.
fn game(h: &mut String, page: &Page) {
    h.push_str("<h2 id=\"game\">The game: human answers against the model's own</h2>");
    explain(h, &page.game_explain);
    let last = page.game.len() - 1;
    for (k, it) in page.game.iter().enumerate() {
        let acc = it
            .reward_accuracy
            .map(|a| {
                format!(
                    ": θ{} prefers the human answer on {:.0}% of held-out prompts",
                    it.iteration + 1,
                    100.0 * a
                )
            })
            .unwrap_or_default();
        let _ = write!(
            h,
            "<details{}><summary>Iteration {}{}</summary><table class=\"game\"><tr><th>prompt</th>\
             <th>human answer</th><th>θ{}'s answer</th><th>margin θ{} gives the pair</th></tr>",
            if k == last { " open" } else { "" },
            it.iteration,
            escape(&acc),
            it.iteration,
            it.iteration + 1
        );
        for r in &it.rounds {
            let (human, generated) = if r.tie() {
                (escape(&r.human), escape(&r.generated))
            } else {
                (
                    marked(&r.human, &r.generated),
                    marked(&r.generated, &r.human),
                )
            };
            let tie = if r.tie() {
                "<br><span class=\"tie\">tie: the same answer (exact match)</span>"
            } else {
                ""
            };
            let margin = match r.margin {
                Some(m) => {
                    let (class, words) = if m > 0.0 {
                        ("pos", "tells the human answer apart")
                    } else if m < 0.0 {
                        ("neg", "prefers its own answer")
                    } else {
                        ("zero", "no preference")
                    };
                    format!(
                        "<span class=\"margin {class}\">{m:+.3}</span><br><small>{words}</small>"
                    )
                }
                None => "<small>not scored yet</small>".into(),
            };
            let moved = if r.moved {
                "<br><span class=\"moved\">(moved most since the last iteration)</span>"
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td>{}{moved}</td><td>{human}</td><td>{generated}{tie}</td><td>{margin}</td></tr>",
                escape(&r.prompt)
            );
        }
        h.push_str("</table></details>");
    }
}

/// An SVG document as an element of the page: inline SVG needs no namespace declaration in HTML,
/// and leaving it out keeps the page free of any URL.
fn inline_svg(svg: &str) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// Writes `page` to `dir/report.html` atomically (a reader never sees half a page); returns the
/// path.
pub fn write(dir: &Path, page: &Page) -> Result<PathBuf> {
    let path = dir.join(PAGE_FILE);
    crate::fsutil::write_atomic(&path, render(page).as_bytes())?;
    Ok(path)
}

/// `path` as a `file://` URL for a browser's address bar (what `wgspin demo` prints).
pub fn file_url(path: &Path) -> String {
    url_of(&crate::outputs::resolve(path).to_string_lossy())
}

/// The `file://` URL of an absolute path written as this OS writes it.
fn url_of(absolute: &str) -> String {
    let text = absolute.replace('\\', "/");
    // Windows' verbatim prefixes are not part of a URL: `\\?\C:\…` is a drive path, and
    // `\\?\UNC\server\share\…` (like `\\server\share\…`) names the server as the URL's host.
    let (host, text) = if let Some(unc) = text.strip_prefix("//?/UNC/") {
        unc.split_once('/').unwrap_or((unc, ""))
    } else if let Some(drive) = text.strip_prefix("//?/") {
        ("", drive)
    } else if let Some(unc) = text.strip_prefix("//") {
        unc.split_once('/').unwrap_or((unc, ""))
    } else {
        ("", text.as_str())
    };
    let mut url = format!("file://{host}");
    if !text.starts_with('/') {
        url.push('/');
    }
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' | b':' => {
                url.push(b as char)
            }
            _ => {
                let _ = write!(url, "%{b:02X}");
            }
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(answer: &str) -> Page {
        Page {
            title: "t <1>".into(),
            status: Some(Status::Running {
                stage: "generate".into(),
                progress: "iteration 1 of 3".into(),
            }),
            glance: vec![("model".into(), "m & co".into())],
            verdict: Some("no significant difference".into()),
            charts: Some((
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\"></svg>".into(),
                "curves".into(),
            )),
            game: vec![GameIteration {
                iteration: 0,
                reward_accuracy: Some(0.75),
                rounds: vec![
                    Round {
                        id: "a".into(),
                        prompt: "reverse: garden".into(),
                        human: "nedrag".into(),
                        generated: answer.into(),
                        margin: Some(0.25),
                        moved: false,
                    },
                    Round {
                        id: "b".into(),
                        prompt: "p".into(),
                        human: "same".into(),
                        generated: "same".into(),
                        margin: Some(-0.1),
                        moved: true,
                    },
                ],
            }],
            game_explain: "what the game is".into(),
            ..Page::default()
        }
    }

    #[test]
    fn model_output_is_shown_as_text() {
        let html = render(&page_with("<script>alert(1)</script> & \"x\""));
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("t &lt;1&gt;") && html.contains("m &amp; co"));
    }

    #[test]
    fn the_page_reaches_for_nothing_outside_itself() {
        let html = render(&page_with("nedarg"));
        for needle in [
            "://", "src=", "href=", "url(", "@import", "<link", "<script",
        ] {
            assert!(!html.contains(needle), "{needle} in the page");
        }
    }

    #[test]
    fn a_live_page_reloads_and_an_ended_one_does_not() {
        let mut page = page_with("x");
        assert!(render(&page).contains("http-equiv=\"refresh\""));
        page.status = Some(Status::Done);
        let html = render(&page);
        assert!(!html.contains("refresh") && html.contains("has ended"));
    }

    #[test]
    fn differing_words_are_marked_and_ties_named() {
        let html = render(&page_with("nedarg"));
        // One-word answers differ letter by letter: "nedrag" against "nedarg".
        // (The LCS keeps "nedrg" or "nedag": one letter of each marked.)
        let one_letter = ["nedr<mark>a</mark>g", "ned<mark>r</mark>ag"];
        assert!(one_letter.iter().any(|m| html.contains(m)), "{html}");
        assert!(html.contains("tie: the same answer"));
        assert_eq!(
            marked("the cat sat", "the dog sat"),
            "the <mark>cat</mark> sat"
        );
        assert_eq!(marked("a b", "a b"), "a b");
    }

    #[test]
    fn file_urls_escape_what_a_url_cannot_hold() {
        let url = file_url(Path::new("/tmp/a b/report.html"));
        assert!(
            url.starts_with("file:///") && url.ends_with("/a%20b/report.html"),
            "{url}"
        );
        assert_eq!(url_of(r"\\?\C:\a b\r.html"), "file:///C:/a%20b/r.html");
        assert_eq!(
            url_of(r"\\?\UNC\srv\share\r.html"),
            "file://srv/share/r.html"
        );
        assert_eq!(url_of(r"\\srv\share\r.html"), "file://srv/share/r.html");
    }
}

//! `report.html` in a real browser: the page of a `spin` run, rendered by headless Chromium
//! (Debian's `chromium`, which `.ci/run` installs), is not blank, shows held-out prompts with
//! the human and the generated answers, and keeps model output that looks like markup as text.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use wgspin::report::html::escape;

/// The browser, or `None` (a skip with a reason; a failure in CI, where `.ci/run` installs it).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    assert!(
        !is_ci(),
        "no chromium but this is a CI run: .ci/run installs it"
    );
    eprintln!("skipped: no chromium on PATH (apt-get install chromium)");
    None
}

/// Headless Chromium on `page` with `extra` flags; its stdout.
fn browse(browser: &Path, profile: &Path, page: &Path, extra: &[&str]) -> String {
    let url = wgspin::report::html::file_url(page);
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sixteen SFT rows; every fourth human answer is markup, as a model's answer may be.
fn write_data(path: &Path) {
    let mut text = String::new();
    for i in 0..16 {
        let answer = if i % 4 == 0 {
            format!("<script>document.title='pwned {i}'</script> {i} and {i}")
        } else {
            format!("{i} plus {i} is {}.", 2 * i)
        };
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": format!("What is {i} plus {i}?")},
            {"role": "assistant", "content": answer},
        ]});
        text += &row.to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// (prompt, human, generated) of the held-out pairs of iteration `t`.
fn held_out(out: &Path, t: usize) -> Vec<(String, String, String)> {
    let ds = wgspin::data::read_dataset(
        &out.join(format!("iter-{t}")).join("eval_generated.jsonl"),
        wgspin::data::DataFormat::Spin,
    )
    .unwrap();
    ds.examples
        .into_iter()
        .map(|e| (e.prompt, e.response, e.generated.unwrap()))
        .collect()
}

/// How many of `pairs` iteration `t`'s table on the page shows whole: a row that starts with the
/// prompt and holds both answers (the page marks differing words inside them; the text between
/// the marks is the answer's own).
fn rows_shown(html: &str, t: usize, pairs: &[(String, String, String)]) -> usize {
    let section = html
        .split(&format!("<summary>Iteration {t}"))
        .nth(1)
        .and_then(|s| s.split("</details>").next())
        .unwrap_or_default()
        .replace("<mark>", "")
        .replace("</mark>", "");
    let rows: Vec<&str> = section.split("<tr><td>").skip(1).collect();
    pairs
        .iter()
        .filter(|(p, h, g)| {
            rows.iter().any(|r| {
                r.starts_with(&escape(p))
                    && r.contains(&format!("<td>{}", escape(h)))
                    && r.contains(&format!("<td>{}", escape(g)))
            })
        })
        .count()
}

#[test]
fn a_spin_runs_page_shows_the_game_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    write_data(&data);
    let out = tmp.path().join("run");
    let flags = "--iterations 2 --lr 2e-3 --max-new-tokens 8 --eval-size 8 --stop-accuracy 0";
    let done = run_ok(job_args("spin", "tiny-llama-bf16", &data, &out, flags));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("report: file://"), "{stderr}");

    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("The run has ended") && !html.contains("http-equiv=\"refresh\""));
    for t in 0..2 {
        let pairs = held_out(&out, t);
        let shown = rows_shown(&html, t, &pairs);
        // Six sampled by the seed, and for t ≥ 1 up to three that moved most.
        assert!(
            shown >= 6,
            "iteration {t}: {shown} of {} held-out pairs on the page",
            pairs.len()
        );
    }
    assert!(html.contains("Iteration 0") && html.contains("Iteration 1"));
    assert!(!html.contains("://"), "the page points outside itself");

    let Some(browser) = chromium() else { return };
    let profile = tmp.path().join("profile");
    let dom = browse(&browser, &profile, &page, &["--dump-dom"]);
    assert!(dom.contains("The game"), "{dom}");
    assert!(
        !dom.contains("<script") && dom.contains("&lt;script&gt;document.title"),
        "an answer's markup became an element"
    );
    assert!(!dom.contains("pwned 0</title>"));

    let shot = tmp.path().join("shot.png");
    browse(
        &browser,
        &profile,
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600",
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let background = pixels[0];
    let drawn = pixels.iter().filter(|p| p[..3] != background[..3]).count();
    let share = drawn as f64 / pixels.len() as f64;
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    assert!(
        share > 0.02 && colours.len() > 16,
        "the screenshot looks blank: {:.2}% of pixels drawn, {} colours",
        100.0 * share,
        colours.len()
    );
}

/// While a run goes on the page says which stage is running, reloads itself, and is never seen
/// half-written; after the run ends (here: resumed after a kill) it stops reloading.
#[test]
fn the_page_is_live_while_the_run_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    write_data(&data);
    let out = tmp.path().join("run");
    let flags = "--iterations 3 --lr 2e-3 --max-new-tokens 8 --eval-size 8 --stop-accuracy 0";
    let args = job_args("spin", "tiny-llama-bf16", &data, &out, flags);
    let page = out.join("report.html");
    let mut seen = String::new();
    kill_when(
        &args,
        std::time::Duration::from_secs(300),
        "the page never showed iteration 1 running",
        || {
            let Ok(html) = std::fs::read_to_string(&page) else {
                return false;
            };
            assert!(html.ends_with("</html>\n"), "a half-written page was seen");
            seen = html;
            seen.contains("Running: <b>iteration 1:")
        },
    );
    assert!(
        seen.contains("http-equiv=\"refresh\""),
        "a live page reloads"
    );
    assert!(seen.contains("(iteration 2 of 3)"), "{seen}");
    assert!(
        seen.contains("Iteration 0"),
        "iteration 0's game is on the page already"
    );
    run_ok(args);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("The run has ended") && !html.contains("refresh"));
    assert!(html.contains("Iteration 2"));
}

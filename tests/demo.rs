//! The built-in demo in its reduced mode (what CI can afford): it completes on the CPU backend,
//! prints the stage table and, over two seeds, the paired comparison, and writes demo.json with
//! every stage, a report.svg with the curves and a report.html with the game; `wgspin plot`
//! draws a run folder.

mod common;

use common::wgspin;
use serde_json::Value;

#[test]
fn quick_demo_completes_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let st = wgspin()
        .args([
            "demo",
            "--quick",
            "--seeds",
            "2",
            // Small enough for a debug build: the task the model learns fastest, few epochs.
            "--task",
            "shift",
            "--train-examples",
            "48",
            "--sft-max-epochs",
            "6",
            "--explain",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{stderr}");
    assert!(stderr.contains("exact match"), "table printed: {stderr}");
    assert!(
        stderr.contains("What happens, stage by stage"),
        "--explain: {stderr}"
    );
    // Two seeds: SPIN − continued SFT paired by seed, with its interval and a verdict.
    assert!(
        stderr.contains("paired by seed") && stderr.contains("95% interval over 2 seeds"),
        "paired comparison printed: {stderr}"
    );
    let demo: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    let stages: Vec<&str> = demo["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    let one_seed = [
        "SFT (converged)",
        "SPIN iteration 1",
        "SPIN iteration 2",
        "continued SFT 1",
        "continued SFT 2",
    ];
    assert_eq!(stages, [one_seed, one_seed].concat());
    for r in demo["results"].as_array().unwrap() {
        let em = r["exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&em), "{r}");
        let val = r["validation_exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&val), "{r}");
        assert!(r["heldout_loglik_per_token"].as_f64().unwrap() < 0.0, "{r}");
    }
    // SFT ran to its stopping rule: the kept epoch is the best by validation exact match.
    let patience = demo["config"]["sft_patience"].as_u64().unwrap() as usize;
    let max_epochs = demo["config"]["sft_max_epochs"].as_u64().unwrap() as usize;
    for c in demo["sft_curves"].as_array().unwrap() {
        let epochs = c["epochs"].as_array().unwrap();
        let em: Vec<f64> = epochs
            .iter()
            .map(|e| e["validation_exact_match"].as_f64().unwrap())
            .collect();
        let best = c["best_epoch"].as_u64().unwrap() as usize;
        let top = em.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(em[best - 1], top, "kept epoch is a best one: {c}");
        // Either the epoch limit, or a plateau at the rate continued SFT uses.
        let last_lr = epochs.last().unwrap()["lr"].as_f64().unwrap();
        let spin_lr = demo["config"]["spin_lr"].as_f64().unwrap();
        assert!(
            epochs.len() == max_epochs
                || (epochs.len() >= best + patience && (last_lr - spin_lr).abs() < 1e-12),
            "stopped by the rule: {c}"
        );
    }
    assert_eq!(demo["sft_curves"].as_array().unwrap().len(), 2);
    // Only the kept epoch's weights stay on disk.
    let sft_dir = out.join("seed-1").join("sft");
    let kept = demo["sft_curves"][0]["best_epoch"].as_u64().unwrap();
    for entry in std::fs::read_dir(&sft_dir).unwrap() {
        let epoch = entry.unwrap().path();
        let is_kept = epoch.ends_with(format!("epoch-{kept}"));
        assert_eq!(
            epoch.join("checkpoint").exists(),
            is_kept,
            "{}",
            epoch.display()
        );
        assert!(epoch.join("metrics.jsonl").exists());
    }
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "report.svg has curves"
    );
    // Mean curves over the two seeds carry a ±1 std band, and rounds are integer ticks.
    assert!(svg.contains("<polygon"), "bands drawn");
    assert!(svg.contains("SFT to convergence") && svg.contains("chance (50%)"));
    assert!(
        !svg.contains(">0.750<") && !svg.contains(">1.500<"),
        "integer round ticks"
    );

    // report.html: printed at the start, ended (no longer reloading), the verdict in words, and
    // per SPIN iteration the held-out prompts with the human answer beside the model's own.
    assert!(stderr.contains("report: file://"), "{stderr}");
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("The run has ended") && !page.contains("refresh"));
    assert!(page.contains("After 2 rounds:"), "verdict on the page");
    assert!(page.contains("Iteration 0") && page.contains("Iteration 1"));
    let seed = page
        .split("Seed ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .to_string();
    let eval = out
        .join(format!("seed-{seed}"))
        .join("spin")
        .join("iter-1")
        .join("eval_generated.jsonl");
    let pairs = wgspin::data::read_dataset(&eval, wgspin::data::DataFormat::Spin).unwrap();
    // Whole rows of iteration 1's table: the prompt, then both answers (the page marks the
    // differing letters inside them; the text between the marks is the answer's own).
    let section = page
        .split("<summary>Iteration 1")
        .nth(1)
        .and_then(|s| s.split("</details>").next())
        .unwrap()
        .replace("<mark>", "")
        .replace("</mark>", "");
    let esc = wgspin::report::html::escape;
    let shown = pairs
        .examples
        .iter()
        .filter(|e| {
            let p = esc(&e.prompt);
            let h = format!("<td>{}", esc(&e.response));
            let g = format!("<td>{}", esc(e.generated.as_ref().unwrap()));
            section
                .split("<tr><td>")
                .any(|row| row.starts_with(&p) && row.contains(&h) && row.contains(&g))
        })
        .count();
    assert!(
        shown >= 6,
        "{shown} held-out pairs of seed {seed} on the page"
    );

    let spin_dir = out.join("seed-1").join("spin");
    let st = wgspin().arg("plot").arg(&spin_dir).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let svg = std::fs::read_to_string(spin_dir.join("report.svg")).unwrap();
    assert!(svg.contains("SPIN loss") && svg.contains("held-out reward accuracy"));
    let page = std::fs::read_to_string(spin_dir.join("report.html")).unwrap();
    assert!(page.contains("The game") && page.contains("SPIN loss"));

    // A folder that is not a run is refused with a hint.
    let st = wgspin().arg("plot").arg(tmp.path()).output().unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("wgspin spin"));
}

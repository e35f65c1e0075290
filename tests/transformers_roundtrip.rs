//! Round trip into transformers and PEFT: checkpoints and LoRA adapters that wgspin trained
//! (llama, qwen2, qwen3 and gemma3 fixtures, an epoch of SFT at a high learning rate so the weights are its own)
//! load with `AutoModelForCausalLM.from_pretrained` / `PeftModel.from_pretrained` and give the
//! log-probs and greedy tokens wgspin computes (`tests/transformers_eval.py`, float32, eager
//! attention). Both sides compute in f32 from the same stored weights; only the order of
//! summation differs, hence the 1e-4 tolerance on per-token log-probs.
//!
//! Needs python3 with torch, transformers and peft; skipped with a printed reason without them.

mod common;

use std::path::Path;

use common::{fixture, job_args, python_eval, python_has, run_ok, wgspin_scores, write_pairs};

const GREEDY: usize = 12;
const TOL: f64 = 1e-4;

fn compare(label: &str, want: (Vec<f64>, Vec<u32>), got: (Vec<f64>, Vec<u32>)) {
    assert_eq!(want.0.len(), got.0.len(), "{label}");
    let worst = want
        .0
        .iter()
        .zip(&got.0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{label}: max |Δ log-prob| {worst:.2e}");
    assert!(worst <= TOL, "{label}: {:?} vs {:?}", got.0, want.0);
    assert_eq!(got.1, want.1, "{label}: greedy tokens");
}

#[test]
fn transformers_and_peft_load_trained_checkpoints_and_adapters_with_wgspins_numbers() {
    if !python_has(&["torch", "transformers", "peft"]) {
        eprintln!("skipped: needs python3 with torch, transformers and peft");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.jsonl");
    write_pairs(&data);
    for model in [
        "tiny-llama-bf16",
        "tiny-qwen2-f32",
        "tiny-qwen3-bf16",
        "tiny-gemma3-bf16",
    ] {
        let tok = wgspin::hf::tokenizer::ChatTokenizer::from_dir(&fixture(model), &[]).unwrap();
        let mut ids = tok.prompt_ids("Name a fruit that is yellow.").unwrap();
        let prompt_len = ids.len();
        ids.extend(tok.response_ids("A banana is yellow when ripe.").unwrap());
        let request = |model_dir: &Path, adapter: Option<&Path>| {
            serde_json::json!({
                "model": model_dir, "adapter": adapter, "ids": ids,
                "prompt_len": prompt_len, "greedy": GREEDY,
            })
        };

        // Training must have moved the model, or the comparisons below would only check loading.
        let (base_lp, _) = wgspin_scores(&fixture(model), &ids, prompt_len, GREEDY);
        let moved = |lp: &[f64]| {
            let d = lp
                .iter()
                .zip(&base_lp)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                d > 1e-2,
                "{model}: training left the log-probs within {d:.1e} of the base"
            );
        };

        let full = tmp.path().join(format!("{model}-full"));
        run_ok(job_args(
            "sft",
            model,
            &data,
            &full,
            "--lr 1e-2 --epochs 1 --batch-size 2",
        ));
        let ckpt = full.join("checkpoint");
        let got = wgspin_scores(&ckpt, &ids, prompt_len, GREEDY);
        moved(&got.0);
        compare(
            &format!("{model} checkpoint"),
            python_eval("transformers_eval.py", request(&ckpt, None)),
            got,
        );

        let lora = tmp.path().join(format!("{model}-lora"));
        run_ok(job_args(
            "sft",
            model,
            &data,
            &lora,
            "--lr 1e-2 --epochs 1 --batch-size 2 --lora-rank 4",
        ));
        let adapter = lora.join("checkpoint");
        compare(
            &format!("{model} LoRA adapter"),
            python_eval(
                "transformers_eval.py",
                request(&fixture(model), Some(&adapter)),
            ),
            wgspin_scores(&adapter, &ids, prompt_len, GREEDY),
        );
    }
}

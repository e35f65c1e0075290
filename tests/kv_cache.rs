//! The KV cache: incremental decoding gives the logits of a full forward pass (within 1e-4), with
//! and without left padding, and greedy decoding equals transformers' greedy tokens.

mod common;

use common::*;
use wgspin::ModelBundle;
use wgspin::decode::{greedy, left_padded};
use wgspin::model::{KvCache, StepInput};

fn to_vec(t: burn::tensor::Tensor<3>) -> (Vec<usize>, Vec<f32>) {
    let dims = t.dims().to_vec();
    (dims, t.into_data().try_into_vec_as::<f32>().unwrap())
}

#[test]
fn incremental_decoding_equals_full_forward() {
    for dev in devices() {
        for name in TINY_MODELS.iter().filter(|m| runs_on(&dev, m)) {
            let dir = fixture(name);
            let r = reference(&dir);
            let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
            let model = &bundle.model;
            // Two rows of different lengths: the shorter one is left-padded.
            let rows: Vec<Vec<u32>> = r.cases[..2]
                .iter()
                .map(|c| {
                    c.prompt_ids
                        .iter()
                        .chain(&c.response_ids)
                        .copied()
                        .collect()
                })
                .collect();
            let n_new = if dev.is_gpu { 3 } else { 6 };
            let prompts: Vec<Vec<u32>> =
                rows.iter().map(|r| r[..r.len() - n_new].to_vec()).collect();

            // Full forward of each row alone, unpadded.
            let full: Vec<(Vec<usize>, Vec<f32>)> = rows
                .iter()
                .map(|r| {
                    to_vec(
                        model.forward(&StepInput::right_padded(std::slice::from_ref(r), 0), None),
                    )
                })
                .collect();

            let mut cache = KvCache::new(model.num_layers());
            let input = left_padded(&prompts, 0);
            let width = input.tokens[0].len();
            let (_, pre) = to_vec(model.forward(&input, Some(&mut cache)));
            let v = full[0].0[2];
            let mut max_err = 0f32;
            for (row, p) in prompts.iter().enumerate() {
                // Last prompt position of the prefill vs the full pass at the same position.
                let got = &pre[(row * width + width - 1) * v..(row * width + width) * v];
                let want = &full[row].1[(p.len() - 1) * v..p.len() * v];
                for (a, b) in got.iter().zip(want) {
                    max_err = max_err.max((a - b).abs());
                }
            }
            for step in 0..n_new - 1 {
                let input = StepInput {
                    tokens: rows
                        .iter()
                        .zip(&prompts)
                        .map(|(r, p)| vec![r[p.len() + step]])
                        .collect(),
                    positions: prompts.iter().map(|p| vec![Some(p.len() + step)]).collect(),
                };
                let (_, got) = to_vec(model.forward(&input, Some(&mut cache)));
                for (row, p) in prompts.iter().enumerate() {
                    let pos = p.len() + step;
                    let want = &full[row].1[pos * v..(pos + 1) * v];
                    for (a, b) in got[row * v..(row + 1) * v].iter().zip(want) {
                        max_err = max_err.max((a - b).abs());
                    }
                }
            }
            assert!(
                max_err < 1e-4,
                "{name} on {}: max |Δlogit| {max_err:e}",
                dev.description
            );
        }
    }
}

/// Greedy decoding runs on the CPU backend: a dozen cached steps per prompt are minutes on a
/// software GPU; incremental decoding itself is checked on the GPU above.
#[test]
fn greedy_tokens_match_transformers() {
    for dev in devices().into_iter().filter(|d| !d.is_gpu) {
        for name in TINY_MODELS {
            let dir = fixture(name);
            let r = reference(&dir);
            let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
            let prompts: Vec<Vec<u32>> = r.greedy.iter().map(|g| g.prompt_ids.clone()).collect();
            let max_new = r.greedy[0].tokens.len();
            // Batched (left-padded where lengths differ) and one prompt at a time.
            let batched = greedy(&bundle.model, &prompts, max_new, &[], 0).unwrap();
            for (g, got) in r.greedy.iter().zip(&batched) {
                assert_eq!(got, &g.tokens, "{name} on {} (batched)", dev.description);
            }
            let single = greedy(&bundle.model, &prompts[..1], max_new, &[], 0).unwrap();
            assert_eq!(
                single[0], r.greedy[0].tokens,
                "{name} on {} (single)",
                dev.description
            );
        }
    }
}

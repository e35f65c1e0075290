//! The decode path: a right-padded prefill loaded into the preallocated cache, then cached steps,
//! give the logits of a full forward pass at every step (within 1e-4), whatever slot a row sits
//! in; and greedy generation through the engine equals transformers' greedy tokens.

mod common;

use common::*;
use wgspin::ModelBundle;
use wgspin::model::fused::DecodeWeights;
use wgspin::model::static_cache::{StaticKvCache, capacity_for, ids_tensor};
use wgspin::model::{KvCache, StepInput};

fn to_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    (t.dims().to_vec(), floats(t))
}

#[test]
fn cached_decoding_equals_full_forward_at_every_step() {
    each_model_on_each_device(|dev, name, r, bundle| {
        let model = &bundle.model;
        // Two rows of different lengths: the shorter one is right-padded in the prefill.
        let rows: Vec<Vec<u32>> = r.cases[..2].iter().map(RefCase::ids).collect();
        let n_new = if dev.is_gpu { 3 } else { 6 };
        let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r[..r.len() - n_new].to_vec()).collect();

        // Full forward of each row alone, unpadded.
        let full: Vec<(Vec<usize>, Vec<f32>)> = rows
            .iter()
            .map(|r| {
                to_vec(model.forward(&StepInput::right_padded(std::slice::from_ref(r), 0), None))
            })
            .collect();
        let v = full[0].0[2];

        // Three slots: the rows go to slots 2 and 0 (not in order), slot 1 stays idle.
        let slot_of = [2usize, 0];
        let longest = prompts.iter().map(Vec::len).max().unwrap();
        let mut cache = StaticKvCache::new(model, 3, capacity_for(longest, n_new));
        let weights = DecodeWeights::new(model);
        let mut fresh = KvCache::new(model.num_layers());
        let input = StepInput::right_padded(&prompts, 0);
        let width = input.tokens[0].len();
        let (_, pre) = to_vec(model.forward(&input, Some(&mut fresh)));
        cache.load_rows(fresh, &slot_of);
        let mut max_err = 0f32;
        for (row, p) in prompts.iter().enumerate() {
            // Last prompt position of the prefill vs the full pass at the same position.
            let at = row * width + p.len() - 1;
            let got = &pre[at * v..(at + 1) * v];
            let want = &full[row].1[(p.len() - 1) * v..p.len() * v];
            for (a, b) in got.iter().zip(want) {
                max_err = max_err.max((a - b).abs());
            }
        }
        for step in 0..n_new - 1 {
            let mut tokens = [0u32; 3];
            let mut pos = [0u32; 3];
            for (row, p) in prompts.iter().enumerate() {
                tokens[slot_of[row]] = rows[row][p.len() + step];
                pos[slot_of[row]] = (p.len() + step) as u32;
            }
            let pos_t = ids_tensor(&pos, &dev.device);
            // An attended length past the longest row: extra columns must be masked.
            let attend = longest + step + 1 + 5;
            let s = cache.step(&pos_t, attend);
            let logits =
                model.decode_step(&weights, ids_tensor(&tokens, &dev.device), &s, &mut cache);
            let (dims, got) = to_vec(logits);
            assert_eq!(dims, vec![3, v]);
            for (row, p) in prompts.iter().enumerate() {
                let at = p.len() + step;
                let want = &full[row].1[at * v..(at + 1) * v];
                let slot = slot_of[row];
                for (a, b) in got[slot * v..(slot + 1) * v].iter().zip(want) {
                    max_err = max_err.max((a - b).abs());
                }
            }
        }
        assert!(
            max_err < 1e-4,
            "{name} on {}: max |Δlogit| {max_err:e}",
            dev.description
        );
    });
}

/// Greedy generation runs on the CPU backend: a dozen cached steps per prompt are minutes on a
/// software GPU; cached decoding itself is checked on the GPU above.
#[test]
fn greedy_tokens_match_transformers() {
    for dev in devices().into_iter().filter(|d| !d.is_gpu) {
        for name in TINY_MODELS {
            let dir = fixture(name);
            let r = reference(&dir);
            let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
            let prompts: Vec<Vec<u32>> = r.greedy.iter().map(|g| g.prompt_ids.clone()).collect();
            let max_new = r.greedy[0].tokens.len();
            // All prompts in one batch (right-padded where lengths differ) and one at a time.
            let batched = run_generate(
                &bundle,
                &prompts,
                &greedy_opts(prompts.len(), max_new, vec![]),
            );
            for (g, got) in r.greedy.iter().zip(&batched) {
                assert_eq!(got, &g.tokens, "{name} on {} (batched)", dev.description);
            }
            let single = run_generate(&bundle, &prompts[..1], &greedy_opts(1, max_new, vec![]));
            assert_eq!(
                single[0], r.greedy[0].tokens,
                "{name} on {} (single)",
                dev.description
            );
        }
    }
}

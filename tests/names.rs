//! One table of Hugging Face tensor names (`hf_names`): the checkpoints transformers wrote hold
//! exactly its names and shapes, the model's named-parameter view (what the loader fills and the
//! trainer updates) lists them in its order, and a checkpoint written back holds every name with
//! the values it was loaded with.

mod common;

use std::collections::BTreeMap;

use common::*;
use wgspin::ModelBundle;
use wgspin::device::cpu_device;
use wgspin::hf::names::{self as hf_names, expected_tensors};
use wgspin::hf::weights::{StoredDtype, WeightFiles};
use wgspin::model::named::params_mut;

fn tensors(dir: &std::path::Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let files = WeightFiles::open_dir(dir).unwrap();
    files
        .names()
        .map(|n| {
            let t = files.read(n).unwrap();
            (n.to_string(), (t.shape, t.data))
        })
        .collect()
}

#[test]
fn every_name_round_trips_through_load_and_save() {
    // Llama with tied embeddings (bf16), Qwen2 with q/k/v biases (f32), Mistral (f16).
    for name in ["tiny-llama-bf16", "tiny-qwen2-f32", "tiny-mistral-f16"] {
        let dir = fixture(name);
        let dev = cpu_device();
        let bundle = ModelBundle::load(&dir, &dev.device).unwrap();
        let cfg = &bundle.config;
        let expected = expected_tensors(cfg);

        let source = tensors(&dir);
        let source_names: BTreeMap<&str, &Vec<usize>> = source
            .iter()
            .filter(|(n, _)| !hf_names::is_ignorable(cfg, n))
            .map(|(n, (s, _))| (n.as_str(), s))
            .collect();
        let table: BTreeMap<&str, &Vec<usize>> =
            expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
        assert_eq!(
            source_names, table,
            "{name}: transformers' names vs hf_names"
        );

        let mut model = bundle.model.clone();
        let view: Vec<(String, Vec<usize>)> = params_mut(&mut model)
            .into_iter()
            .map(|(n, p)| (n, p.shape()))
            .collect();
        assert_eq!(
            view, expected,
            "{name}: named parameters vs hf_names, in order"
        );

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ckpt");
        wgspin::load::checkpoint::save(&bundle.model, &dir, &out, StoredDtype::F32, None, &[])
            .unwrap();
        let written = tensors(&out);
        let written_names: Vec<&String> = written.keys().collect();
        let mut table_names: Vec<&String> = expected.iter().map(|(n, _)| n).collect();
        table_names.sort();
        assert_eq!(written_names, table_names, "{name}: checkpoint names");
        for (n, (shape, data)) in &written {
            let (s_shape, s_data) = &source[n];
            assert_eq!(shape, s_shape, "{name}: {n} shape");
            // Widened from the stored dtype and written as f32: exact.
            assert_eq!(data, s_data, "{name}: {n} values");
        }
    }
}

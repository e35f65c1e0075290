//! The default number of rows decoded together (`--gen-batch-size` when it is not given).
//!
//! On the CPU backend, and on a software GPU adapter (which runs on the same cores), a small
//! batch is as fast per token as a large one. On a GPU a decode step costs nearly the same for 1
//! row as for 64, so the batch is as large as device memory allows: the KV cache of every slot
//! (sized for prompts of up to [`PLANNED_PROMPT`] tokens plus the token limit), the weights and
//! their fused decode copies must fit in [`MEMORY_SHARE`] of what the device reports, all in the
//! compute dtype (f16 halves them, so about twice the rows fit).

use burn::backend::DispatchDevice;
use burn::tensor::DType;

use crate::device::ComputeDevice;
use crate::hf::config::ModelConfig;
use crate::model::static_cache::capacity_for;

/// Rows on the CPU backend and on software adapters.
pub const CPU_BATCH: usize = 8;

/// The most rows a GPU default reaches (continuous batching keeps them busy; more mostly adds
/// waiting for the longest row).
pub const MAX_GPU_BATCH: usize = 128;

/// Rows on a GPU whose memory size is not reported (DX12).
pub const UNKNOWN_MEMORY_BATCH: usize = 32;

/// Prompt length the default plans the cache for; longer prompts with a memory-sized batch
/// may need a smaller `--gen-batch-size`.
pub const PLANNED_PROMPT: usize = 512;

/// Share of the reported device memory the default may plan to use.
pub const MEMORY_SHARE: f64 = 0.6;

/// Bytes of device memory the adapter reports, where its API does (Vulkan, Metal).
pub fn device_memory(device: &burn::tensor::Device) -> Option<u64> {
    match device.as_dispatch() {
        DispatchDevice::Cube(d) => d.client().properties().memory.max_memory(),
        _ => None,
    }
}

/// The default batch for `model` on `dev` with responses of up to `max_new_tokens`, computing in
/// `dtype`.
pub fn default_batch_size(
    dev: &ComputeDevice,
    cfg: &ModelConfig,
    max_new_tokens: usize,
    dtype: DType,
) -> usize {
    if !dev.is_gpu || dev.is_software {
        return CPU_BATCH;
    }
    match device_memory(&dev.device) {
        Some(bytes) => batch_for_memory(bytes, cfg, max_new_tokens, dtype),
        None => UNKNOWN_MEMORY_BATCH,
    }
}

/// Rows that fit `bytes` of device memory (see the module docs), a multiple of 8 in
/// [`CPU_BATCH`, `MAX_GPU_BATCH`].
pub fn batch_for_memory(
    bytes: u64,
    cfg: &ModelConfig,
    max_new_tokens: usize,
    dtype: DType,
) -> usize {
    let f32_bytes = 4.0;
    let elem_bytes = dtype.size() as f64;
    let capacity = capacity_for(PLANNED_PROMPT, max_new_tokens) as f64;
    let (h, layers) = (cfg.hidden_size as f64, cfg.num_layers as f64);
    let kv = (cfg.num_kv_heads * cfg.head_dim) as f64;
    let per_layer = h * (cfg.num_heads * cfg.head_dim) as f64 * 2.0
        + h * kv * 2.0
        + h * cfg.intermediate_size as f64 * 3.0;
    let heads = if cfg.tie_word_embeddings { 1.0 } else { 2.0 };
    let params = layers * per_layer + heads * cfg.vocab_size as f64 * h;
    // The fused q/k/v and gate/up copies are about two thirds of the layers' weights.
    let weights = (params + layers * per_layer * 2.0 / 3.0) * elem_bytes;
    // Per row: keys and values of every layer, a step's logits (f32 whatever the dtype) and
    // activations.
    let per_row = (layers * 2.0 * kv * capacity
        + 16.0 * cfg.intermediate_size.max(cfg.hidden_size) as f64)
        * elem_bytes
        + 4.0 * cfg.vocab_size as f64 * f32_bytes;
    let budget = bytes as f64 * MEMORY_SHARE - weights;
    let rows = (budget / per_row).max(0.0) as usize;
    (rows / 8 * 8).clamp(CPU_BATCH, MAX_GPU_BATCH)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::hf::config::HfConfig;

    /// SmolLM2-135M's shapes.
    fn smollm2() -> ModelConfig {
        let json = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "max_position_embeddings": 8192, "rope_theta": 100000.0}"#;
        let raw: HfConfig = serde_json::from_str(json).unwrap();
        raw.resolve(Path::new("config.json"), &[]).unwrap()
    }

    #[test]
    fn a_laptop_gpu_decodes_dozens_of_rows_of_a_small_model() {
        let cfg = smollm2();
        let gib = 1u64 << 30;
        // 256 new tokens: each row's cache holds 768 positions (36 MB for SmolLM2).
        let at = |g: u64| batch_for_memory(g * gib, &cfg, 256, DType::F32);
        assert_eq!(
            at(1),
            CPU_BATCH,
            "too little memory falls back to the CPU batch"
        );
        assert!(at(4) >= 40, "4 GiB: {}", at(4));
        assert!(at(8) >= 64, "8 GiB: {}", at(8));
        assert_eq!(at(80), MAX_GPU_BATCH);
        for g in 1..80 {
            assert!(at(g) <= at(g + 1), "more memory never gives fewer rows");
            assert_eq!(at(g) % 8, 0);
        }
        // Longer responses need more cache per row.
        assert!(batch_for_memory(8 * gib, &cfg, 2048, DType::F32) < at(8));
    }

    #[test]
    fn f16_fits_about_twice_the_rows() {
        let cfg = smollm2();
        let gib = 1u64 << 30;
        for g in 2..=8 {
            let f32s = batch_for_memory(g * gib, &cfg, 256, DType::F32);
            let f16s = batch_for_memory(g * gib, &cfg, 256, DType::F16);
            // Caches and weights halve (more room, and less per row), the logits stay f32; rows
            // come in multiples of 8, at most MAX_GPU_BATCH.
            assert!(
                f16s + 8 >= (2 * f32s).min(MAX_GPU_BATCH),
                "{g} GiB: {f32s} → {f16s}"
            );
        }
    }
}

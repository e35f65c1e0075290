//! Gemma 3, text only (`gemma3_text`, `Gemma3ForCausalLM`: 270M, 1B). Against Llama: norms scale
//! by `1 + w`, four norms per layer (before and after attention and the MLP), per-head q/k norms,
//! GELU (tanh) in the MLP, embeddings times √hidden, scores scaled by `query_pre_attn_scalar^-0.5`,
//! and five sliding-window layers per full one, the sliding ones with their own RoPE base
//! (`rope_local_base_freq`). The multimodal `gemma3` wrapper (vision tower) is not this family.

use super::{Activation, Family, GgufArch, GgufFixed, LayerType, NormKind};

/// transformers' defaults when neither `layer_types` nor `sliding_window_pattern` is written, and
/// when `sliding_window` is absent.
const DEFAULT_PATTERN: u64 = 6;
const DEFAULT_WINDOW: u64 = 4096;

pub const FAMILY: Family = Family {
    model_type: "gemma3_text",
    class: "Gemma3ForCausalLM",
    norm: NormKind::OffsetScale,
    activation_keys: &["hidden_activation", "hidden_act"],
    default_activation: Activation::GeluTanh,
    qk_norm: true,
    sandwich_norms: true,
    embed_scale: true,
    default_eps: 1e-6,
    default_tied: true,
    biases: super::attention_biases,
    // Every `pattern`-th layer is full, the others slide (transformers ≥ 4.53 writes the key
    // with a leading underscore).
    layer_types: |cfg, layers| {
        let pattern = ["sliding_window_pattern", "_sliding_window_pattern"]
            .iter()
            .find_map(|k| cfg.extra.get(*k).and_then(serde_json::Value::as_u64))
            .filter(|&p| p > 0)
            .unwrap_or(DEFAULT_PATTERN) as usize;
        Some(
            (0..layers)
                .map(|i| {
                    if super::pattern_slides(i, pattern) {
                        LayerType::Sliding
                    } else {
                        LayerType::Full
                    }
                })
                .collect(),
        )
    },
    // Gemma3TextConfig's default when the key is absent (null means no window).
    sliding_window: |cfg| {
        Some(
            cfg.extra
                .get("sliding_window")
                .cloned()
                .unwrap_or(serde_json::json!(DEFAULT_WINDOW)),
        )
    },
    local_rope_base_key: Some("rope_local_base_freq"),
    attn_scale_key: Some("query_pre_attn_scalar"),
    refused: &[
        (
            "final_logit_softcapping",
            "logit soft-capping (Gemma 2's tanh cap on the logits)",
        ),
        (
            "attn_logit_softcapping",
            "attention soft-capping (Gemma 2's tanh cap on the scores)",
        ),
        (
            "use_bidirectional_attention",
            "bidirectional attention (EmbeddingGemma)",
        ),
    ],
    // llama.cpp's `gemma3` stores the norms as 1 + w, and fixes the layer pattern (6), the
    // sliding layers' RoPE base (10000) and the score scale (head_dim^-0.5, but for the 27B).
    gguf: Some(GgufArch {
        name: "gemma3",
        permute_qk: false,
        norm_shift: 1.0,
        fixed: Some(GgufFixed {
            swa_pattern: DEFAULT_PATTERN as usize,
            swa_rope_base: 10000.0,
            hidden_scale_layers: Some(62),
        }),
    }),
};

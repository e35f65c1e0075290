//! Unit tests of `config.rs`: config.json as Hugging Face writes it, resolved through the families.
use super::*;

fn resolve(json: &str) -> Result<ModelConfig> {
    let raw: HfConfig = serde_json::from_str(json).unwrap();
    raw.resolve(Path::new("config.json"), &[])
}

const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2"#;

#[test]
fn old_style_rope_and_defaults() {
    let c = resolve(&format!(
        r#"{{"model_type": "llama", {BASE}, "rope_theta": 500.0,
            "rope_scaling": {{"type": "linear", "factor": 4.0}}, "eos_token_id": [3, 4]}}"#
    ))
    .unwrap();
    assert_eq!(c.rope.theta, 500.0);
    assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 4.0 });
    assert_eq!(c.num_kv_heads, 2);
    assert_eq!(c.head_dim, 4);
    assert_eq!(c.eos_token_ids, vec![3, 4]);
    assert!(!c.qkv_bias && !c.tie_word_embeddings);
}

#[test]
fn transformers5_rope_parameters() {
    let c = resolve(&format!(
        r#"{{"model_type": "qwen2", {BASE}, "num_key_value_heads": 1, "head_dim": 6,
            "rope_parameters": {{"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
            "eos_token_id": 7, "sliding_window": 4096}}"#
    ))
    .unwrap();
    assert_eq!(c.rope.theta, 1e6);
    assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    assert_eq!((c.num_kv_heads, c.head_dim, c.group_size()), (1, 6, 2));
    assert!(c.qkv_bias && !c.o_bias);
    assert_eq!(c.sliding_window(), None);
    assert_eq!(c.eos_token_ids, vec![7]);
}

#[test]
fn mistral_sliding_window() {
    let c = resolve(&format!(
        r#"{{"model_type": "mistral", {BASE}, "sliding_window": 4096}}"#
    ))
    .unwrap();
    assert_eq!(c.sliding_window(), Some(4096));
}

#[test]
fn unsupported_rope_type_is_named() {
    let e = resolve(&format!(
        r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2.0}}}}"#
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"yarn\"") && e.contains("llama3"), "{e}");
}

#[test]
fn unsupported_model_type_lists_supported() {
    let e = resolve(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpt2") && e.contains("llama, mistral, qwen2, qwen3, gemma3_text"),
        "{e}"
    );
}

#[test]
fn gemma3_old_style_config_resolves_its_layer_kinds() {
    // transformers 4.5x layout: a pattern instead of layer_types, the local base on its own key,
    // and rope_scaling that applies to the full layers only.
    let c = resolve(&format!(
        r#"{{"model_type": "gemma3_text", {BASE}, "sliding_window": 4, "sliding_window_pattern": 3,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "query_pre_attn_scalar": 16,
            "rope_scaling": {{"rope_type": "linear", "factor": 8.0}}}}"#
    ))
    .unwrap();
    let kinds: Vec<_> = (0..c.num_layers)
        .map(|l| c.layer_attention(l).clone())
        .collect();
    assert_eq!(kinds.len(), 1);
    assert_eq!(kinds[0].window, AttentionWindow::Sliding(4));
    assert_eq!(kinds[0].rope.theta, 1e4);
    assert_eq!(kinds[0].rope.scaling, RopeScaling::Default);
    assert_eq!(c.rope.theta, 1e6);
    assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(c.attn_scale, 0.25);
    assert_eq!(c.embed_scale, Some(8f32.sqrt()));
    assert_eq!(c.activation, Activation::GeluTanh);
    assert!(c.qk_norm && c.sandwich_norms && c.norm == NormKind::OffsetScale);
}

#[test]
fn gemma3_pattern_makes_every_nth_layer_full() {
    let c = resolve(
        r#"{"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 7,
            "sliding_window": 4, "sliding_window_pattern": 3}"#,
    )
    .unwrap();
    let full: Vec<bool> = (0..7)
        .map(|l| c.layer_attention(l).window == AttentionWindow::Full)
        .collect();
    assert_eq!(full, [false, false, true, false, false, true, false]);
}

#[test]
fn defaults_are_transformers_class_defaults_when_keys_are_absent() {
    // Gemma 3 configs on the Hub leave out tie_word_embeddings (its class default, true) and
    // may spell the pattern with an underscore; an absent window is transformers' 4096.
    let c = resolve(
        r#"{"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 4,
            "_sliding_window_pattern": 2}"#,
    )
    .unwrap();
    assert!(c.tie_word_embeddings);
    assert_eq!(c.sliding_window(), Some(4096));
    let full: Vec<bool> = (0..4)
        .map(|l| c.layer_attention(l).window == AttentionWindow::Full)
        .collect();
    assert_eq!(full, [false, true, false, true]);
    // A null window: the sliding layers see everything but keep their own RoPE base.
    let c = resolve(
        r#"{"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
            "sliding_window": null, "rope_theta": 1e6, "rope_local_base_freq": 1e4}"#,
    )
    .unwrap();
    assert_eq!(c.layer_attention(0).window, AttentionWindow::Full);
    assert_eq!(c.layer_attention(0).rope.theta, 1e4);
    // Qwen's max_window_layers defaults to 28: layers below it stay full.
    let c = resolve(
        r#"{"model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_attention_heads": 2, "num_hidden_layers": 30, "use_sliding_window": true,
            "sliding_window": 16}"#,
    )
    .unwrap();
    assert_eq!(c.layer_attention(27).window, AttentionWindow::Full);
    assert_eq!(c.layer_attention(28).window, AttentionWindow::Sliding(16));
    assert!(!c.tie_word_embeddings);
}

#[test]
fn options_wgspin_lacks_are_refused_by_name() {
    for (json, key) in [
        (
            r#""model_type": "gemma3_text", "final_logit_softcapping": 30.0"#,
            "final_logit_softcapping",
        ),
        (
            r#""model_type": "gemma3_text", "attn_logit_softcapping": 50.0"#,
            "attn_logit_softcapping",
        ),
        (
            r#""model_type": "llama", "hidden_act": "relu""#,
            "hidden_act",
        ),
        (
            r#""model_type": "qwen3", "layer_types": ["chunked_attention"]"#,
            "chunked_attention",
        ),
    ] {
        let e = resolve(&format!("{{{json}, {BASE}}}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{e}");
    }
    let e = resolve(&format!(r#"{{"model_type": "qwen3_moe", {BASE}}}"#))
        .unwrap_err()
        .to_string();
    assert!(e.contains("qwen3_moe") && e.contains("gemma3_text"), "{e}");
}

#[test]
fn qwen3_has_qk_norms_and_no_qkv_bias() {
    let c = resolve(&format!(
        r#"{{"model_type": "qwen3", {BASE}, "head_dim": 6, "sliding_window": 4096,
            "use_sliding_window": false}}"#
    ))
    .unwrap();
    assert!(c.qk_norm && !c.qkv_bias && !c.o_bias && !c.sandwich_norms);
    assert_eq!((c.head_dim, c.sliding_window()), (6, None));
    // As transformers: head_dim ** -0.5 in double, rounded once to f32.
    assert_eq!(c.attn_scale, (1.0 / 6f64.sqrt()) as f32);
}

#[test]
fn bad_head_grouping_is_an_error() {
    let e = resolve(&format!(
        r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_key_value_heads"), "{e}");
}

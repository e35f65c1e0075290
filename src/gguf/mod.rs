//! GGUF models in and out (llama.cpp's single-file format; the architectures of the families in
//! `hf/arch/` that name one: `llama`, `qwen2`, `qwen3`).
//!
//! Reading turns a GGUF file into exactly what a Hugging Face folder holds: a `config.json`
//! document (resolved by the same [`HfConfig`] code as a folder), `generation_config.json`,
//! `tokenizer.json` / `tokenizer_config.json` documents ([`tokenizer`]) and f32 tensors under
//! Hugging Face names (dequantized, q/k rows un-permuted for `llama`). So `ModelBundle::load` and
//! `wgspin convert` share one path, and `convert` only has to write these out.
//!
//! - [`reader`]: the file format (bounds-checked parsing); [`dequant`]: tensor types;
//!   [`names`]: GGUF tensor names; [`tokenizer`]: metadata → tokenizer; [`writer`]: `export-gguf`
//!   (its `tokenizer.*` metadata in `writer_tokenizer.rs`).

pub mod add_tokens;
pub mod card;
pub mod dequant;
pub mod names;
pub mod reader;
pub mod tokenizer;
pub mod writer;
mod writer_tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::hf::config::{HfConfig, ModelConfig};
use crate::hf::source::TensorMap;
use crate::hf::weights::{HostTensor, StoredDtype};
use dequant::GgmlType;
use reader::{GgufFile, MetaValue};

/// Custom metadata keys under which `export-gguf` records Llama 3.1 RoPE parameters (llama.cpp
/// itself only reads the `rope_freqs.weight` factors they produce, and ignores these keys).
pub const LLAMA3_ROPE_KEYS: [&str; 4] = [
    "wgspin.rope.llama3.factor",
    "wgspin.rope.llama3.low_freq_factor",
    "wgspin.rope.llama3.high_freq_factor",
    "wgspin.rope.llama3.original_context_length",
];

/// A GGUF model as Hugging Face files would hold it.
pub struct GgufModel {
    pub path: PathBuf,
    /// `config.json` document.
    pub config_json: Value,
    /// `generation_config.json` document.
    pub generation_config: Value,
    /// Model card fields of its `general.*` metadata (README.md of a converted folder).
    pub card: crate::hf::card::Card,
    pub config: ModelConfig,
    pub tokenizer: tokenizer::TokenizerParts,
    /// f32 tensors under Hugging Face names.
    pub weights: TensorMap,
}

/// Llama 3.1 RoPE frequency factors (per rotated pair, divide the base frequency), computed as
/// llama.cpp's convert_hf_to_gguf.py does for `rope_freqs.weight`.
pub fn llama3_rope_factors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_ctx: f64,
) -> Vec<f32> {
    // In f32 after the wavelength bounds, as the converter's torch scalars are (bit-identical).
    let (low_wavelen, high_wavelen) = (old_ctx / low_freq_factor, old_ctx / high_freq_factor);
    let (factor_f, low_f, span_f) = (
        factor as f32,
        low_freq_factor as f32,
        (high_freq_factor - low_freq_factor) as f32,
    );
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            let wavelen = std::f32::consts::TAU / freq;
            if (wavelen as f64) < high_wavelen {
                1.0
            } else if (wavelen as f64) > low_wavelen {
                factor_f
            } else {
                let smooth = (old_ctx as f32 / wavelen - low_f) / span_f;
                1.0 / ((1.0 - smooth) / factor_f + smooth)
            }
        })
        .collect()
}

fn meta_usize(g: &GgufFile, key: &str) -> Result<Option<usize>> {
    g.optional(key, |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
}

fn need_usize(g: &GgufFile, key: &str) -> Result<usize> {
    g.require(key, |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
}

/// RoPE scaling as a config.json `rope_scaling` object (or null).
fn rope_scaling(g: &GgufFile, arch: &str, theta: f64, head_dim: usize) -> Result<Value> {
    let key = |k: &str| format!("{arch}.{k}");
    if let Some(info) = g.tensor(names::ROPE_FREQS) {
        let factors = g.dequantize(info);
        let custom: Vec<Option<f64>> = LLAMA3_ROPE_KEYS
            .iter()
            .map(|k| g.optional(k, MetaValue::as_f64))
            .collect::<Result<_>>()?;
        let orig = g.optional(
            &key("rope.scaling.original_context_length"),
            MetaValue::as_f64,
        )?;
        // Our own exports name the parameters; other files (Llama 3.1/3.2) use Meta's 1/4/8192.
        let params = match custom.as_slice() {
            [Some(f), Some(l), Some(h), Some(o)] => [*f, *l, *h, *o],
            _ => [
                factors.last().copied().unwrap_or(1.0) as f64,
                1.0,
                4.0,
                orig.unwrap_or(8192.0),
            ],
        };
        // Length first: head_dim comes from the file and sizes the vector computed below.
        let close = factors.len() == head_dim / 2
            && llama3_rope_factors(theta, head_dim, params[0], params[1], params[2], params[3])
                .iter()
                .zip(&factors)
                .all(|(a, b)| (a - b).abs() <= 1e-4 * a.abs().max(1.0));
        if !close {
            return Err(Error::Tensor {
                path: g.path.clone(),
                name: names::ROPE_FREQS.into(),
                message: "RoPE frequency factors that are not Llama 3.1-style (factor, low 1, high 4) are not supported".into(),
            });
        }
        // A context length is an integer in config.json (64, not 64.0).
        let orig = match params[3] {
            o if o.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&o) => json!(o as u64),
            o => json!(o),
        };
        return Ok(
            json!({"rope_type": "llama3", "factor": params[0], "low_freq_factor": params[1],
            "high_freq_factor": params[2], "original_max_position_embeddings": orig}),
        );
    }
    let kind = g.optional(&key("rope.scaling.type"), |v| {
        v.as_str().map(str::to_string)
    })?;
    let factor = match g.optional(&key("rope.scaling.factor"), MetaValue::as_f64)? {
        Some(f) => Some(f),
        None => g.optional(&key("rope.scale_linear"), MetaValue::as_f64)?,
    };
    match (kind.as_deref(), factor) {
        (None | Some("none"), None) => Ok(Value::Null),
        (None | Some("linear"), Some(f)) if f == 1.0 || f == 0.0 => Ok(Value::Null),
        (None | Some("linear"), Some(f)) => Ok(json!({"rope_type": "linear", "factor": f})),
        (Some(other), _) => Err(g.gguf_error(format!(
            "RoPE scaling {other:?} is not supported (supported: none, linear, Llama 3.1 rope_freqs)"
        ))),
    }
}

/// The `config.json` and `generation_config.json` documents of a GGUF model.
pub fn hf_config(g: &GgufFile, tok: &tokenizer::TokenizerParts) -> Result<(Value, Value)> {
    let arch = g.require("general.architecture", |v| v.as_str().map(str::to_string))?;
    let Some(family) = crate::hf::arch::by_gguf_arch(&arch) else {
        return Err(g.gguf_error(format!(
            "architecture {arch:?} is not supported (supported: {})",
            crate::hf::arch::supported_gguf_archs()
        )));
    };
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = need_usize(g, &key("embedding_length"))?;
    let heads = need_usize(g, &key("attention.head_count"))?;
    let kv_heads = meta_usize(g, &key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 {
        return Err(g.gguf_error(format!("{} is 0", key("attention.head_count"))));
    }
    let head_dim = match meta_usize(g, &key("attention.key_length"))? {
        Some(d) => d,
        None => hidden / heads,
    };
    if let Some(v) = meta_usize(g, &key("attention.value_length"))?
        && v != head_dim
    {
        return Err(g.gguf_error(format!(
            "value_length {v} differs from key_length {head_dim}; not supported"
        )));
    }
    if let Some(r) = meta_usize(g, &key("rope.dimension_count"))?
        && r != head_dim
    {
        return Err(g.gguf_error(format!(
            "partial RoPE (rope.dimension_count {r} < head dim {head_dim}) is not supported"
        )));
    }
    let theta = g
        .optional(&key("rope.freq_base"), MetaValue::as_f64)?
        .unwrap_or(10000.0);
    let vocab = g
        .strings("tokenizer.ggml.tokens")?
        .map(|t| t.len())
        .ok_or_else(|| g.gguf_error("missing tokenizer.ggml.tokens".into()))?;
    let eps = g
        .optional(&key("attention.layer_norm_rms_epsilon"), MetaValue::as_f64)?
        .unwrap_or(1e-5);
    let tied = g.tensor(names::OUTPUT).is_none();
    let bias = g.tensor("blk.0.attn_q.bias").is_some();
    let mut config = json!({
        "architectures": [family.class],
        "model_type": family.model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need_usize(g, &key("feed_forward_length"))?,
        "num_hidden_layers": need_usize(g, &key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": meta_usize(g, &key("context_length"))?.unwrap_or(2048),
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": rope_scaling(g, &arch, theta, head_dim)?,
        "tie_word_embeddings": tied,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "torch_dtype": "float32",
    });
    // Families that read them take biases from `attention_bias` (Qwen2's q/k/v biases are
    // always there); llama.cpp records no sliding window for the architectures without fixed
    // layer kinds.
    config["attention_bias"] = json!(bias);
    config["mlp_bias"] = json!(false);
    config["use_sliding_window"] = json!(false);
    config[family.activation_keys[0]] = json!(family.default_activation.hf_name());
    if let Some(fixed) = family.gguf.and_then(|a| a.fixed) {
        // A window of 0 is llama.cpp's "no sliding window".
        let window = meta_usize(g, &key("attention.sliding_window"))?.filter(|&w| w > 0);
        let layers = need_usize(g, &key("block_count"))?;
        let types: Vec<&str> = (0..layers)
            .map(|l| {
                if window.is_some() && fixed.slides(l) {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        config["layer_types"] = json!(types);
        config["sliding_window"] = json!(window);
        if let Some(key) = family.local_rope_base_key {
            config[key] = json!(fixed.swa_rope_base);
        }
        if let Some(key) = family.attn_scale_key {
            let scalar = match fixed.hidden_scale_layers {
                Some(n) if n == layers => hidden / heads,
                _ => head_dim,
            };
            config[key] = json!(scalar);
        }
        // Options of the architecture the family refuses (soft-capping) come through as
        // config keys, so the config resolution refuses them by name.
        for (k, _) in family.refused {
            if let Some(v) = g.optional(&key(k), MetaValue::as_f64)? {
                config[*k] = json!(v);
            }
        }
    }
    Ok((config, generation_config(g, tok, vocab)?))
}

/// The `generation_config.json` document: the special tokens, an end-of-turn token among the eos.
fn generation_config(g: &GgufFile, tok: &tokenizer::TokenizerParts, vocab: usize) -> Result<Value> {
    let mut eos: Vec<u32> = tok.eos_token_id.into_iter().collect();
    // An end-of-turn token (Llama 3's <|eot_id|>) also ends generation.
    if let Some(eot) = g.optional("tokenizer.ggml.eot_token_id", MetaValue::as_u64)?
        && (eot as usize) < vocab
        && !eos.contains(&(eot as u32))
    {
        eos.push(eot as u32);
    }
    Ok(json!({
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        "pad_token_id": tok.pad_token_id,
    }))
}

/// Dequantizes every tensor to f32 under its Hugging Face name (q/k rows un-permuted for `llama`).
pub fn hf_tensors(g: &GgufFile, cfg: &ModelConfig) -> Result<TensorMap> {
    let permute = cfg.family.gguf.is_some_and(|g| g.permute_qk);
    let shift = cfg.family.gguf.map_or(0.0, |g| g.norm_shift);
    let mut tensors = BTreeMap::new();
    for info in &g.tensors {
        if info.name == names::ROPE_FREQS {
            continue; // folded into the config's rope_scaling
        }
        let resolved =
            names::from_gguf(&info.name, cfg.sandwich_norms).ok_or_else(|| Error::Tensor {
                path: g.path.clone(),
                name: info.name.clone(),
                message: format!("unknown tensor for a {} GGUF model", cfg.family.model_type),
            })?;
        let shape = info.shape();
        let mut data = g.dequantize(info);
        if shift != 0.0 && resolved.is_norm() {
            data.iter_mut().for_each(|x| *x -= shift);
        }
        if permute
            && let Some(heads) = names::permuted_heads(resolved, cfg.num_heads, cfg.num_kv_heads)
        {
            let rows = shape.first().copied().unwrap_or(0);
            data = names::permute_rows(&data, rows, heads, false).ok_or_else(|| Error::Tensor {
                path: g.path.clone(),
                name: info.name.clone(),
                message: format!("{rows} rows do not split into {heads} RoPE heads"),
            })?;
        }
        let dtype = match info.ty {
            GgmlType::F16 => StoredDtype::F16,
            GgmlType::BF16 => StoredDtype::BF16,
            _ => StoredDtype::F32,
        };
        tensors.insert(resolved.hf_name(), HostTensor { shape, data, dtype });
    }
    Ok(TensorMap {
        path: g.path.clone(),
        tensors,
    })
}

/// Writes the Hugging Face metadata files of a GGUF model (config.json with `torch_dtype`,
/// generation_config.json, tokenizer.json, tokenizer_config.json, and a README.md model card with
/// the `general.*` fields that have a card key) into `dir`.
fn write_metadata(
    dir: &Path,
    source: &Path,
    fields: &crate::hf::card::Card,
    config_json: &Value,
    generation_config: &Value,
    tok: &tokenizer::TokenizerParts,
    dtype: StoredDtype,
) -> Result<()> {
    if !fields.is_empty() {
        let source = source.file_name().unwrap_or_default().to_string_lossy();
        let body = format!("Converted by wgspin from the GGUF file `{source}`.\n");
        crate::fsutil::write_atomic(
            &dir.join(crate::hf::card::CARD_FILE),
            crate::hf::card::card_text(fields, &body).as_bytes(),
        )?;
    }
    let mut config = config_json.clone();
    config["torch_dtype"] = json!(dtype.torch_name());
    let json_file = |name: &str, v: &Value| -> Result<()> {
        let text = serde_json::to_string_pretty(v).map_err(|source| Error::Json {
            path: dir.join(name),
            source,
        })?;
        crate::fsutil::write_atomic(&dir.join(name), text.as_bytes())
    };
    json_file("config.json", &config)?;
    json_file("generation_config.json", generation_config)?;
    json_file("tokenizer.json", &tok.tokenizer_json)?;
    json_file("tokenizer_config.json", &tok.tokenizer_config)
}

/// Writes the Hugging Face metadata files of the GGUF file at `path` into `dir` (reads the
/// metadata only, not the weights): what a checkpoint trained from a GGUF model carries.
pub fn write_hf_metadata(path: &Path, dir: &Path, dtype: StoredDtype) -> Result<()> {
    let g = GgufFile::open(path)?;
    let tok = tokenizer::from_gguf(&g)?;
    let (config_json, generation_config) = hf_config(&g, &tok)?;
    let fields = card::card_of_gguf(&g);
    write_metadata(
        dir,
        path,
        &fields,
        &config_json,
        &generation_config,
        &tok,
        dtype,
    )
}

impl GgufModel {
    /// Reads a GGUF file: config, tokenizer documents and f32 weights.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, true)
    }

    /// [`Self::load`] without the weights (`weights` left empty): the config, tokenizer and card
    /// from the metadata only, without dequantizing a single tensor.
    pub fn load_metadata(path: &Path) -> Result<Self> {
        Self::load_with(path, false)
    }

    fn load_with(path: &Path, with_weights: bool) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let tok = tokenizer::from_gguf(&g)?;
        let (config_json, generation_config) = hf_config(&g, &tok)?;
        let raw: HfConfig =
            serde_json::from_value(config_json.clone()).map_err(|e| Error::Gguf {
                path: path.to_path_buf(),
                message: format!("building config.json: {e}"),
            })?;
        let extra: Vec<u32> = generation_config
            .get("eos_token_id")
            .and_then(crate::hf::config::token_ids)
            .unwrap_or_default();
        let config = raw.resolve(path, &extra)?;
        let weights = if with_weights {
            hf_tensors(&g, &config)?
        } else {
            crate::hf::source::TensorMap {
                path: path.to_path_buf(),
                tensors: BTreeMap::new(),
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            config_json,
            generation_config,
            card: card::card_of_gguf(&g),
            config,
            tokenizer: tok,
            weights,
        })
    }

    /// The tokenizer with chat template and special tokens.
    pub fn chat_tokenizer(&self) -> Result<crate::hf::tokenizer::ChatTokenizer> {
        let inner = self
            .tokenizer
            .tokenizer_json
            .to_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: format!("building the tokenizer from GGUF metadata failed: {e}"),
            })?;
        crate::hf::tokenizer::ChatTokenizer::new(
            inner,
            &self.tokenizer.tokenizer_config,
            self.tokenizer
                .chat_template
                .as_deref()
                .map(|t| (t, self.path.as_path())),
            &self.config.eos_token_ids,
            &self.path,
        )
    }

    /// Writes the model as a Hugging Face folder (config.json, generation_config.json,
    /// tokenizer.json, tokenizer_config.json, README.md card, model.safetensors in `dtype`),
    /// atomically: filled beside `out` and swapped in when complete, replacing a folder there
    /// (whether one may be replaced is the caller's rule: `outputs::check_model_folder`).
    pub fn write_hf_folder(&self, out: &Path, dtype: StoredDtype) -> Result<()> {
        crate::fsutil::replace_folder(out, |tmp| {
            write_metadata(
                tmp,
                &self.path,
                &self.card,
                &self.config_json,
                &self.generation_config,
                &self.tokenizer,
                dtype,
            )?;
            crate::hf::weights::write_safetensors(
                &tmp.join("model.safetensors"),
                &self.weights.tensors,
                dtype,
                crate::hf::weights::pt_metadata(),
            )
        })
    }
}

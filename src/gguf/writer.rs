//! GGUF writing for `wgspin export-gguf`: a Hugging Face folder (Llama / Mistral as arch `llama`
//! with q/k rows permuted the way llama.cpp expects, Qwen2 as arch `qwen2`) → one GGUF v3 file with
//! llama.cpp tensor names, model metadata, the byte-level BPE tokenizer of `tokenizer.json`
//! (`tokenizer.ggml.model = gpt2`, tokens, token types, merges, `pre`; see `writer_tokenizer.rs`)
//! and the chat template.
//! Norms and biases stay F32 (as llama.cpp writes them); matrices use the requested type
//! (F32, F16 or Q8_0; Q8_0 falls back to F16 for rows that are not whole 32-value blocks).

use std::path::Path;

use serde_json::Value;

use super::dequant::{self, GgmlType};
use super::names;
use super::reader::{DEFAULT_ALIGNMENT, MAGIC, MetaValue};
use crate::error::{Error, Result};
use crate::hf::arch::GgufArch;
use crate::hf::config::{ModelConfig, RopeScaling};
use crate::hf::names as hf_names;
use crate::hf::source::TensorSource;
use crate::hf::weights::WeightFiles;

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    /// (name, ggml dims, type, encoded data)
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(elem, items) => {
            out.extend(elem.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &str, value: MetaValue) {
        self.metadata.push((key.to_string(), value));
    }

    /// Adds a tensor given row-major (Hugging Face) `shape` and f32 `data`, encoded as `ty`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        data: &[f32],
    ) -> Result<()> {
        let bytes = dequant::encode(ty, data).ok_or_else(|| Error::Tensor {
            path: "GGUF output".into(),
            name: name.into(),
            message: format!("cannot encode {} values as {}", data.len(), ty.name()),
        })?;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name.to_string(), dims, ty, bytes));
        Ok(())
    }

    /// The whole file: header, metadata, tensor infos, then aligned tensor data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, dims, ty, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    /// Writes the file atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes())
    }
}

/// Tensor type of the exported matrices (`export-gguf --dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportDtype {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl ExportDtype {
    fn ggml(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
        }
    }
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// `general.sampling.*` from generation_config.json's defaults, as llama.cpp's converter records
/// them (llama.cpp's samplers start from these).
fn add_sampling(w: &mut GgufWriter, dir: &Path) -> Result<()> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(());
    }
    let g = crate::fsutil::read_json(&path)?;
    if let Some(k) = g.get("top_k").and_then(Value::as_i64) {
        let k = i32::try_from(k).unwrap_or(i32::MAX);
        w.add("general.sampling.top_k", MetaValue::I32(k));
    }
    for (hf, key) in [
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("temperature", "temp"),
        ("repetition_penalty", "penalty_repeat"),
    ] {
        if let Some(v) = g.get(hf).and_then(Value::as_f64) {
            w.add(&format!("general.sampling.{key}"), MetaValue::F32(v as f32));
        }
    }
    Ok(())
}

/// Whether `cfg` has what llama.cpp assumes of its architecture instead of reading it (see
/// [`crate::hf::arch::GgufArch::fixed`]); else what differs.
fn check_fixed(
    cfg: &ModelConfig,
    fixed: crate::hf::arch::GgufFixed,
) -> std::result::Result<(), String> {
    use crate::hf::config::{AttentionWindow, RopeConfig};
    let n = fixed.swa_pattern;
    for l in 0..cfg.num_layers {
        let kind = cfg.layer_attention(l);
        let slides = matches!(kind.window, AttentionWindow::Sliding(_));
        if fixed.slides(l) != slides && cfg.sliding_window().is_some() {
            return Err(format!(
                "layer {l} is {} but llama.cpp makes every {n}th layer full and the others sliding",
                if slides { "sliding" } else { "full" }
            ));
        }
        let local = RopeConfig {
            theta: fixed.swa_rope_base,
            scaling: RopeScaling::Default,
        };
        if slides && kind.rope != local {
            return Err(format!(
                "the sliding layers' RoPE is {:?} but llama.cpp uses base {} without scaling",
                kind.rope, fixed.swa_rope_base
            ));
        }
    }
    let scalar = match fixed.hidden_scale_layers {
        Some(layers) if layers == cfg.num_layers => cfg.hidden_size / cfg.num_heads,
        _ => cfg.head_dim,
    };
    let want = (1.0 / (scalar as f64).sqrt()) as f32;
    if cfg.attn_scale != want {
        return Err(format!(
            "scores are scaled by {} (query_pre_attn_scalar) but llama.cpp scales a {}-layer model by {want} \
             ({scalar}^-0.5)",
            cfg.attn_scale, cfg.num_layers
        ));
    }
    Ok(())
}

/// The llama.cpp architecture of `cfg`'s family, refused when llama.cpp has none or cannot
/// represent this model.
fn export_arch(dir: &Path, cfg: &ModelConfig) -> Result<GgufArch> {
    // Mistral is Llama in llama.cpp (its sliding window is not recorded, as llama.cpp does).
    let Some(gguf_arch) = cfg.family.gguf else {
        return Err(Error::Config {
            path: dir.join("config.json"),
            message: format!(
                "export-gguf does not write {} models yet (it writes {}); run the model with \
                 `wgspin generate` or convert it with llama.cpp's convert_hf_to_gguf.py",
                cfg.family.model_type,
                crate::hf::arch::supported_gguf_archs()
            ),
        });
    };
    if let Some(fixed) = gguf_arch.fixed {
        check_fixed(cfg, fixed).map_err(|message| Error::Config {
            path: dir.join("config.json"),
            message: format!(
                "llama.cpp's {} cannot represent this model: {message}",
                gguf_arch.name
            ),
        })?;
    }
    Ok(gguf_arch)
}

/// The parameter count llama.cpp records: every exported tensor, `rope_freqs.weight` included.
fn parameter_count(cfg: &ModelConfig) -> u64 {
    let mut params: u64 = hf_names::expected_tensors(cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    if matches!(cfg.rope.scaling, RopeScaling::Llama3 { .. }) {
        params += (cfg.head_dim / 2) as u64; // rope_freqs.weight, which llama.cpp counts too
    }
    params
}

fn u32_of(v: usize) -> MetaValue {
    MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX))
}

/// The `{arch}.*` hyperparameters llama.cpp reads (RoPE scaling apart).
fn add_hyperparameters(w: &mut GgufWriter, cfg: &ModelConfig, gguf_arch: GgufArch) {
    let arch = gguf_arch.name;
    let key = |k: &str| format!("{arch}.{k}");
    w.add(&key("context_length"), u32_of(cfg.max_position_embeddings));
    w.add(&key("embedding_length"), u32_of(cfg.hidden_size));
    w.add(&key("block_count"), u32_of(cfg.num_layers));
    w.add(&key("feed_forward_length"), u32_of(cfg.intermediate_size));
    w.add(&key("attention.head_count"), u32_of(cfg.num_heads));
    w.add(&key("attention.head_count_kv"), u32_of(cfg.num_kv_heads));
    w.add(&key("attention.key_length"), u32_of(cfg.head_dim));
    w.add(&key("attention.value_length"), u32_of(cfg.head_dim));
    w.add(&key("rope.dimension_count"), u32_of(cfg.head_dim));
    w.add(
        &key("rope.freq_base"),
        MetaValue::F32(cfg.rope.theta as f32),
    );
    w.add(
        &key("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(cfg.rms_norm_eps as f32),
    );
    w.add(&key("vocab_size"), u32_of(cfg.vocab_size));
    if gguf_arch.fixed.is_some()
        && let Some(window) = cfg.sliding_window()
    {
        w.add(&key("attention.sliding_window"), u32_of(window));
    }
}

/// The RoPE scaling keys; for Llama 3 scaling, also the per-frequency factors that become
/// `rope_freqs.weight`.
fn add_rope_scaling(w: &mut GgufWriter, cfg: &ModelConfig, arch: &str) -> Option<Vec<f32>> {
    match cfg.rope.scaling {
        RopeScaling::Default => None,
        RopeScaling::Linear { factor } => {
            w.add(
                &format!("{arch}.rope.scaling.type"),
                MetaValue::Str("linear".into()),
            );
            w.add(
                &format!("{arch}.rope.scaling.factor"),
                MetaValue::F32(factor as f32),
            );
            None
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let params = [
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            ];
            for (k, v) in super::LLAMA3_ROPE_KEYS.iter().zip(params) {
                w.add(k, MetaValue::F64(v));
            }
            Some(super::llama3_rope_factors(
                cfg.rope.theta,
                cfg.head_dim,
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            ))
        }
    }
}

/// Every weight under its llama.cpp name: norms shifted and q/k rows permuted as the architecture
/// stores them; vectors F32, matrices `dtype` (F16 for Q8_0 rows that are not whole blocks).
fn add_weights(
    w: &mut GgufWriter,
    cfg: &ModelConfig,
    files: &WeightFiles,
    gguf_arch: GgufArch,
    dtype: ExportDtype,
) -> Result<()> {
    for (hf_name, shape) in hf_names::expected_tensors(cfg) {
        let r = names::from_hf(&hf_name).ok_or_else(|| Error::Tensor {
            path: files.source_path(&hf_name),
            name: hf_name.clone(),
            message: "has no GGUF name".into(),
        })?;
        let t = files.read_tensor(&hf_name)?;
        let mut data = t.data;
        if gguf_arch.norm_shift != 0.0 && r.is_norm() {
            data.iter_mut().for_each(|x| *x += gguf_arch.norm_shift);
        }
        if gguf_arch.permute_qk
            && let Some(heads) = names::permuted_heads(r, cfg.num_heads, cfg.num_kv_heads)
        {
            data =
                names::permute_rows(&data, shape[0], heads, true).ok_or_else(|| Error::Tensor {
                    path: files.source_path(&hf_name),
                    name: hf_name.clone(),
                    message: format!("rows do not split into {heads} RoPE heads"),
                })?;
        }
        let ty = if shape.len() < 2 {
            GgmlType::F32
        } else if dtype == ExportDtype::Q8_0 && shape.last().is_some_and(|c| c % 32 != 0) {
            GgmlType::F16
        } else {
            dtype.ggml()
        };
        w.add_tensor(&r.gguf_name(cfg.sandwich_norms), &shape, ty, &data)?;
    }
    Ok(())
}

/// Converts a Hugging Face folder to a GGUF file at `out` (written atomically).
pub fn export_hf_folder(dir: &Path, out: &Path, dtype: ExportDtype) -> Result<()> {
    let cfg = ModelConfig::from_dir(dir)?;
    let files = WeightFiles::open_dir(dir)?;
    crate::hf::validate::validate(&cfg, &files)?;
    let gguf_arch = export_arch(dir, &cfg)?;
    let mut w = GgufWriter::new();
    w.add(
        "general.architecture",
        MetaValue::Str(gguf_arch.name.into()),
    );
    let config_json = crate::fsutil::read_json(&dir.join("config.json"))?;
    let card = crate::hf::card::folder_card(dir, &config_json)?;
    for (key, value) in super::card::gguf_metadata(&card, parameter_count(&cfg)) {
        w.add(&key, value);
    }
    add_sampling(&mut w, dir)?;
    w.add("general.file_type", MetaValue::U32(dtype.file_type()));
    w.add("general.quantization_version", MetaValue::U32(2));
    add_hyperparameters(&mut w, &cfg, gguf_arch);
    let rope_freqs = add_rope_scaling(&mut w, &cfg, gguf_arch.name);
    for (key, value) in super::writer_tokenizer::tokenizer_metadata(dir, &cfg)? {
        w.add(&key, value);
    }
    add_weights(&mut w, &cfg, &files, gguf_arch, dtype)?;
    if let Some(f) = rope_freqs {
        w.add_tensor(names::ROPE_FREQS, &[f.len()], GgmlType::F32, &f)?;
    }
    w.write(out)
}

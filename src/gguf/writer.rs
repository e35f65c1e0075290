//! GGUF writing for `wgspin export-gguf`: a Hugging Face folder (Llama / Mistral as arch `llama`
//! with q/k rows permuted the way llama.cpp expects, Qwen2 as arch `qwen2`) → one GGUF v3 file with
//! llama.cpp tensor names, model metadata, the byte-level BPE tokenizer of `tokenizer.json`
//! (`tokenizer.ggml.model = gpt2`, tokens, token types, merges, `pre`) and the chat template.
//! Norms and biases stay F32 (as llama.cpp writes them); matrices use the requested type
//! (F32, F16 or Q8_0; Q8_0 falls back to F16 for rows that are not whole 32-value blocks).

use std::path::Path;

use serde_json::Value;

use super::dequant::{self, GgmlType};
use super::names;
use super::reader::{DEFAULT_ALIGNMENT, MAGIC, MetaValue};
use super::tokenizer::{
    LLAMA3_REGEX, QWEN2_REGEX, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED,
};
use crate::error::{Error, Result};
use crate::hf::config::{ModelConfig, RopeScaling};
use crate::hf::names as hf_names;
use crate::hf::source::TensorSource;
use crate::hf::weights::WeightFiles;

/// llama.cpp's `LLAMA_TOKEN_TYPE_UNUSED`, for padding the vocabulary up to the embedding rows.
const TOKEN_UNUSED: i32 = 5;

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

fn strings(items: impl IntoIterator<Item = String>) -> MetaValue {
    MetaValue::Array(8, items.into_iter().map(MetaValue::Str).collect())
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

/// `tokenizer.ggml.pre` matching a tokenizer.json pre-tokenizer, `None` when llama.cpp has none.
fn detect_pre(pre: &Value) -> Option<&'static str> {
    let items: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        Some(_) => vec![pre],
        None => return None,
    };
    let kinds: Vec<&str> = items
        .iter()
        .filter_map(|p| p.get("type").and_then(Value::as_str))
        .collect();
    let regex = items
        .iter()
        .find_map(|p| p.get("pattern")?.get("Regex")?.as_str());
    match (kinds.as_slice(), regex) {
        (["Digits", "ByteLevel"], None)
            if items[0].get("individual_digits") == Some(&Value::Bool(true)) =>
        {
            Some("smollm")
        }
        (["Split", "ByteLevel"], Some(r)) if r == LLAMA3_REGEX => Some("llama-bpe"),
        (["Split", "ByteLevel"], Some(r)) if r == QWEN2_REGEX => Some("qwen2"),
        (["ByteLevel"], None) => Some("gpt2"),
        _ => None,
    }
}

fn merge_string(m: &Value) -> Option<String> {
    match m {
        Value::String(s) => Some(s.clone()),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(a), Value::String(b)] => Some(format!("{a} {b}")),
            _ => None,
        },
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::fsutil::read_text(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Adds the `tokenizer.*` metadata of a folder's byte-level BPE `tokenizer.json`.
fn add_tokenizer(w: &mut GgufWriter, dir: &Path, cfg: &ModelConfig) -> Result<()> {
    let tok_path = dir.join("tokenizer.json");
    let tj = read_json(&tok_path)?;
    let err = |message: String| Error::Tokenizer {
        path: tok_path.clone(),
        message,
    };
    let model = tj.get("model").ok_or_else(|| err("no `model`".into()))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(err(
            "export-gguf supports byte-level BPE tokenizers only".into()
        ));
    }
    let pre = detect_pre(tj.get("pre_tokenizer").unwrap_or(&Value::Null)).ok_or_else(|| {
        err("its pre-tokenizer matches none of llama.cpp's (smollm, llama-bpe, qwen2, gpt2)".into())
    })?;
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| err("no BPE vocab".into()))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![];
    let mut set = |id: u64, s: &str, ty: i32| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < cfg.vocab_size)
            .ok_or_else(|| {
                err(format!(
                    "token id {id} is outside the model's vocab_size {}",
                    cfg.vocab_size
                ))
            })?;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((s.to_string(), ty));
        Ok(())
    };
    for (s, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("vocab id of {s:?} is not an integer")))?;
        set(id, s, TOKEN_NORMAL)?;
    }
    for a in tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(s)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            return Err(err(format!("malformed added token {a}")));
        };
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        set(
            id,
            s,
            if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            },
        )?;
    }
    // Embedding rows beyond the tokenizer become unused padding tokens, as convert_hf_to_gguf.py does.
    tokens.resize(cfg.vocab_size, None);
    let (names, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED)))
        .unzip();
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| err("no BPE merges".into()))?
        .iter()
        .map(|m| merge_string(m).ok_or_else(|| err(format!("malformed merge {m}"))))
        .collect::<Result<Vec<_>>>()?;
    let chat = crate::hf::tokenizer::ChatTokenizer::from_dir(dir, &cfg.eos_token_ids)?;
    let cfg_path = dir.join("tokenizer_config.json");
    let tcfg = if cfg_path.exists() {
        read_json(&cfg_path)?
    } else {
        Value::Null
    };
    let id_of = |key: &str| {
        let s = crate::hf::tokenizer::token_string(tcfg.get(key)?)?;
        names.iter().position(|n| *n == s).map(|i| i as u32)
    };
    let unk = id_of("unk_token");
    let flags = super::add_tokens::add_tokens(&tj, &tcfg);
    let template = if dir.join("chat_template.jinja").exists() {
        Some(
            std::fs::read_to_string(dir.join("chat_template.jinja"))
                .map_err(|e| Error::io(dir.join("chat_template.jinja"), e))?,
        )
    } else {
        match tcfg.get("chat_template") {
            Some(v) => crate::hf::chat_template::select_template(v)?,
            None => None,
        }
    };
    w.add("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
    w.add("tokenizer.ggml.pre", MetaValue::Str(pre.into()));
    w.add("tokenizer.ggml.tokens", strings(names));
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::Array(5, types.into_iter().map(MetaValue::I32).collect()),
    );
    w.add("tokenizer.ggml.merges", strings(merges));
    w.add(
        "tokenizer.ggml.eos_token_id",
        MetaValue::U32(chat.eos_token_id),
    );
    if let Some(b) = chat.bos_token_id {
        w.add("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(p) = chat.pad_token_id {
        w.add("tokenizer.ggml.padding_token_id", MetaValue::U32(p));
    }
    if let Some(u) = unk {
        w.add("tokenizer.ggml.unknown_token_id", MetaValue::U32(u));
    }
    // A BOS flag without a BOS token would make llama.cpp prepend token 0.
    let flags = [
        ("bos", flags.bos.map(|b| b && chat.bos_token_id.is_some())),
        ("eos", flags.eos),
        ("sep", flags.sep),
    ];
    for (kind, flag) in flags {
        if let Some(b) = flag {
            w.add(
                &format!("tokenizer.ggml.add_{kind}_token"),
                MetaValue::Bool(b),
            );
        }
    }
    if let Some(t) = template {
        w.add("tokenizer.chat_template", MetaValue::Str(t));
    }
    Ok(())
}

/// `general.sampling.*` from generation_config.json's defaults, as llama.cpp's converter records
/// them (llama.cpp's samplers start from these).
fn add_sampling(w: &mut GgufWriter, dir: &Path) -> Result<()> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(());
    }
    let g = read_json(&path)?;
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

/// Converts a Hugging Face folder to a GGUF file at `out` (written atomically).
pub fn export_hf_folder(dir: &Path, out: &Path, dtype: ExportDtype) -> Result<()> {
    let cfg = ModelConfig::from_dir(dir)?;
    let files = WeightFiles::open_dir(dir)?;
    crate::hf::validate::validate(&cfg, &files)?;
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
    let arch = gguf_arch.name;
    if let Some(fixed) = gguf_arch.fixed {
        check_fixed(&cfg, fixed).map_err(|message| Error::Config {
            path: dir.join("config.json"),
            message: format!("llama.cpp's {arch} cannot represent this model: {message}"),
        })?;
    }
    let mut w = GgufWriter::new();
    let key = |k: &str| format!("{arch}.{k}");
    let u32_of = |v: usize| MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
    w.add("general.architecture", MetaValue::Str(arch.into()));
    let config_json = read_json(&dir.join("config.json"))?;
    let card = crate::hf::card::folder_card(dir, &config_json)?;
    let mut params: u64 = hf_names::expected_tensors(&cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    if matches!(cfg.rope.scaling, RopeScaling::Llama3 { .. }) {
        params += (cfg.head_dim / 2) as u64; // rope_freqs.weight, which llama.cpp counts too
    }
    for (key, value) in super::card::gguf_metadata(&card, params) {
        w.add(&key, value);
    }
    add_sampling(&mut w, dir)?;
    w.add("general.file_type", MetaValue::U32(dtype.file_type()));
    w.add("general.quantization_version", MetaValue::U32(2));
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
    let mut rope_freqs = None;
    match cfg.rope.scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            w.add(&key("rope.scaling.type"), MetaValue::Str("linear".into()));
            w.add(&key("rope.scaling.factor"), MetaValue::F32(factor as f32));
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
            rope_freqs = Some(super::llama3_rope_factors(
                cfg.rope.theta,
                cfg.head_dim,
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            ));
        }
    }
    add_tokenizer(&mut w, dir, &cfg)?;
    for (hf_name, shape) in hf_names::expected_tensors(&cfg) {
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
    if let Some(f) = rope_freqs {
        w.add_tensor(names::ROPE_FREQS, &[f.len()], GgmlType::F32, &f)?;
    }
    w.write(out)
}

//! Model families as data. Every family wgspin runs is one file here: its `model_type`, how its
//! `config.json` maps onto the one decoder (norm kind, activation, per-head q/k norms, sandwich
//! norms, embedding and attention scales, which layers slide and with which RoPE), its biases, its
//! llama.cpp architecture, and the options it has that wgspin refuses by name. Config resolution
//! (`hf/config.rs`), the name table, the loader, the decode weights, the kernels' templates, the
//! memory plan and GGUF in and out read the resolved [`super::config::ModelConfig`], never a
//! `model_type`. Adding a family is one file and one line in [`FAMILIES`].

// A family states what differs from the one it resembles (`..llama::FAMILY`).
mod gemma3;
mod llama;
mod mistral;
mod qwen2;
mod qwen3;

use serde_json::Value;

use super::config_json::HfConfig;

/// How a norm applies its learned weight `w` to the normalised `x̂`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `w · x̂`, `x̂` cast back to the activations' dtype first (Llama's RMSNorm).
    Scale,
    /// `(1 + w) · x̂`, all in f32 (Gemma's RMSNorm; its weights are stored centred on 0).
    OffsetScale,
}

impl NormKind {
    /// What is added to the stored weight before it scales.
    pub fn offset(self) -> f32 {
        match self {
            NormKind::Scale => 0.0,
            NormKind::OffsetScale => 1.0,
        }
    }
}

/// The gate's activation of the gated MLP `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (`silu`).
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// The Hugging Face spellings, as `hidden_act` / `hidden_activation` write them.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// Which projections carry biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Biases {
    pub qkv: bool,
    pub o: bool,
    pub mlp: bool,
}

/// A layer's kind of attention, as `layer_types` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    Full,
    Sliding,
}

/// llama.cpp's view of a family: its architecture name and how its tensors differ from the
/// Hugging Face ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GgufArch {
    /// `general.architecture`.
    pub name: &'static str,
    /// q/k rows interleaved per RoPE pair (llama.cpp's `llama` layout) rather than in halves.
    pub permute_qk: bool,
    /// Added to every norm weight in the file (llama.cpp's gemma3 stores `1 + w`).
    pub norm_shift: f32,
    /// What llama.cpp fixes instead of reading it from the file, which a model must match to be
    /// exported: every n-th layer full and the others sliding, the sliding layers' RoPE base,
    /// and scores scaled by `head_dim^-0.5`; such an architecture also writes and reads
    /// `ARCH.attention.sliding_window`.
    pub fixed: Option<GgufFixed>,
}

/// See [`GgufArch::fixed`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GgufFixed {
    pub swa_pattern: usize,
    pub swa_rope_base: f64,
    /// A model of this many layers has scores scaled by `(hidden / heads)^-0.5` instead (llama.cpp
    /// tells Gemma 3 27B by its 62 layers).
    pub hidden_scale_layers: Option<usize>,
}

impl GgufFixed {
    /// Whether layer `l` slides in this fixed pattern.
    pub fn slides(&self, l: usize) -> bool {
        pattern_slides(l, self.swa_pattern)
    }
}

/// Every `n`-th layer full, the others sliding (Gemma's `sliding_window_pattern`).
pub fn pattern_slides(l: usize, n: usize) -> bool {
    !(l + 1).is_multiple_of(n)
}

/// One family: what its `config.json` means for the shared decoder.
#[derive(Debug)]
pub struct Family {
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// The transformers class (`architectures[0]`) of a config this family writes.
    pub class: &'static str,
    pub norm: NormKind,
    /// The config keys naming the MLP activation, first found wins, and the default.
    pub activation_keys: &'static [&'static str],
    pub default_activation: Activation,
    /// An RMSNorm over each head's q and k (before RoPE), `self_attn.{q,k}_norm.weight`.
    pub qk_norm: bool,
    /// Norms after attention and after the MLP as well as before them (Gemma's four per layer).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by √hidden_size.
    pub embed_scale: bool,
    /// The `rms_norm_eps` when config.json has none.
    pub default_eps: f64,
    /// `tie_word_embeddings` when config.json has none (transformers leaves the key out when it
    /// equals the class default: Gemma 3's configs on the Hub do not write it, and tie).
    pub default_tied: bool,
    pub biases: fn(&HfConfig) -> Biases,
    /// The layer kinds when config.json has no `layer_types` (`None`: every layer full).
    pub layer_types: fn(&HfConfig, usize) -> Option<Vec<LayerType>>,
    /// The sliding window sliding layers use, from the family's keys (`None`: no window).
    pub sliding_window: fn(&HfConfig) -> Option<Value>,
    /// The key of the sliding layers' own RoPE base, when the family has one
    /// (`rope_local_base_freq`).
    pub local_rope_base_key: Option<&'static str>,
    /// The key whose `value^-0.5` scales attention scores instead of `head_dim^-0.5`.
    pub attn_scale_key: Option<&'static str>,
    /// Config keys that must be absent, null or false, with what they are (wgspin does not
    /// implement them).
    pub refused: &'static [(&'static str, &'static str)],
    pub gguf: Option<GgufArch>,
}

/// Every family wgspin runs.
pub static FAMILIES: &[&Family] = &[
    &llama::FAMILY,
    &mistral::FAMILY,
    &qwen2::FAMILY,
    &qwen3::FAMILY,
    &gemma3::FAMILY,
];

/// The family of a `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_type == model_type)
}

/// The family llama.cpp calls `name`.
pub fn by_gguf_arch(name: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.gguf.is_some_and(|g| g.name == name))
}

/// The supported `model_type`s, comma-separated (for errors and docs).
pub fn supported_model_types() -> String {
    FAMILIES
        .iter()
        .map(|f| f.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The architectures a GGUF file may have, comma-separated.
pub fn supported_gguf_archs() -> String {
    let mut names: Vec<&str> = FAMILIES
        .iter()
        .filter_map(|f| f.gguf.map(|g| g.name))
        .collect();
    names.dedup();
    names.join(", ")
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.model_type == other.model_type
    }
}

/// A `bool` config key, false when absent or null.
fn flag(cfg: &HfConfig, key: &str) -> bool {
    cfg.extra.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// `attention_bias` on q/k/v/o and `mlp_bias` on the MLP (Llama's and Mistral's rule).
fn llama_biases(cfg: &HfConfig) -> Biases {
    let attention = flag(cfg, "attention_bias");
    Biases {
        qkv: attention,
        o: attention,
        mlp: flag(cfg, "mlp_bias"),
    }
}

/// `attention_bias` on q/k/v/o, never on the MLP (Qwen3's and Gemma 3's rule).
fn attention_biases(cfg: &HfConfig) -> Biases {
    let attention = flag(cfg, "attention_bias");
    Biases {
        qkv: attention,
        o: attention,
        mlp: false,
    }
}

/// No per-family default: every layer full unless `layer_types` says otherwise.
fn all_full(_: &HfConfig, _: usize) -> Option<Vec<LayerType>> {
    None
}

/// `sliding_window` as written.
fn plain_window(cfg: &HfConfig) -> Option<Value> {
    cfg.extra.get("sliding_window").cloned()
}

/// Qwen2/Qwen3 write a `sliding_window` value but use it only with `use_sliding_window`.
fn qwen_window(cfg: &HfConfig) -> Option<Value> {
    if flag(cfg, "use_sliding_window") {
        plain_window(cfg)
    } else {
        None
    }
}

/// transformers' `max_window_layers` when config.json has none (Qwen2Config, Qwen3Config).
const DEFAULT_MAX_WINDOW_LAYERS: u64 = 28;

/// Qwen's layers without `layer_types`: sliding from `max_window_layers` on when the window is on.
fn qwen_layer_types(cfg: &HfConfig, layers: usize) -> Option<Vec<LayerType>> {
    if !flag(cfg, "use_sliding_window") {
        return None;
    }
    let from = cfg
        .extra
        .get("max_window_layers")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_WINDOW_LAYERS) as usize;
    Some(
        (0..layers)
            .map(|i| {
                if i >= from {
                    LayerType::Sliding
                } else {
                    LayerType::Full
                }
            })
            .collect(),
    )
}

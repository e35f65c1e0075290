//! The decoder-only transformer every family of `hf/arch/` shares: token embeddings (scaled for
//! Gemma), `num_layers` pre-norm blocks (RMSNorm → attention → residual, RMSNorm → gated MLP →
//! residual; with sandwich norms the attention and MLP outputs are normed too), a final RMSNorm
//! and the lm_head (tied to the embeddings or not). Layers differ only in their attention kind
//! (full or sliding, each with its RoPE).

pub mod attention;
pub mod fused;
pub mod layers;
pub mod loader;
pub mod lora;
pub mod named;
pub mod peft_targets;
pub mod precision;
pub mod random_init;
pub mod rope;
pub mod static_cache;
pub mod targets;

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

pub use attention::KvCache;
pub use attention::StepContext;
use attention::{Attention, LayerCache, build_mask};
use layers::{Mlp, RmsNorm};
use precision::like;
use rope::Rope;

use crate::hf::config::{AttentionWindow, ModelConfig};

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_norm: RmsNorm,
    pub attn: Attention,
    /// Sandwich norms only: the norm of the attention output (HF `post_attention_layernorm`).
    pub attn_out_norm: Option<RmsNorm>,
    /// The norm before the MLP (HF `post_attention_layernorm`, or `pre_feedforward_layernorm`
    /// with sandwich norms).
    pub post_attn_norm: RmsNorm,
    pub mlp: Mlp,
    /// Sandwich norms only: the norm of the MLP output (HF `post_feedforward_layernorm`).
    pub mlp_out_norm: Option<RmsNorm>,
    /// Index of this layer's attention kind in [`Transformer::kinds`].
    pub kind: usize,
}

/// `x` through `norm` when there is one.
fn maybe_norm(norm: &Option<RmsNorm>, x: Tensor<3>) -> Tensor<3> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

impl DecoderLayer {
    pub fn forward(&self, x: Tensor<3>, ctx: &StepContext, cache: LayerCache) -> Tensor<3> {
        let a = self
            .attn
            .forward(self.input_norm.forward(x.clone()), ctx, cache);
        let h = x + maybe_norm(&self.attn_out_norm, a);
        let m = self.mlp.forward(self.post_attn_norm.forward(h.clone()));
        h + maybe_norm(&self.mlp_out_norm, m)
    }
}

/// One kind of attention layer as the model runs it: its RoPE frequencies and its window.
#[derive(Debug, Clone)]
pub struct LayerKind {
    pub rope: Rope,
    pub window: AttentionWindow,
}

#[derive(Module, Debug)]
pub struct Transformer {
    /// `[vocab, hidden]`
    pub embed: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Param<Tensor<2>>>,
    /// The attention kinds the layers index (`DecoderLayer::kind`).
    #[module(skip)]
    pub kinds: Vec<LayerKind>,
    /// Factor on the embeddings (Gemma: √hidden), applied in the compute dtype.
    #[module(skip)]
    pub embed_scale: Option<f32>,
    /// The activations' dtype (see [`precision`]); f32 unless training asks for f16.
    #[module(skip)]
    pub compute: DType,
}

/// The per-pass constants of a cache-free forward (training, scoring): RoPE angles and the mask
/// of each attention kind.
pub struct PassContext {
    kinds: Vec<(Tensor<4>, Tensor<4>, Tensor<5>)>,
}

impl PassContext {
    /// What a layer of attention kind `kind` reads.
    pub fn step(&self, kind: usize) -> StepContext<'_> {
        let (cos, sin, mask) = &self.kinds[kind];
        StepContext { cos, sin, mask }
    }
}

/// A batch of token rows for one forward step. Rows have equal length; padding slots carry any
/// token id and position `None`.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// `[batch][seq]`
    pub tokens: Vec<Vec<u32>>,
    /// `[batch][seq]` position of each token, `None` for padding.
    pub positions: Vec<Vec<Option<usize>>>,
}

impl StepInput {
    /// Whether every row is positions 0, 1, … followed by padding only.
    pub fn is_right_padded(&self) -> bool {
        self.positions.iter().all(|row| {
            let len = row.iter().take_while(|p| p.is_some()).count();
            row[..len].iter().enumerate().all(|(i, p)| *p == Some(i))
                && row[len..].iter().all(Option::is_none)
        })
    }

    /// Right-padded rows starting at position 0 (scoring and training).
    pub fn right_padded(rows: &[Vec<u32>], pad_id: u32) -> Self {
        Self::right_padded_to(rows, pad_id, 0)
    }

    /// [`Self::right_padded`] to at least `len` tokens per row.
    pub fn right_padded_to(rows: &[Vec<u32>], pad_id: u32, len: usize) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(len);
        let mut tokens = vec![];
        let mut positions = vec![];
        for r in rows {
            let mut t = r.clone();
            t.resize(len, pad_id);
            tokens.push(t);
            positions.push((0..len).map(|p| (p < r.len()).then_some(p)).collect());
        }
        Self { tokens, positions }
    }
}

/// The additive mask `[1, 1, 1, s, s]` of right-padded rows without a cache, made on the
/// device: causal (and within the sliding window). A real query at position i sees keys 0..=i,
/// all real in a right-padded row, so padding needs no mask of its own; padded queries attend
/// to padding, and their outputs are never read.
fn causal_mask(s: usize, window: AttentionWindow, device: &Device) -> Tensor<5> {
    let q = Tensor::<1, Int>::arange(0..s as i64, device).reshape([s, 1]);
    let k = Tensor::<1, Int>::arange(0..s as i64, device).reshape([1, s]);
    let (q, k) = (q.expand([s, s]), k.expand([s, s]));
    let mut hidden = k.clone().greater(q.clone());
    if let AttentionWindow::Sliding(w) = window {
        hidden = hidden.bool_or(q.sub(k).greater_equal_elem(w as i64));
    }
    hidden
        .float()
        .mul_scalar(attention::MASKED)
        .reshape([1, 1, 1, s, s])
}

impl Transformer {
    /// The attention kinds of `cfg` as the model runs them.
    pub fn config_kinds(cfg: &ModelConfig) -> Vec<LayerKind> {
        cfg.attention
            .iter()
            .map(|k| LayerKind {
                rope: Rope::new(&k.rope, cfg.head_dim),
                window: k.window,
            })
            .collect()
    }

    pub fn device(&self) -> Device {
        self.embed.val().device()
    }

    /// The token embeddings of `input` in the compute dtype `[batch, seq, hidden]`.
    pub fn embed_tokens(&self, input: &StepInput) -> Tensor<3> {
        let b = input.tokens.len();
        let s = input.tokens.first().map_or(0, Vec::len);
        let ids: Vec<i32> = input.tokens.iter().flatten().map(|&t| t as i32).collect();
        crate::device::traffic::uploaded(1);
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * s]), &self.device());
        let hidden = self.embed.val().dims()[1];
        let x = self.embed.val().select(0, ids).reshape([b, s, hidden]); // [b, s, hidden]
        let x = like(x, self.compute);
        match self.embed_scale {
            Some(f) => x.mul_scalar(f),
            None => x,
        }
    }

    /// cos and sin of `input`'s positions (padding at 0) in the compute dtype, per kind.
    fn angles(&self, input: &StepInput) -> Vec<(Tensor<4>, Tensor<4>)> {
        let rope_pos: Vec<Vec<usize>> = input
            .positions
            .iter()
            .map(|r| r.iter().map(|p| p.unwrap_or(0)).collect())
            .collect();
        self.kinds
            .iter()
            .map(|k| {
                let (cos, sin) = k.rope.angles(&rope_pos, &self.device());
                (like(cos, self.compute), like(sin, self.compute))
            })
            .collect()
    }

    /// What every layer of a cache-free forward over right-padded `input` shares.
    pub fn pass_context(&self, input: &StepInput) -> PassContext {
        let s = input.tokens.first().map_or(0, Vec::len);
        let device = self.device();
        let kinds = self
            .angles(input)
            .into_iter()
            .zip(&self.kinds)
            .map(|((cos, sin), k)| {
                let mask = if input.is_right_padded() {
                    causal_mask(s, k.window, &device)
                } else {
                    build_mask(&input.positions, &input.positions, k.window, &device)
                };
                (cos, sin, mask)
            })
            .collect();
        PassContext { kinds }
    }

    /// Final hidden states (after the last norm) `[batch, seq, hidden]`. With a cache, the step's
    /// tokens follow the cached slots and are appended to them.
    pub fn forward_hidden(&self, input: &StepInput, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let device = self.device();
        let s = input.tokens.first().map_or(0, Vec::len);
        let mut x = self.embed_tokens(input);
        let key_pos: Vec<Vec<Option<usize>>> = match &cache {
            Some(c) if !c.key_pos.is_empty() => c
                .key_pos
                .iter()
                .zip(&input.positions)
                .map(|(cached, new)| cached.iter().chain(new).copied().collect())
                .collect(),
            _ => input.positions.clone(),
        };
        let fresh = cache.as_ref().is_none_or(|c| c.key_pos.is_empty()) && input.is_right_padded();
        let kinds: Vec<_> = self
            .angles(input)
            .into_iter()
            .zip(&self.kinds)
            .map(|((cos, sin), k)| {
                let mask = if fresh {
                    causal_mask(s, k.window, &device)
                } else {
                    build_mask(&input.positions, &key_pos, k.window, &device)
                };
                (cos, sin, mask)
            })
            .collect();
        let ctx = PassContext { kinds };
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &ctx.step(layer.kind), slot);
        }
        if let Some(c) = cache {
            c.key_pos = key_pos;
        }
        self.norm.forward(x)
    }

    /// lm_head weight `[vocab, hidden]`.
    pub fn head_weight(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed.val(),
        }
    }

    /// Logits for hidden states `[..., hidden]` → `[..., vocab]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        let w = like(self.head_weight(), hidden.dtype());
        burn::tensor::module::linear(hidden, w.transpose(), None)
    }

    /// Full logits `[batch, seq, vocab]`.
    pub fn forward(&self, input: &StepInput, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.logits(self.forward_hidden(input, cache))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

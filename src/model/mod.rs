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
use attention::{Attention, LayerCache, positions_tensor, window_width};
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

/// The per-pass constants of a forward: RoPE angles per attention kind, the positions of the
/// queries and keys, and each kind's window.
pub struct PassContext {
    /// Per kind: `(cos, sin)` `[batch, 1, seq, head_dim/2]` and its window (0: none).
    kinds: Vec<(Tensor<4>, Tensor<4>, u32)>,
    /// `[batch, seq]`, −1 for padding.
    qpos: Tensor<2, Int>,
    /// `[batch, cached + seq]`, −1 for padding.
    kpos: Tensor<2, Int>,
}

impl PassContext {
    /// What a layer of attention kind `kind` reads.
    pub fn step(&self, kind: usize) -> StepContext<'_> {
        let (cos, sin, window) = &self.kinds[kind];
        StepContext {
            cos,
            sin,
            qpos: &self.qpos,
            kpos: &self.kpos,
            window: *window,
        }
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

    /// The per-kind angles and windows of `input`, with its queries over `key_pos`.
    fn context(&self, input: &StepInput, key_pos: &[Vec<Option<usize>>]) -> PassContext {
        let device = self.device();
        let kinds = self
            .angles(input)
            .into_iter()
            .zip(&self.kinds)
            .map(|((cos, sin), k)| (cos, sin, window_width(k.window)))
            .collect();
        let qpos = positions_tensor(&input.positions, &device);
        // Without cached slots the keys are the queries: one upload serves both.
        let kpos = if key_pos == input.positions.as_slice() {
            qpos.clone()
        } else {
            crate::device::traffic::uploaded(1);
            positions_tensor(key_pos, &device)
        };
        crate::device::traffic::uploaded(1);
        PassContext { kinds, qpos, kpos }
    }

    /// What every layer of a cache-free forward over `input` shares.
    pub fn pass_context(&self, input: &StepInput) -> PassContext {
        self.context(input, &input.positions)
    }

    /// Final hidden states (after the last norm) `[batch, seq, hidden]`. With a cache, the step's
    /// tokens follow the cached slots and are appended to them.
    pub fn forward_hidden(&self, input: &StepInput, mut cache: Option<&mut KvCache>) -> Tensor<3> {
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
        let ctx = self.context(input, &key_pos);
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

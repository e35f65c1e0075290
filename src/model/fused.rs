//! The weights of a generation run in the layout and dtype its decode step reads: q/k/v as one
//! matrix and gate/up as one, so a step runs two matmuls where the checkpoint layout needs five,
//! and every weight the step touches in the model's compute dtype.
//!
//! The model keeps its Hugging Face layout (one weight per name: that is what training updates
//! and checkpoints write); a generation run builds these once, at its start, and drops them at
//! its end. They hold a second copy of q/k/v and gate/up (about two thirds of a layer's weights)
//! for the length of the run. The other weights are the model's own tensors where they are
//! already in the compute dtype (a model prepared by [`super::precision::set_compute`] stores
//! them so), else cast copies: a step then casts nothing, where casting each weight per step
//! would cost a launch and a read of every weight.

use burn::tensor::{DType, Tensor};

use super::Transformer;
use super::layers::{Linear, RmsNorm};
use super::precision::like;
use crate::hf::config::Activation;

/// One layer's weights for decoding.
#[derive(Debug, Clone)]
pub struct FusedLayer {
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`: q rows, then k, then v.
    pub qkv: Tensor<2>,
    /// `[(heads + 2·kv_heads)·head_dim]`, zeros where the model has no such bias.
    pub qkv_bias: Tensor<1>,
    /// `[hidden, heads·head_dim]` and its bias.
    pub o: (Tensor<2>, Option<Tensor<1>>),
    /// `[2·intermediate, hidden]`: gate rows, then up.
    pub gate_up: Tensor<2>,
    /// `[2·intermediate]`, `None` when neither has a bias.
    pub gate_up_bias: Option<Tensor<1>>,
    /// `[hidden, intermediate]` and its bias.
    pub down: (Tensor<2>, Option<Tensor<1>>),
    pub intermediate: usize,
    /// The factors of the norm before attention and of the one before the MLP `[hidden]`
    /// (`1 + w` for Gemma's norms: the kernels scale by what they are given).
    pub input_norm: Tensor<1>,
    pub post_attn_norm: Tensor<1>,
    /// Sandwich norms: the factors of the attention output's and the MLP output's norms.
    pub attn_out_norm: Option<Tensor<1>>,
    pub mlp_out_norm: Option<Tensor<1>>,
    /// Per-head q and k norms' factors `[head_dim]` each (applied after the bias, before RoPE,
    /// in the RoPE kernel).
    pub qk_norm: Option<(Tensor<1>, Tensor<1>)>,
    /// Whether the gated MLP's activation is GELU-tanh (else SiLU).
    pub gelu: bool,
}

/// Every weight of one generation run's decode steps, in [`DecodeWeights::dtype`].
#[derive(Debug, Clone)]
pub struct DecodeWeights {
    pub layers: Vec<FusedLayer>,
    /// `[vocab, hidden]`, the rows a step's tokens look up.
    pub embed: Tensor<2>,
    /// The final norm's weight `[hidden]`.
    pub norm: Tensor<1>,
    /// `[vocab, hidden]` (the same tensor as `embed` when the model ties them).
    pub head: Tensor<2>,
    /// The compute dtype: the model's activations' dtype.
    pub dtype: DType,
}

/// Weights of `parts` stacked along the output dimension, and their biases (zeros for a part
/// without one; `None` when no part has one), in `dtype`.
fn stack(parts: &[&Linear], dtype: DType) -> (Tensor<2>, Option<Tensor<1>>) {
    let weight = Tensor::cat(
        parts
            .iter()
            .map(|l| like(l.effective_weight(), dtype))
            .collect(),
        0,
    );
    let bias = parts.iter().any(|l| l.bias.is_some()).then(|| {
        let device = weight.device();
        let each = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => like(b.val(), dtype),
                None => Tensor::zeros([l.weight.val().dims()[0]], (&device, dtype)),
            })
            .collect();
        Tensor::cat(each, 0)
    });
    (weight, bias)
}

/// A projection's weight (any adapter folded in) and bias in `dtype`.
fn single(l: &Linear, dtype: DType) -> (Tensor<2>, Option<Tensor<1>>) {
    (
        like(l.effective_weight(), dtype),
        l.bias.as_ref().map(|b| like(b.val(), dtype)),
    )
}

fn norm_weight(n: &RmsNorm, dtype: DType) -> Tensor<1> {
    like(n.effective_weight(), dtype)
}

impl DecodeWeights {
    /// `model`'s weights for decoding in its compute dtype (`model.compute`).
    pub fn new(model: &Transformer) -> Self {
        let dtype = model.compute;
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let a = &layer.attn;
                let (qkv, qkv_bias) = stack(&[&a.q, &a.k, &a.v], dtype);
                let rows = qkv.dims()[0];
                let zeros = || Tensor::zeros([rows], (&qkv.device(), dtype));
                let qk_norm = match (&a.q_norm, &a.k_norm) {
                    (Some(q), Some(k)) => Some((norm_weight(q, dtype), norm_weight(k, dtype))),
                    _ => None,
                };
                let qkv_bias = qkv_bias.unwrap_or_else(zeros);
                let m = &layer.mlp;
                let (gate_up, gate_up_bias) = stack(&[&m.gate, &m.up], dtype);
                FusedLayer {
                    qkv,
                    qkv_bias,
                    o: single(&a.o, dtype),
                    intermediate: m.gate.weight.val().dims()[0],
                    gate_up,
                    gate_up_bias,
                    down: single(&m.down, dtype),
                    input_norm: norm_weight(&layer.input_norm, dtype),
                    post_attn_norm: norm_weight(&layer.post_attn_norm, dtype),
                    attn_out_norm: layer.attn_out_norm.as_ref().map(|n| norm_weight(n, dtype)),
                    mlp_out_norm: layer.mlp_out_norm.as_ref().map(|n| norm_weight(n, dtype)),
                    qk_norm,
                    gelu: m.act == Activation::GeluTanh,
                }
            })
            .collect();
        let embed = like(model.embed.val(), dtype);
        // Tied: one copy serves both (casting the shared tensor twice would make two).
        let head = match &model.lm_head {
            Some(w) => like(w.val(), dtype),
            None => embed.clone(),
        };
        Self {
            layers,
            embed,
            norm: norm_weight(&model.norm, dtype),
            head,
            dtype,
        }
    }

    /// The norm weight applied after layer `l`: the next layer's input norm, or the final norm.
    pub fn norm_after(&self, l: usize) -> &Tensor<1> {
        self.layers.get(l + 1).map_or(&self.norm, |n| &n.input_norm)
    }

    /// Logits in f32 of the hidden states `x [rows, hidden]` (after the final norm)
    /// `[rows, vocab]`.
    pub fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        crate::kernels::rows_matmul::rows_matmul_f32(like(x, self.dtype), self.head.clone())
    }
}

//! The decode-time layout of each layer's projections: q/k/v as one matrix and gate/up as one, so
//! a decode step runs two matmuls where the checkpoint layout needs five.
//!
//! The model keeps its Hugging Face layout (one weight per name: that is what training updates
//! and checkpoints write); a generation run builds these concatenations once, at its start, and
//! drops them at its end. They hold a second copy of q/k/v and gate/up (about two thirds of a
//! layer's weights) for the length of the run.

use burn::tensor::Tensor;

use super::Transformer;
use super::layers::Linear;

/// One layer's fused projections.
#[derive(Debug, Clone)]
pub struct FusedLayer {
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`: q rows, then k, then v.
    pub qkv: Tensor<2>,
    /// `[(heads + 2·kv_heads)·head_dim]`, zeros where the model has no such bias.
    pub qkv_bias: Tensor<1>,
    /// `[2·intermediate, hidden]`: gate rows, then up.
    pub gate_up: Tensor<2>,
    /// `[2·intermediate]`, `None` when neither has a bias.
    pub gate_up_bias: Option<Tensor<1>>,
    pub intermediate: usize,
}

/// The fused projections of every layer, for one generation run.
#[derive(Debug, Clone)]
pub struct DecodeWeights {
    pub layers: Vec<FusedLayer>,
}

/// Weights of `parts` stacked along the output dimension, and their biases (zeros for a part
/// without one; `None` when no part has one).
fn stack(parts: &[&Linear]) -> (Tensor<2>, Option<Tensor<1>>) {
    let weight = Tensor::cat(parts.iter().map(|l| l.effective_weight()).collect(), 0);
    let bias = parts.iter().any(|l| l.bias.is_some()).then(|| {
        let device = weight.device();
        let each = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => b.val(),
                None => Tensor::zeros([l.weight.val().dims()[0]], &device),
            })
            .collect();
        Tensor::cat(each, 0)
    });
    (weight, bias)
}

impl DecodeWeights {
    pub fn new(model: &Transformer) -> Self {
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let a = &layer.attn;
                let (qkv, qkv_bias) = stack(&[&a.q, &a.k, &a.v]);
                let rows = qkv.dims()[0];
                let qkv_bias = qkv_bias.unwrap_or_else(|| Tensor::zeros([rows], &qkv.device()));
                let m = &layer.mlp;
                let (gate_up, gate_up_bias) = stack(&[&m.gate, &m.up]);
                FusedLayer {
                    qkv,
                    qkv_bias,
                    intermediate: m.gate.weight.val().dims()[0],
                    gate_up,
                    gate_up_bias,
                }
            })
            .collect();
        Self { layers }
    }
}

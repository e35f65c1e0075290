//! Building blocks of the decoder: RMSNorm, a linear layer in Hugging Face layout (`[out, in]`),
//! and the SwiGLU MLP.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

/// Root-mean-square normalisation with a learned scale (no bias, no mean subtraction).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden]`
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// `x`: `[..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let ms = x.clone().square().mean_dim(D - 1); // [..., 1]
        let inv = ms.add_scalar(self.eps).sqrt().recip();
        x * inv * self.weight.val().unsqueeze::<D>()
    }
}

/// `y = x Wᵀ + b` with `W` stored `[out, in]` as Hugging Face does, so checkpoints load and save
/// without transposes.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Param<Tensor<2>>,
    /// `[out]`
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(
            x,
            self.weight.val().transpose(),
            self.bias.as_ref().map(|b| b.val()),
        )
    }

    /// `x [rows, in]` → `[rows, out]` as one matmul against the transposed weight view. burn's
    /// `linear` reshapes that view for a single-row batch, which copies the whole weight on the
    /// CPU backend at every decode step.
    pub fn rows(&self, x: Tensor<2>) -> Tensor<2> {
        let y = x.matmul(self.weight.val().transpose());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    /// `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let g = silu(self.gate.forward(x.clone())); // [batch, seq, intermediate]
        self.down.forward(g * self.up.forward(x))
    }

    /// [`Mlp::forward`] for one token per row, `x [rows, hidden]` (see [`Linear::rows`]).
    pub fn rows(&self, x: Tensor<2>) -> Tensor<2> {
        let g = silu(self.gate.rows(x.clone())); // [rows, intermediate]
        self.down.rows(g * self.up.rows(x))
    }
}

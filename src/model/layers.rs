//! Building blocks of the decoder: RMSNorm (`w·x̂` or Gemma's `(1+w)·x̂`), a linear layer in
//! Hugging Face layout (`[out, in]`) with its optional LoRA adapter's forward (the settings,
//! initialisation and merging are `lora.rs`'s), and the gated MLP (SiLU or GELU-tanh).

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor};

use crate::hf::config::Activation;
use crate::kernels::like;
use crate::kernels::norm_train::rms_norm_train;

/// Root-mean-square normalisation with a learned scale (no bias, no mean subtraction).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden]` (or `[head_dim]` for a per-head q/k norm)
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
    /// Added to the weight before it scales: 0, or 1 for Gemma's norms (stored centred on 0).
    pub offset: f32,
}

impl RmsNorm {
    /// `x`: `[..., hidden]`. In f32 whatever `x`'s dtype (an f16 square overflows past 256),
    /// then back to it before the scale, as transformers' `LlamaRMSNorm` does; with an offset the
    /// scale too is applied in f32, as `Gemma3RMSNorm` does.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // One fused op forward and backward (kernels::norm_train, whose twin is the burn-ops
        // form this method used to run).
        rms_norm_train(x, self.weight.val(), self.eps, self.offset).0
    }

    /// The factor the normalised values are multiplied by, `offset + w` `[hidden]`.
    pub fn effective_weight(&self) -> Tensor<1> {
        if self.offset != 0.0 {
            like(self.weight.val(), DType::F32).add_scalar(self.offset)
        } else {
            self.weight.val()
        }
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
    /// A LoRA adapter on this projection (training only; merged before anything else runs).
    pub lora: Option<Lora>,
}

impl Linear {
    /// `x [..., in]` → `[..., out]`: the leading dimensions folded into rows for one 2-D matmul
    /// against the transposed weight view (burn's `linear` on a 3-D input made the CPU backend
    /// copy the transposed weight at every call).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let x = x.reshape([rows, dims[D - 1]]);
        let dtype = x.dtype();
        let y = x.clone().matmul(like(self.weight.val(), dtype).transpose());
        let y = match &self.bias {
            Some(b) => y + like(b.val(), dtype).unsqueeze::<2>(),
            None => y,
        };
        let y = match &self.lora {
            Some(l) => y + l.forward(x),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = self.weight.val().dims()[0];
        y.reshape(out)
    }

    /// The weight with any adapter folded in `[out, in]` (what the decode kernels read).
    pub fn effective_weight(&self) -> Tensor<2> {
        match &self.lora {
            Some(l) => self.weight.val() + l.delta(),
            None => self.weight.val(),
        }
    }
}

/// Gated feed-forward: `down(act(gate(x)) * up(x))` (SwiGLU with SiLU, GeGLU with GELU-tanh).
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    #[module(skip)]
    pub act: Activation,
}

impl Mlp {
    /// `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let g = self.gate.forward(x.clone()); // [batch, seq, intermediate]
        let u = self.up.forward(x);
        let a = match self.act {
            Activation::Silu => crate::kernels::swiglu::swiglu(g, u),
            Activation::GeluTanh => crate::kernels::rows_matmul::gelu_tanh(g) * u,
        };
        self.down.forward(a)
    }
}

/// One adapter: `A [r, in]`, `B [out, r]` and the scale α / r.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[rank, in]`
    pub a: Param<Tensor<2>>,
    /// `[out, rank]`
    pub b: Param<Tensor<2>>,
    pub scale: f64,
    /// Dropout probability on the input; applied only on an autodiff device (training).
    pub dropout: f64,
}

impl Lora {
    /// The update for `x [rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x = if self.dropout > 0.0 && x.is_autodiff() {
            let keep = 1.0 - self.dropout;
            let mask = Tensor::<2>::random(x.dims(), Distribution::Bernoulli(keep), &x.device());
            x * like(mask.div_scalar(keep), dtype)
        } else {
            x
        };
        // The f32 adapters cast to the activations' dtype, as PEFT under autocast.
        x.matmul(like(self.a.val(), dtype).transpose())
            .matmul(like(self.b.val(), dtype).transpose())
            .mul_scalar(self.scale)
    }

    /// `scale · B A` `[out, in]`: the update folded into the weight.
    pub fn delta(&self) -> Tensor<2> {
        self.b
            .val()
            .inner()
            .matmul(self.a.val().inner())
            .mul_scalar(self.scale)
    }
}

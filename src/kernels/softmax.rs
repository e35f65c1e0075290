//! Attention's scaled, masked softmax as one custom op with its own backward:
//! `probs = softmax(scale · scores + mask)` over the last dimension, computed in f32 whatever the
//! scores' dtype (as transformers' eager attention upcasts), returned in the scores' dtype.
//! The CPU backend runs forward and backward as one parallel pass each
//! ([`super::cpu_train`]); every other backend runs the burn-ops twins below.
//!
//! burn's autodiff of `softmax(x · scale + mask)` runs the scale, the mask add, and the softmax's
//! max/exp/sum/divide as separate ops forward and backward; this op keeps only its output:
//! `d scores = scale · p ⊙ (dp − Σₖ dp ⊙ p)`.
//!
//! Shapes: `scores [B, H, G, S, K]`, `mask [1 or B, 1, 1, S, K]` (additive, f32, no gradient).
//!
//! The model's attention no longer runs it: [`super::flash_attention`] masks by positions and keeps
//! no probabilities at all.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeBackend;
use burn::backend::{
    Autodiff, Backend, DType, Dispatch, FloatDType, TensorMetadata, backend_extension,
};
use burn::tensor::Tensor;

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait MaskedSoftmaxBackend: Backend {
    /// `softmax(scale · scores + mask)` over the last dimension, in the scores' dtype.
    #[fusion(default)]
    fn masked_softmax(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        reference_forward::<Self>(scores, mask, scale)
    }

    /// `d scores` from the forward's output `probs` and upstream `grad`, in the probs' dtype.
    #[fusion(default)]
    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        reference_backward::<Self>(probs, grad, scale)
    }
}

fn in_f32<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    if t.dtype() == DType::F32 {
        t
    } else {
        B::float_cast(t, FloatDType::F32)
    }
}

fn cast<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}

/// burn-ops twin of the forward.
pub fn reference_forward<B: Backend>(
    scores: FloatTensor<B>,
    mask: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    let dtype = scores.dtype();
    let x = B::float_mul_scalar(in_f32::<B>(scores), scale.into());
    let x = B::float_add(x, in_f32::<B>(mask));
    let last = x.shape().num_dims() - 1;
    cast::<B>(B::softmax(x, last), dtype)
}

/// burn-ops twin of the backward.
pub fn reference_backward<B: Backend>(
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    let dtype = probs.dtype();
    let (p, dp) = (in_f32::<B>(probs), in_f32::<B>(grad));
    let last = p.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(dp.clone(), p.clone()), last);
    let d = B::float_mul(p, B::float_sub(dp, dot));
    cast::<B>(B::float_mul_scalar(d, scale.into()), dtype)
}

impl MaskedSoftmaxBackend for CubeBackend {}

#[derive(Debug)]
struct MaskedSoftmaxBackward;

impl<B: Backend + MaskedSoftmaxBackend> Backward<B, 1> for MaskedSoftmaxBackward {
    /// probs, scale
    type State = (FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (probs, scale) = ops.state;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::masked_softmax_backward(probs, g, scale));
        }
    }
}

impl<B: Backend + MaskedSoftmaxBackend, C: CheckpointStrategy> MaskedSoftmaxBackend
    for Autodiff<B, C>
{
    fn masked_softmax(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let node = scores.node();
        let (scores, mask) = (scores.into_primitive(), mask.into_primitive());
        match <MaskedSoftmaxBackward as Backward<B, 1>>::prepare::<C>(MaskedSoftmaxBackward, [node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = B::masked_softmax(scores, mask, scale);
                prep.finish((p.clone(), scale), p)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::masked_softmax(scores, mask, scale)),
        }
    }
}

/// `softmax(scale · scores + mask)` for `scores [B, H, G, S, K]` and `mask [1 or B, 1, 1, S, K]`;
/// differentiable in the scores.
pub fn masked_softmax(scores: Tensor<5>, mask: Tensor<5>, scale: f32) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as MaskedSoftmaxBackend>::masked_softmax(
        scores.into_dispatch(),
        mask.into_dispatch(),
        scale,
    ))
}

/// The backward alone: `d scores` from `probs` and upstream `grad`.
pub fn masked_softmax_grad(probs: Tensor<5>, grad: Tensor<5>, scale: f32) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as MaskedSoftmaxBackend>::masked_softmax_backward(
        probs.into_dispatch(),
        grad.into_dispatch(),
        scale,
    ))
}

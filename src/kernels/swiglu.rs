//! SwiGLU's gate, `silu(gate) · up`, as one custom op with its own backward: the CPU backend runs
//! both as one parallel pass ([`super::cpu_train`]); every other backend runs the burn-ops twins
//! below (on wgpu, burn's fusion makes them one kernel each).
//!
//! Autodiff of the burn ops keeps `sigmoid(gate)`, `silu(gate)` and `up` for the backward and
//! runs five element-wise backward ops; this op keeps `gate` and `up` only and recomputes the
//! sigmoid: `d gate = dy · up · s · (1 + gate · (1 − s))`, `d up = dy · silu(gate)`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeBackend;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait SwigluBackend: Backend {
    /// `silu(gate) · up`, element-wise, for tensors of one shape.
    #[fusion(default)]
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        reference_forward::<Self>(gate, up)
    }

    /// `(d gate, d up)` for upstream `grad`.
    #[fusion(default)]
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward::<Self>(gate, up, grad)
    }
}

/// burn-ops twin of the forward.
pub fn reference_forward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let silu = B::float_mul(gate.clone(), B::sigmoid(gate));
    B::float_mul(silu, up)
}

/// burn-ops twin of the backward.
pub fn reference_backward<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = B::sigmoid(gate.clone());
    let silu = B::float_mul(gate.clone(), s.clone());
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0f32.into());
    let dsilu = B::float_mul(
        s,
        B::float_add_scalar(B::float_mul(gate, one_minus_s), 1.0f32.into()),
    );
    let dgate = B::float_mul(B::float_mul(grad.clone(), up), dsilu);
    let dup = B::float_mul(grad, silu);
    (dgate, dup)
}

impl SwigluBackend for CubeBackend {}

#[derive(Debug)]
struct SwigluBackward;

impl<B: Backend + SwigluBackend> Backward<B, 2> for SwigluBackward {
    /// gate, up
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [gate_node, up_node] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (dgate, dup) = B::swiglu_backward(gate, up, g);
        if let Some(node) = gate_node {
            grads.register::<B>(node.id, dgate);
        }
        if let Some(node) = up_node {
            grads.register::<B>(node.id, dup);
        }
    }
}

impl<B: Backend + SwigluBackend, C: CheckpointStrategy> SwigluBackend for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [gate.node(), up.node()];
        let (gate, up) = (gate.into_primitive(), up.into_primitive());
        match <SwigluBackward as Backward<B, 2>>::prepare::<C>(SwigluBackward, nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::swiglu(gate.clone(), up.clone());
                prep.finish((gate, up), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swiglu(gate, up)),
        }
    }
}

/// `silu(gate) · up` for `gate`, `up` of one shape; differentiable in both.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SwigluBackend>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// The backward alone: `(d gate, d up)` for upstream `grad`.
pub fn swiglu_grad<const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
    grad: Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let (dg, du) = <Dispatch as SwigluBackend>::swiglu_backward(
        gate.into_dispatch(),
        up.into_dispatch(),
        grad.into_dispatch(),
    );
    (Tensor::from_dispatch(dg), Tensor::from_dispatch(du))
}

/// The burn-ops twins of [`swiglu`] and [`swiglu_grad`] (what other backends run), for tests.
pub fn swiglu_twin<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(reference_forward::<Dispatch>(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

pub fn swiglu_grad_twin<const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
    grad: Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let (dg, du) = reference_backward::<Dispatch>(
        gate.into_dispatch(),
        up.into_dispatch(),
        grad.into_dispatch(),
    );
    (Tensor::from_dispatch(dg), Tensor::from_dispatch(du))
}

//! One optimizer update of a flattened parameter as one custom op: RMSprop or AdamW with the
//! gradient's unscale/clip factor folded in, and the sum of squares the gradient norm needs. The
//! CPU backend runs each as one parallel pass ([`super::cpu_train`]); every other backend runs the
//! burn-ops twins below (on wgpu, burn's fusion makes them a kernel or two).
//!
//! The update follows `torch.optim.RMSprop` (no momentum, not centered) and `torch.optim.AdamW`,
//! on `g = grad · grad_scale`; the caller owns the step count, bias corrections and learning rate.

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeBackend;
use burn::backend::{Backend, Dispatch, Shape, backend_extension};
use burn::tensor::Tensor;

/// RMSprop's coefficients for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmspropCoefs {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    /// L2 penalty added to the gradient, as torch's `weight_decay` for RMSprop.
    pub weight_decay: f32,
    /// Multiplies the raw gradient first (loss unscale times norm clip).
    pub grad_scale: f32,
}

/// AdamW's coefficients for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamwCoefs {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled: `w ← w · (1 − lr · weight_decay)` before the update.
    pub weight_decay: f32,
    /// `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub bias1: f32,
    pub bias2: f32,
    pub grad_scale: f32,
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait OptimStepBackend: Backend {
    /// `(w', v')` from weight `w`, gradient `g` and square average `v`, all `[numel]`.
    #[fusion(default)]
    fn rmsprop_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: RmspropCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_rmsprop::<Self>(w, g, v, c)
    }

    /// `(w', m', v')` from weight, gradient and the two moments, all `[numel]`.
    #[fusion(default)]
    fn adamw_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: AdamwCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference_adamw::<Self>(w, g, m, v, c)
    }

    /// `Σ (g · scale)²` as a `[1]` tensor.
    #[fusion(default)]
    fn sum_squares(g: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let g = Self::float_mul_scalar(g, scale.into());
        let sq = Self::float_mul(g.clone(), g);
        Self::float_reshape(Self::float_sum(sq), Shape::new([1]))
    }
}

fn scaled<B: Backend>(g: FloatTensor<B>, s: f32) -> FloatTensor<B> {
    if s == 1.0 {
        g
    } else {
        B::float_mul_scalar(g, s.into())
    }
}

/// burn-ops twin of [`OptimStepBackend::rmsprop_step`].
pub fn reference_rmsprop<B: Backend>(
    w: FloatTensor<B>,
    g: FloatTensor<B>,
    v: FloatTensor<B>,
    c: RmspropCoefs,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let mut g = scaled::<B>(g, c.grad_scale);
    if c.weight_decay != 0.0 {
        g = B::float_add(g, B::float_mul_scalar(w.clone(), c.weight_decay.into()));
    }
    let sq = B::float_mul_scalar(B::float_mul(g.clone(), g.clone()), (1.0 - c.alpha).into());
    let v = B::float_add(B::float_mul_scalar(v, c.alpha.into()), sq);
    let denom = B::float_add_scalar(B::float_sqrt(v.clone()), c.eps.into());
    let upd = B::float_mul_scalar(B::float_div(g, denom), c.lr.into());
    (B::float_sub(w, upd), v)
}

/// burn-ops twin of [`OptimStepBackend::adamw_step`].
pub fn reference_adamw<B: Backend>(
    w: FloatTensor<B>,
    g: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    c: AdamwCoefs,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let g = scaled::<B>(g, c.grad_scale);
    let w = if c.weight_decay != 0.0 {
        B::float_mul_scalar(w, (1.0 - c.lr * c.weight_decay).into())
    } else {
        w
    };
    let m = B::float_add(
        B::float_mul_scalar(m, c.beta1.into()),
        B::float_mul_scalar(g.clone(), (1.0 - c.beta1).into()),
    );
    let v = B::float_add(
        B::float_mul_scalar(v, c.beta2.into()),
        B::float_mul_scalar(B::float_mul(g.clone(), g), (1.0 - c.beta2).into()),
    );
    let denom = B::float_add_scalar(
        B::float_sqrt(B::float_div_scalar(v.clone(), c.bias2.into())),
        c.eps.into(),
    );
    let upd = B::float_div(B::float_div_scalar(m.clone(), c.bias1.into()), denom);
    (B::float_sub(w, B::float_mul_scalar(upd, c.lr.into())), m, v)
}

impl OptimStepBackend for CubeBackend {}

/// The primitive of a flattened parameter (or its gradient or moment) on the dispatch backend.
type Flat = FloatTensor<Dispatch>;

/// [`OptimStepBackend::rmsprop_step`] or [`reference_rmsprop`].
type RmspropOp = fn(Flat, Flat, Flat, RmspropCoefs) -> (Flat, Flat);

/// [`OptimStepBackend::adamw_step`] or [`reference_adamw`].
type AdamwOp = fn(Flat, Flat, Flat, Flat, AdamwCoefs) -> (Flat, Flat, Flat);

/// `op`, the kernel or its twin, on `[w, g, v]` → `(w', v')`.
fn rmsprop_with(op: RmspropOp, wgv: [Tensor<1>; 3], c: RmspropCoefs) -> (Tensor<1>, Tensor<1>) {
    let [w, g, v] = wgv.map(Tensor::into_dispatch);
    let (w, v) = op(w, g, v, c);
    (Tensor::from_dispatch(w), Tensor::from_dispatch(v))
}

/// `op`, the kernel or its twin, on `[w, g, m, v]` → `(w', m', v')`.
fn adamw_with(
    op: AdamwOp,
    wgmv: [Tensor<1>; 4],
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let [w, g, m, v] = wgmv.map(Tensor::into_dispatch);
    let (w, m, v) = op(w, g, m, v, c);
    let [w, m, v] = [w, m, v].map(Tensor::from_dispatch);
    (w, m, v)
}

/// RMSprop update of `w [numel]` → `(w', v')`.
pub fn rmsprop_step(
    w: Tensor<1>,
    g: Tensor<1>,
    v: Tensor<1>,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    rmsprop_with(<Dispatch as OptimStepBackend>::rmsprop_step, [w, g, v], c)
}

/// The burn-ops twin of [`rmsprop_step`] (what other backends run), for tests.
pub fn rmsprop_step_twin(
    w: Tensor<1>,
    g: Tensor<1>,
    v: Tensor<1>,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    rmsprop_with(reference_rmsprop::<Dispatch>, [w, g, v], c)
}

/// AdamW update of `w [numel]` → `(w', m', v')`.
pub fn adamw_step(
    w: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    adamw_with(<Dispatch as OptimStepBackend>::adamw_step, [w, g, m, v], c)
}

/// The burn-ops twin of [`adamw_step`].
pub fn adamw_step_twin(
    w: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    adamw_with(reference_adamw::<Dispatch>, [w, g, m, v], c)
}

/// `Σ (g · scale)²` → `[1]`.
pub fn sum_squares(g: Tensor<1>, scale: f32) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as OptimStepBackend>::sum_squares(
        g.into_dispatch(),
        scale,
    ))
}

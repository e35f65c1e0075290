//! One optimizer update of a flattened parameter (or of a flat group of them) as one custom op:
//! RMSprop or AdamW with the gradient's unscale/clip factor folded in, and the sum of squares the
//! gradient norm needs. The CPU backend runs each as one parallel pass ([`super::cpu_train`]);
//! every other backend runs the burn-ops twins below (on wgpu, burn's fusion makes them a kernel
//! or two).
//!
//! The update follows `torch.optim.RMSprop` (no momentum, not centered) and `torch.optim.AdamW`,
//! on `g = grad · grad_scale · scale`; the caller owns the step count, bias corrections and
//! learning rate. `scale` and `apply` are `[1]` device tensors so that clipping and the f16 loss
//! scaler's skip are decided on the device, with no read-back before the update: `apply` < 0.5
//! keeps the weight and the state as they were (a gradient that is not finite changes nothing).

use burn::backend::TensorMetadata;
use burn::backend::tensor::{BoolTensor, FloatTensor};
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
    /// Multiplies the raw gradient first (the loss unscale), with the device's `scale` (the
    /// norm clip).
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
    /// `(w', v')` from weight `w`, gradient `g` and square average `v`, all `[numel]`, and the
    /// device factors `scale`, `apply` (`[1]` each; see the module header).
    #[fusion(default)]
    fn rmsprop_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        apply: FloatTensor<Self>,
        c: RmspropCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_rmsprop::<Self>([w, g, v], [scale, apply], c)
    }

    /// `(w', m', v')` from weight, gradient and the two moments, all `[numel]`, and the device
    /// factors `scale`, `apply` (`[1]` each).
    #[fusion(default)]
    fn adamw_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        apply: FloatTensor<Self>,
        c: AdamwCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference_adamw::<Self>([w, g, m, v], [scale, apply], c)
    }

    /// `Σ (g · scale)²` as a `[1]` tensor.
    #[fusion(default)]
    fn sum_squares(g: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let g = Self::float_mul_scalar(g, scale.into());
        let sq = Self::float_mul(g.clone(), g);
        Self::float_reshape(Self::float_sum(sq), Shape::new([1]))
    }
}

fn scaled<B: Backend>(g: FloatTensor<B>, s: f32, scale: FloatTensor<B>) -> FloatTensor<B> {
    let g = if s == 1.0 {
        g
    } else {
        B::float_mul_scalar(g, s.into())
    };
    // `[n] · [1]`: broadcast.
    B::float_mul(g, scale)
}

/// `new` where `apply` ≥ 0.5, else `old` (a select, not a blend: `new` may hold NaN).
fn applied<B: Backend>(
    old: FloatTensor<B>,
    new: FloatTensor<B>,
    keep: &BoolTensor<B>,
) -> FloatTensor<B> {
    let shape = old.shape();
    B::float_mask_where(new, B::bool_expand(keep.clone(), shape), old)
}

/// `apply < 0.5` as a `[1]` mask.
fn keep_mask<B: Backend>(apply: FloatTensor<B>) -> BoolTensor<B> {
    let bools = burn::backend::get_device_settings::<B>(&apply.device()).bool_dtype;
    B::float_lower_elem(apply, 0.5f32.into(), bools)
}

/// burn-ops twin of [`OptimStepBackend::rmsprop_step`].
pub fn reference_rmsprop<B: Backend>(
    [w, g, v]: [FloatTensor<B>; 3],
    [scale, apply]: [FloatTensor<B>; 2],
    c: RmspropCoefs,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let keep = keep_mask::<B>(apply);
    let (w0, v0) = (w.clone(), v.clone());
    let mut g = scaled::<B>(g, c.grad_scale, scale);
    if c.weight_decay != 0.0 {
        g = B::float_add(g, B::float_mul_scalar(w.clone(), c.weight_decay.into()));
    }
    let sq = B::float_mul_scalar(B::float_mul(g.clone(), g.clone()), (1.0 - c.alpha).into());
    let v = B::float_add(B::float_mul_scalar(v, c.alpha.into()), sq);
    let denom = B::float_add_scalar(B::float_sqrt(v.clone()), c.eps.into());
    let upd = B::float_mul_scalar(B::float_div(g, denom), c.lr.into());
    let w = B::float_sub(w, upd);
    (applied::<B>(w0, w, &keep), applied::<B>(v0, v, &keep))
}

/// burn-ops twin of [`OptimStepBackend::adamw_step`].
pub fn reference_adamw<B: Backend>(
    [w, g, m, v]: [FloatTensor<B>; 4],
    [scale, apply]: [FloatTensor<B>; 2],
    c: AdamwCoefs,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let keep = keep_mask::<B>(apply);
    let (w0, m0, v0) = (w.clone(), m.clone(), v.clone());
    let g = scaled::<B>(g, c.grad_scale, scale);
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
    let w = B::float_sub(w, B::float_mul_scalar(upd, c.lr.into()));
    (
        applied::<B>(w0, w, &keep),
        applied::<B>(m0, m, &keep),
        applied::<B>(v0, v, &keep),
    )
}

impl OptimStepBackend for CubeBackend {}

/// The primitive of a flattened parameter (or its gradient or moment) on the dispatch backend.
type Flat = FloatTensor<Dispatch>;

/// [`OptimStepBackend::rmsprop_step`] or its twin.
type RmspropOp = fn([Flat; 3], [Flat; 2], RmspropCoefs) -> (Flat, Flat);

/// [`OptimStepBackend::adamw_step`] or its twin.
type AdamwOp = fn([Flat; 4], [Flat; 2], AdamwCoefs) -> (Flat, Flat, Flat);

fn rmsprop_op([w, g, v]: [Flat; 3], [s, a]: [Flat; 2], c: RmspropCoefs) -> (Flat, Flat) {
    <Dispatch as OptimStepBackend>::rmsprop_step(w, g, v, s, a, c)
}

fn adamw_op([w, g, m, v]: [Flat; 4], [s, a]: [Flat; 2], c: AdamwCoefs) -> (Flat, Flat, Flat) {
    <Dispatch as OptimStepBackend>::adamw_step(w, g, m, v, s, a, c)
}

/// The device factors of one update: `scale` multiplies the gradient (the norm clip), and the
/// update applies only where `apply` ≥ 0.5 (the gradients and measurements were finite); `[1]`
/// each.
#[derive(Clone, Debug)]
pub struct StepControl {
    pub scale: Tensor<1>,
    pub apply: Tensor<1>,
}

impl StepControl {
    /// Scale 1, always applied (no clipping, nothing to skip), on `device`.
    pub fn always(device: &burn::tensor::Device) -> Self {
        Self {
            scale: Tensor::ones([1], device),
            apply: Tensor::ones([1], device),
        }
    }

    fn dispatch(&self) -> [Flat; 2] {
        [self.scale.clone(), self.apply.clone()].map(Tensor::into_dispatch)
    }
}

fn rmsprop_with(
    op: RmspropOp,
    wgv: [Tensor<1>; 3],
    ctl: &StepControl,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    let (w, v) = op(wgv.map(Tensor::into_dispatch), ctl.dispatch(), c);
    (Tensor::from_dispatch(w), Tensor::from_dispatch(v))
}

fn adamw_with(
    op: AdamwOp,
    wgmv: [Tensor<1>; 4],
    ctl: &StepControl,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (w, m, v) = op(wgmv.map(Tensor::into_dispatch), ctl.dispatch(), c);
    let [w, m, v] = [w, m, v].map(Tensor::from_dispatch);
    (w, m, v)
}

/// RMSprop update of `w [numel]` → `(w', v')` under the device factors `ctl`.
pub fn rmsprop_step_ctl(
    [w, g, v]: [Tensor<1>; 3],
    ctl: &StepControl,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    rmsprop_with(rmsprop_op, [w, g, v], ctl, c)
}

/// The burn-ops twin of [`rmsprop_step_ctl`], for tests.
pub fn rmsprop_step_ctl_twin(
    wgv: [Tensor<1>; 3],
    ctl: &StepControl,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    rmsprop_with(reference_rmsprop::<Dispatch>, wgv, ctl, c)
}

/// AdamW update of `w [numel]` → `(w', m', v')` under the device factors `ctl`.
pub fn adamw_step_ctl(
    wgmv: [Tensor<1>; 4],
    ctl: &StepControl,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    adamw_with(adamw_op, wgmv, ctl, c)
}

/// The burn-ops twin of [`adamw_step_ctl`], for tests.
pub fn adamw_step_ctl_twin(
    wgmv: [Tensor<1>; 4],
    ctl: &StepControl,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    adamw_with(reference_adamw::<Dispatch>, wgmv, ctl, c)
}

/// RMSprop update of `w [numel]` → `(w', v')`, always applied, scaled by `c.grad_scale` alone.
pub fn rmsprop_step(
    w: Tensor<1>,
    g: Tensor<1>,
    v: Tensor<1>,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    let ctl = StepControl::always(&w.device());
    rmsprop_step_ctl([w, g, v], &ctl, c)
}

/// The burn-ops twin of [`rmsprop_step`] (what other backends run), for tests.
pub fn rmsprop_step_twin(
    w: Tensor<1>,
    g: Tensor<1>,
    v: Tensor<1>,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    let ctl = StepControl::always(&w.device());
    rmsprop_step_ctl_twin([w, g, v], &ctl, c)
}

/// AdamW update of `w [numel]` → `(w', m', v')`, always applied.
pub fn adamw_step(
    w: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let ctl = StepControl::always(&w.device());
    adamw_step_ctl([w, g, m, v], &ctl, c)
}

/// The burn-ops twin of [`adamw_step`].
pub fn adamw_step_twin(
    w: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let ctl = StepControl::always(&w.device());
    adamw_step_ctl_twin([w, g, m, v], &ctl, c)
}

/// `Σ (g · scale)²` → `[1]`.
pub fn sum_squares(g: Tensor<1>, scale: f32) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as OptimStepBackend>::sum_squares(
        g.into_dispatch(),
        scale,
    ))
}

//! One optimizer update of a flat group of parameters as one custom op: RMSprop or AdamW with
//! the gradient's unscale factor, the gradient-norm clip and the skip of a step that is not
//! finite folded in, and the sum of squares the gradient norm needs. wgpu runs the WGSL kernel
//! `shaders/optim_step.wgsl` (one launch per group), the CPU backend one parallel pass
//! ([`super::cpu_train`]); other backends run the burn-ops twins below.
//!
//! The update follows `torch.optim.RMSprop` (no momentum, not centered) and `torch.optim.AdamW`,
//! on `g = grad · grad_scale · clip`; the caller owns the step count, bias corrections and
//! learning rate. The clip and the skip come from `probe`, a `[1]` device value (the squared norm
//! of the unscaled gradient, NaN where the step's loss is not finite: `step_probe`,
//! `shaders/step_probe.wgsl`), so the host reads nothing before the update: a
//! probe that is not finite keeps the weight and the state as they were; otherwise `clip =
//! max_grad_norm / (√probe + 1e-6)` when `max_grad_norm > 0` and `√probe > max_grad_norm`, else 1
//! (torch's `clip_grad_norm_`, the rule the host applied before), all in f32.

use burn::backend::TensorMetadata;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate};
use burn::backend::{Backend, DType, Dispatch, RuntimeId, Shape, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::Tensor;

use super::common::{Shader, Variant, contiguous_as, launch_wgsl, new_f32, shader, upload_words};

/// RMSprop's coefficients for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmspropCoefs {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    /// L2 penalty added to the gradient, as torch's `weight_decay` for RMSprop.
    pub weight_decay: f32,
    /// Multiplies the raw gradient (the loss unscale), with the clip factor.
    pub grad_scale: f32,
    /// The clip threshold on the norm (≤ 0: no clipping).
    pub max_grad_norm: f32,
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
    pub max_grad_norm: f32,
}

/// The spec of an output like `t`.
fn like(t: &TensorSpec) -> TensorSpec {
    TensorSpec::new(t.shape.clone(), t.dtype)
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait OptimStepBackend: Backend {
    /// `(w', v')` from weight `w`, gradient `g` and square average `v`, all `[numel]`, under
    /// the device's `probe` `[1]` (see the module header).
    #[fusion(meta = |w, _g, v, _p, _c| (like(w), like(v)))]
    fn rmsprop_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probe: FloatTensor<Self>,
        c: RmspropCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(w', m', v')` from weight, gradient and the two moments, all `[numel]`, under `probe`.
    #[fusion(meta = |w, _g, m, v, _p, _c| (like(w), like(m), like(v)))]
    fn adamw_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probe: FloatTensor<Self>,
        c: AdamwCoefs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The update's probe `[1]` from the squared norm `norm2` `[1]` and the step's summed loss
    /// `total` `[1]`: `norm2` where `total` is finite, NaN where it is not.
    #[fusion(meta = |norm2, _total| like(norm2))]
    fn step_probe(norm2: FloatTensor<Self>, total: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `Σ (g · scale)²` as a `[1]` tensor.
    #[fusion(default)]
    fn sum_squares(g: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let g = Self::float_mul_scalar(g, scale.into());
        let sq = Self::float_mul(g.clone(), g);
        Self::float_reshape(Self::float_sum(sq), Shape::new([1]))
    }
}

/// `(scale, keep)` from `probe` `[1]`: the gradient's factor `grad_scale · clip` and the mask
/// of a skipped step, both `[1]`.
fn control<B: Backend>(
    probe: FloatTensor<B>,
    grad_scale: f32,
    max_grad_norm: f32,
) -> (FloatTensor<B>, BoolTensor<B>) {
    let bools = burn::backend::get_device_settings::<B>(&probe.device()).bool_dtype;
    // By the backend's own tests, not `x − x == 0`: GPU compilers may fold that to true.
    let keep = B::bool_or(
        B::float_is_nan(probe.clone(), bools),
        B::float_is_inf(probe.clone(), bools),
    );
    let ones = B::float_add_scalar(B::float_mul_scalar(probe.clone(), 0f32.into()), 1f32.into());
    let clip = if max_grad_norm > 0.0 {
        let norm = B::float_sqrt(probe);
        let over = B::float_greater_elem(norm.clone(), max_grad_norm.into(), bools);
        let factor = B::float_div(
            B::float_add_scalar(
                B::float_mul_scalar(norm.clone(), 0f32.into()),
                max_grad_norm.into(),
            ),
            B::float_add_scalar(norm, 1e-6f32.into()),
        );
        B::float_mask_where(ones, over, factor)
    } else {
        ones
    };
    (B::float_mul_scalar(clip, grad_scale.into()), keep)
}

/// `new` where the step applies, else `old` (a select, not a blend: `new` may hold NaN).
fn applied<B: Backend>(
    old: FloatTensor<B>,
    new: FloatTensor<B>,
    keep: &BoolTensor<B>,
) -> FloatTensor<B> {
    let shape = old.shape();
    B::float_mask_where(new, B::bool_expand(keep.clone(), shape), old)
}

/// burn-ops twin of [`OptimStepBackend::step_probe`].
pub fn reference_probe<B: Backend>(norm2: FloatTensor<B>, total: FloatTensor<B>) -> FloatTensor<B> {
    let bools = burn::backend::get_device_settings::<B>(&total.device()).bool_dtype;
    // By the backend's tests, not `total · 0`: GPU compilers may fold arithmetic on NaN away.
    let bad = B::bool_or(
        B::float_is_nan(total.clone(), bools),
        B::float_is_inf(total, bools),
    );
    B::float_mask_fill(norm2, bad, f32::NAN.into())
}

/// burn-ops twin of [`OptimStepBackend::rmsprop_step`].
pub fn reference_rmsprop<B: Backend>(
    [w, g, v]: [FloatTensor<B>; 3],
    probe: FloatTensor<B>,
    c: RmspropCoefs,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (scale, keep) = control::<B>(probe, c.grad_scale, c.max_grad_norm);
    let (w0, v0) = (w.clone(), v.clone());
    // `[n] · [1]`: broadcast.
    let mut g = B::float_mul(g, scale);
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
    probe: FloatTensor<B>,
    c: AdamwCoefs,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (scale, keep) = control::<B>(probe, c.grad_scale, c.max_grad_norm);
    let (w0, m0, v0) = (w.clone(), m.clone(), v.clone());
    let g = B::float_mul(g, scale);
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

pub(crate) const SHADER: Shader = shader!("optim_step.wgsl");

struct StepSource {
    n: usize,
    adamw: bool,
}

impl KernelSource for StepSource {
    fn source(&self) -> SourceTemplate {
        SHADER
            .template(false)
            .register("n", self.n.to_string())
            .register("adamw", self.adamw.to_string())
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.n, self.adamw))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

pub(crate) const PROBE_SHADER: Shader = shader!("step_probe.wgsl");

struct ProbeSource;

impl KernelSource for ProbeSource {
    fn source(&self) -> SourceTemplate {
        PROBE_SHADER.template(false)
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>()
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The probe's one instance, completed (for the registry's validation test).
pub(crate) fn probe_variants() -> Vec<Variant> {
    vec![Variant::of(&ProbeSource, &PROBE_SHADER, false)]
}

/// RMSprop and AdamW, completed (for the registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    [false, true]
        .into_iter()
        .map(|adamw| Variant::of(&StepSource { n: 1000, adamw }, &SHADER, false))
        .collect()
}

/// Whether the WGSL kernel runs `w`'s update: wgpu's WGSL runtime, f32 throughout.
fn wgsl_runs(w: &CubeTensor, others: &[&CubeTensor]) -> bool {
    w.device.runtime() == RuntimeId::Wgpu
        && std::iter::once(w)
            .chain(others.iter().copied())
            .all(|t| t.dtype == DType::F32)
}

/// Launches the kernel over `[w, g, s0, s1?]` under `probe` with the coefficients `coefs` (the
/// binding order of the shader's header); returns `[w', s0', s1'?]`.
fn launch(inputs: Vec<CubeTensor>, probe: CubeTensor, coefs: [f32; 9]) -> Vec<CubeTensor> {
    let adamw = inputs.len() == 4;
    let inputs: Vec<CubeTensor> = inputs
        .into_iter()
        .map(|t| contiguous_as(t, DType::F32))
        .collect();
    let probe = contiguous_as(probe, DType::F32);
    let w = &inputs[0];
    let n = w.shape().num_elements();
    let coefs = upload_words(w, &coefs.map(f32::to_bits), DType::F32);
    // w', s0', s1' are written over w, s0, s1 where nothing else holds those (the optimizer
    // releases the parameters' views first): a step then needs no second copy of the weights
    // and state. Each invocation reads its element before writing it, so this is safe.
    let outs: Vec<CubeTensor> = [0, 2, 3][..inputs.len() - 1]
        .iter()
        .map(|&k| {
            let t = &inputs[k];
            if t.can_mut() {
                t.clone()
            } else {
                new_f32(w, Shape::new([n]))
            }
        })
        .collect();
    // RMSprop binds a one-element placeholder for the second moment and its output.
    let dummy = new_f32(w, Shape::new([1]));
    let s1 = inputs.get(3).unwrap_or(&dummy);
    let s1_out = outs.get(2).unwrap_or(&dummy);
    if n > 0 {
        let bound = [
            &inputs[0], &inputs[1], &inputs[2], s1, &probe, &coefs, &outs[0], &outs[1], s1_out,
        ];
        launch_wgsl(StepSource { n, adamw }, 256, n.div_ceil(256), &bound);
    }
    outs
}

impl OptimStepBackend for CubeBackend {
    fn step_probe(norm2: CubeTensor, total: CubeTensor) -> CubeTensor {
        if !wgsl_runs(&norm2, &[&total]) {
            return reference_probe::<Self>(norm2, total);
        }
        let (norm2, total) = (
            contiguous_as(norm2, DType::F32),
            contiguous_as(total, DType::F32),
        );
        let probe = new_f32(&norm2, Shape::new([1]));
        launch_wgsl(ProbeSource, 1, 1, &[&norm2, &total, &probe]);
        probe
    }

    fn rmsprop_step(
        w: CubeTensor,
        g: CubeTensor,
        v: CubeTensor,
        probe: CubeTensor,
        c: RmspropCoefs,
    ) -> (CubeTensor, CubeTensor) {
        if !wgsl_runs(&w, &[&g, &v]) {
            return reference_rmsprop::<Self>([w, g, v], probe, c);
        }
        let coefs = [
            c.lr,
            c.alpha,
            0.0,
            c.eps,
            c.weight_decay,
            1.0,
            1.0,
            c.grad_scale,
            c.max_grad_norm,
        ];
        let mut out = launch(vec![w, g, v], probe, coefs).into_iter();
        match (out.next(), out.next()) {
            (Some(w), Some(v)) => (w, v),
            _ => unreachable!("launch returns w' and v'"),
        }
    }

    fn adamw_step(
        w: CubeTensor,
        g: CubeTensor,
        m: CubeTensor,
        v: CubeTensor,
        probe: CubeTensor,
        c: AdamwCoefs,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        if !wgsl_runs(&w, &[&g, &m, &v]) {
            return reference_adamw::<Self>([w, g, m, v], probe, c);
        }
        let coefs = [
            c.lr,
            c.beta1,
            c.beta2,
            c.eps,
            c.weight_decay,
            c.bias1,
            c.bias2,
            c.grad_scale,
            c.max_grad_norm,
        ];
        let mut out = launch(vec![w, g, m, v], probe, coefs).into_iter();
        match (out.next(), out.next(), out.next()) {
            (Some(w), Some(m), Some(v)) => (w, m, v),
            _ => unreachable!("launch returns w', m' and v'"),
        }
    }
}

/// The primitive of a flattened parameter (or its gradient or moment) on the dispatch backend.
type Flat = FloatTensor<Dispatch>;

/// [`OptimStepBackend::rmsprop_step`] or its twin.
type RmspropOp = fn([Flat; 3], Flat, RmspropCoefs) -> (Flat, Flat);

/// [`OptimStepBackend::adamw_step`] or its twin.
type AdamwOp = fn([Flat; 4], Flat, AdamwCoefs) -> (Flat, Flat, Flat);

fn rmsprop_op([w, g, v]: [Flat; 3], p: Flat, c: RmspropCoefs) -> (Flat, Flat) {
    <Dispatch as OptimStepBackend>::rmsprop_step(w, g, v, p, c)
}

fn adamw_op([w, g, m, v]: [Flat; 4], p: Flat, c: AdamwCoefs) -> (Flat, Flat, Flat) {
    <Dispatch as OptimStepBackend>::adamw_step(w, g, m, v, p, c)
}

/// The device's value an update is decided on: `probe` `[1]`, the squared norm of the unscaled
/// gradient, NaN where the step's loss is not finite (see the module header).
#[derive(Clone, Debug)]
pub struct StepControl {
    pub probe: Tensor<1>,
}

impl StepControl {
    /// A probe of 0 on `device`: always applied, never clipped.
    pub fn always(device: &burn::tensor::Device) -> Self {
        Self {
            probe: Tensor::zeros([1], device),
        }
    }
}

fn rmsprop_with(
    op: RmspropOp,
    wgv: [Tensor<1>; 3],
    ctl: &StepControl,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    let (w, v) = op(
        wgv.map(Tensor::into_dispatch),
        ctl.probe.clone().into_dispatch(),
        c,
    );
    (Tensor::from_dispatch(w), Tensor::from_dispatch(v))
}

fn adamw_with(
    op: AdamwOp,
    wgmv: [Tensor<1>; 4],
    ctl: &StepControl,
    c: AdamwCoefs,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (w, m, v) = op(
        wgmv.map(Tensor::into_dispatch),
        ctl.probe.clone().into_dispatch(),
        c,
    );
    let [w, m, v] = [w, m, v].map(Tensor::from_dispatch);
    (w, m, v)
}

/// RMSprop update of `w [numel]` → `(w', v')` under the device's `ctl`.
pub fn rmsprop_step_ctl(
    wgv: [Tensor<1>; 3],
    ctl: &StepControl,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    rmsprop_with(rmsprop_op, wgv, ctl, c)
}

/// The burn-ops twin of [`rmsprop_step_ctl`], for tests.
pub fn rmsprop_step_ctl_twin(
    wgv: [Tensor<1>; 3],
    ctl: &StepControl,
    c: RmspropCoefs,
) -> (Tensor<1>, Tensor<1>) {
    rmsprop_with(reference_rmsprop::<Dispatch>, wgv, ctl, c)
}

/// AdamW update of `w [numel]` → `(w', m', v')` under the device's `ctl`.
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

/// The update's probe `[1]`: `norm2` `[1]` where the summed loss `total` `[1]` is finite, NaN
/// where it is not.
pub fn step_probe(norm2: Tensor<1>, total: Tensor<1>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as OptimStepBackend>::step_probe(
        norm2.into_dispatch(),
        total.into_dispatch(),
    ))
}

/// The burn-ops twin of [`step_probe`], for tests.
pub fn step_probe_twin(norm2: Tensor<1>, total: Tensor<1>) -> Tensor<1> {
    Tensor::from_dispatch(reference_probe::<Dispatch>(
        norm2.into_dispatch(),
        total.into_dispatch(),
    ))
}

/// `Σ (g · scale)²` → `[1]`.
pub fn sum_squares(g: Tensor<1>, scale: f32) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as OptimStepBackend>::sum_squares(
        g.into_dispatch(),
        scale,
    ))
}

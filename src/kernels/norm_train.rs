//! RMSNorm of a training (or prefill, or scoring) step as one custom autodiff op: the WGSL kernels
//! `shaders/rms_norm_train_*.wgsl` on wgpu, Rust loops on the CPU backend
//! ([`super::cpu_norm_rope`]), and burn-ops twins below for every other backend and as the tests'
//! reference.
//!
//! `rms_norm_train(x [.., N], w [N], eps, offset)` computes exactly what
//! [`crate::model::layers::RmsNorm::forward`] computed with burn ops: statistics in f32; with
//! `offset = 0` (Llama) `y = elem(elem(x · inv) · elem(w))`, the normalised values cast back to
//! x's dtype before the weight scales them; with an offset (Gemma) `y = elem(x · inv · (offset +
//! w))` in f32. burn's autodiff of those ops keeps every intermediate and launches each op forward
//! and backward (on lavapipe a layer's two norms and two RoPEs took 69 launches per training step,
//! 10 with these ops: docs/benchmarks.md); this op runs one launch forward and two backward (one
//! for a frozen weight), and keeps `x` and the per-row
//! `inv = 1 / sqrt(mean(x²) + eps)` ([rows] f32). Backward, with `n = x · inv`, `w'` the factor:
//! `dx = inv · (dn − n · mean(dn · n))` for `dn = g · w'`, `dw = Σ_rows g · n` (summed per
//! workgroup, then across workgroups: no atomics).
//!
//! dtypes: the shaders read f32 and (where the device's WGSL has it) f16 as they are; x and w may
//! differ (f16 activations, f32 master weights). Any other dtype (bf16) is computed in f32 on
//! wgpu, so there Llama's cast of `x · inv` back to bf16 is not rounded (the CPU loops and the
//! twin round it).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, RuntimeId, Shape, TensorMetadata,
    backend_extension,
};
use burn::cubecl::prelude::KernelId;
use burn::tensor::Tensor;

use super::common::{
    Shader, Variant, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_f32, new_tensor,
    reads_f16, shader,
};

/// `(rows, n)` of a tensor normed over its last dimension.
pub(crate) fn rows_and_width(shape: &Shape) -> (usize, usize) {
    let n = shape[shape.num_dims() - 1];
    (shape.num_elements() / n.max(1), n)
}

fn inv_spec(x: &TensorSpec) -> TensorSpec {
    TensorSpec::new(Shape::new([rows_and_width(&x.shape).0]), DType::F32)
}

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait RmsNormTrainBackend: Backend {
    /// `x [.., N]`, `w [N]` → `(y` like x, `inv [rows]` f32`)`.
    #[fusion(meta = |x, _w, _eps, _offset| (TensorSpec::new(x.shape.clone(), x.dtype), inv_spec(x)))]
    fn rms_norm_train(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
        offset: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(x, w, eps, offset)
    }

    /// `(dx` like x, `dw` like w`)` for upstream `grad` (like x), from the forward's `inv`. Without
    /// `weight_grad` (a frozen weight: LoRA) dw is not computed and its values are unspecified.
    #[fusion(meta = |x, w, _inv, _grad, _offset, _weight_grad| (
        TensorSpec::new(x.shape.clone(), x.dtype),
        TensorSpec::new(w.shape.clone(), w.dtype),
    ))]
    fn rms_norm_train_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        inv: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        offset: f32,
        weight_grad: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = weight_grad;
        reference_backward::<Self>(x, w, inv, grad, offset)
    }
}

fn cast<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}

/// `x` as `[rows, n]`.
fn as_rows<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (rows, n) = rows_and_width(&x.shape());
    B::float_reshape(x, Shape::new([rows, n]))
}

/// burn-ops twin of the forward: the model's RmsNorm::forward as it was, plus `inv`.
pub fn reference_forward<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    eps: f32,
    offset: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (dtype, shape) = (x.dtype(), x.shape());
    let (rows, n) = rows_and_width(&shape);
    let x = cast::<B>(as_rows::<B>(x), DType::F32); // [rows, n]
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x.clone()), 1); // [rows, 1]
    let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(ms, eps.into())));
    let normed = B::float_mul(x, inv.clone());
    let y = if offset != 0.0 {
        let w = B::float_add_scalar(cast::<B>(w, DType::F32), offset.into());
        cast::<B>(
            B::float_mul(normed, B::float_reshape(w, Shape::new([1, n]))),
            dtype,
        )
    } else {
        let w = B::float_reshape(cast::<B>(w, dtype), Shape::new([1, n]));
        B::float_mul(cast::<B>(normed, dtype), w)
    };
    (
        B::float_reshape(y, shape),
        B::float_reshape(inv, Shape::new([rows])),
    )
}

/// burn-ops twin of the backward, in f32 with the forward's roundings of `n` and `w`.
pub fn reference_backward<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    inv: FloatTensor<B>,
    grad: FloatTensor<B>,
    offset: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (dtype, wdtype, shape) = (x.dtype(), w.dtype(), x.shape());
    let (rows, n) = rows_and_width(&shape);
    let x = cast::<B>(as_rows::<B>(x), DType::F32);
    let g = cast::<B>(as_rows::<B>(grad), DType::F32);
    let inv = B::float_reshape(cast::<B>(inv, DType::F32), Shape::new([rows, 1]));
    let normed = B::float_mul(x, inv.clone()); // [rows, n]
    let (factor, multiplied) = if offset != 0.0 {
        let w = B::float_add_scalar(cast::<B>(w, DType::F32), offset.into());
        (w, normed.clone())
    } else {
        let round = |t| cast::<B>(cast::<B>(t, dtype), DType::F32);
        (round(w), round(normed.clone()))
    };
    let dw = B::float_sum_dim(B::float_mul(g.clone(), multiplied), 0); // [1, n]
    let dn = B::float_mul(g, B::float_reshape(factor, Shape::new([1, n])));
    let mean = B::float_mean_dim(B::float_mul(dn.clone(), normed.clone()), 1); // [rows, 1]
    let dx = B::float_mul(inv, B::float_sub(dn, B::float_mul(normed, mean)));
    (
        cast::<B>(B::float_reshape(dx, shape), dtype),
        cast::<B>(B::float_reshape(dw, Shape::new([n])), wdtype),
    )
}

// ---------------------------------------------------------------- WGSL launch (wgpu runtime only)

pub(crate) const FWD_SHADER: Shader = shader!("rms_norm_train_fwd.wgsl", prelude);
pub(crate) const BWD_SHADER: Shader = shader!("rms_norm_train_bwd.wgsl", prelude);
pub(crate) const DW_SHADER: Shader = shader!("rms_norm_train_dw.wgsl");

/// Most workgroups the rows are split over: the dw pass then sums at most this many partials per
/// column, and on lavapipe 1024 workgroups were slower than 256 (64 were faster still, but leave
/// a real GPU's cores idle).
const MAX_GROUPS: usize = 256;

/// One instance of the three shaders: `[rows, n]`, the workgroup count of the backward, eps and
/// offset, and the element types of x and w.
struct NormSource {
    shader: &'static Shader,
    rows: usize,
    n: usize,
    groups: usize,
    eps: f32,
    offset: f32,
    f16: bool,
    w_f16: bool,
}

/// Workgroup size for rows of `n`: a power of two near n / 16 (16 columns per invocation, which
/// bounds the backward's private accumulators), from 32 (one subgroup on most GPUs) to 256. Each
/// halving of the workgroup removes a barrier from every row's reduction: on lavapipe, where a
/// barrier is expensive, 256 invocations on 576-wide rows were 2-3× slower than 32.
fn workgroup(n: usize) -> usize {
    (n.next_power_of_two() / 16).clamp(32, 256)
}

impl KernelSource for NormSource {
    fn source(&self) -> SourceTemplate {
        let wg = workgroup(self.n);
        self.shader
            .template(self.f16 || self.w_f16)
            .register("elem", if self.f16 { "f16" } else { "f32" })
            .register("welem", if self.w_f16 { "f16" } else { "f32" })
            .register("r", self.rows.to_string())
            .register("n", self.n.to_string())
            .register("g", self.groups.to_string())
            .register("wg", wg.to_string())
            .register("cols", self.n.div_ceil(wg).max(1).to_string())
            // Debug formatting prints the shortest string that reads back to the same f32.
            .register("eps", format!("{:?}", self.eps))
            .register("offset", format!("{:?}", self.offset))
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((
            self.shader.file,
            [self.rows, self.n, self.groups],
            [self.eps.to_bits(), self.offset.to_bits()],
            [self.f16, self.w_f16],
        ))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The three shaders for every element type pair and both weight rules, completed (for the
/// registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for shader in [&FWD_SHADER, &BWD_SHADER, &DW_SHADER] {
        for (f16, w_f16) in [(false, false), (true, false), (true, true)] {
            for (n, offset) in [(96, 0.0), (1000, 1.0)] {
                let kernel = NormSource {
                    shader,
                    rows: 7,
                    n,
                    groups: 3,
                    eps: 1e-6,
                    offset,
                    f16,
                    w_f16,
                };
                out.push(Variant::of(&kernel, shader, f16 || w_f16));
            }
        }
    }
    out
}

/// x's and w's element types as the kernels read them: f16 kept where the device's WGSL has it,
/// every other dtype computed in f32.
fn elems(x: &CubeTensor, w: &CubeTensor) -> (bool, bool) {
    (reads_f16(x), reads_f16(w))
}

impl RmsNormTrainBackend for CubeBackend {
    fn rms_norm_train(
        x: CubeTensor,
        w: CubeTensor,
        eps: f32,
        offset: f32,
    ) -> (CubeTensor, CubeTensor) {
        if x.device.runtime() != RuntimeId::Wgpu {
            return reference_forward::<Self>(x, w, eps, offset);
        }
        let (dtype, shape) = (x.dtype, x.shape());
        let (rows, n) = rows_and_width(&shape);
        let (f16, w_f16) = elems(&x, &w);
        let x = contiguous_as(x, elem_dtype(f16));
        let w = contiguous_as(w, elem_dtype(w_f16));
        let y = new_tensor(&x, shape, elem_dtype(f16));
        let inv = new_f32(&x, Shape::new([rows]));
        if rows > 0 && n > 0 {
            let groups = rows.min(MAX_GROUPS);
            let kernel = NormSource {
                shader: &FWD_SHADER,
                rows,
                n,
                groups,
                eps,
                offset,
                f16,
                w_f16,
            };
            launch_wgsl(kernel, workgroup(n) as u32, groups, &[&x, &w, &y, &inv]);
        }
        (cast_to(y, dtype), inv)
    }

    fn rms_norm_train_backward(
        x: CubeTensor,
        w: CubeTensor,
        inv: CubeTensor,
        grad: CubeTensor,
        offset: f32,
        weight_grad: bool,
    ) -> (CubeTensor, CubeTensor) {
        if x.device.runtime() != RuntimeId::Wgpu {
            return reference_backward::<Self>(x, w, inv, grad, offset);
        }
        let (dtype, wdtype, shape) = (x.dtype, w.dtype, x.shape());
        let (rows, n) = rows_and_width(&shape);
        let (f16, w_f16) = elems(&x, &w);
        let x = contiguous_as(x, elem_dtype(f16));
        let grad = contiguous_as(grad, elem_dtype(f16));
        let w = contiguous_as(w, elem_dtype(w_f16));
        let inv = contiguous_as(inv, DType::F32);
        let dx = new_tensor(&x, shape, elem_dtype(f16));
        let dw = new_tensor(&x, Shape::new([n]), elem_dtype(w_f16));
        if n > 0 {
            let groups = rows.clamp(1, MAX_GROUPS);
            let part = new_f32(&x, Shape::new([groups, n]));
            let source = |shader| NormSource {
                shader,
                rows,
                n,
                groups,
                eps: 0.0,
                offset,
                f16,
                w_f16,
            };
            // With no rows the backward writes zero partials: dw = 0.
            let wg = workgroup(n) as u32;
            launch_wgsl(
                source(&BWD_SHADER),
                wg,
                groups,
                &[&x, &w, &inv, &grad, &dx, &part],
            );
            if weight_grad {
                launch_wgsl(source(&DW_SHADER), 256, n.div_ceil(256), &[&part, &dw]);
            }
        }
        (cast_to(dx, dtype), cast_to(dw, wdtype))
    }
}

// ---------------------------------------------------------------- autodiff

#[derive(Debug)]
struct RmsNormTrainBackward;

impl<B: Backend + RmsNormTrainBackend> Backward<B, 2> for RmsNormTrainBackward {
    /// x, w, inv, offset
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (x, w, inv, offset) = ops.state;
        let (dx, dw) = B::rms_norm_train_backward(x, w, inv, g, offset, w_node.is_some());
        if let Some(node) = x_node {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = w_node {
            grads.register::<B>(node.id, dw);
        }
    }
}

impl<B: Backend + RmsNormTrainBackend, C: CheckpointStrategy> RmsNormTrainBackend
    for Autodiff<B, C>
{
    fn rms_norm_train(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
        offset: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), w.node()];
        let (x, w) = (x.into_primitive(), w.into_primitive());
        match <RmsNormTrainBackward as Backward<B, 2>>::prepare::<C>(RmsNormTrainBackward, nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, inv) = B::rms_norm_train(x.clone(), w.clone(), eps, offset);
                let y = prep.finish((x, w, inv.clone(), offset), y);
                (y, <Self as AutodiffBackend>::from_inner(inv))
            }
            OpsKind::UnTracked(prep) => {
                let (y, inv) = B::rms_norm_train(x, w, eps, offset);
                (prep.finish(y), <Self as AutodiffBackend>::from_inner(inv))
            }
        }
    }
}

// ---------------------------------------------------------------- tensor-level API

/// RMSNorm of `x [.., N]` over its last dimension with weight `w [N]` (scaling by `offset + w`
/// when `offset` is not 0), as [`crate::model::layers::RmsNorm::forward`] defines it;
/// differentiable in `x` and `w`. Also returns the per-row `inv [rows]` (f32, not differentiable).
pub fn rms_norm_train<const D: usize>(
    x: Tensor<D>,
    w: Tensor<1>,
    eps: f64,
    offset: f32,
) -> (Tensor<D>, Tensor<1>) {
    let (y, inv) = <Dispatch as RmsNormTrainBackend>::rms_norm_train(
        x.into_dispatch(),
        w.into_dispatch(),
        eps as f32,
        offset,
    );
    (Tensor::from_dispatch(y), Tensor::from_dispatch(inv))
}

/// The backward alone: `(dx, dw)` for upstream `grad` (like x), from the forward's `inv`.
pub fn rms_norm_train_grad<const D: usize>(
    x: Tensor<D>,
    w: Tensor<1>,
    inv: Tensor<1>,
    grad: Tensor<D>,
    offset: f32,
) -> (Tensor<D>, Tensor<1>) {
    let (dx, dw) = <Dispatch as RmsNormTrainBackend>::rms_norm_train_backward(
        x.into_dispatch(),
        w.into_dispatch(),
        inv.into_dispatch(),
        grad.into_dispatch(),
        offset,
        true,
    );
    (Tensor::from_dispatch(dx), Tensor::from_dispatch(dw))
}

/// The burn-ops twin of [`rms_norm_train`] (what other backends run), for tests.
pub fn rms_norm_train_twin<const D: usize>(
    x: Tensor<D>,
    w: Tensor<1>,
    eps: f64,
    offset: f32,
) -> (Tensor<D>, Tensor<1>) {
    let (y, inv) =
        reference_forward::<Dispatch>(x.into_dispatch(), w.into_dispatch(), eps as f32, offset);
    (Tensor::from_dispatch(y), Tensor::from_dispatch(inv))
}

/// The burn-ops twin of [`rms_norm_train_grad`].
pub fn rms_norm_train_grad_twin<const D: usize>(
    x: Tensor<D>,
    w: Tensor<1>,
    inv: Tensor<1>,
    grad: Tensor<D>,
    offset: f32,
) -> (Tensor<D>, Tensor<1>) {
    let (dx, dw) = reference_backward::<Dispatch>(
        x.into_dispatch(),
        w.into_dispatch(),
        inv.into_dispatch(),
        grad.into_dispatch(),
        offset,
    );
    (Tensor::from_dispatch(dx), Tensor::from_dispatch(dw))
}

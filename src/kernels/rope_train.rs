//! Rotary position embedding of a training (or prefill, or scoring) step as one custom autodiff
//! op: the WGSL kernel `shaders/rope_train.wgsl` on wgpu, a Rust loop on the CPU backend
//! ([`super::cpu_norm_rope`]), and a burn-ops twin below for every other backend and as the
//! tests' reference.
//!
//! `rope_train(x [B, H, S, D], cos, sin [B or 1, 1, S, D/2])` rotates the halves as
//! [`crate::model::rope::apply`] did with burn ops (transformers' `rotate_half`):
//! `y1 = x1·cos − x2·sin`, `y2 = x2·cos + x1·sin`. burn's autodiff of that runs two slices, four
//! products, two adds and a cat forward (each a launch, each intermediate kept) and their
//! backward; this op runs one launch each way and keeps only the angles: the backward is the
//! rotation's transpose, the rotation by the opposite angle (`sin` negated). `x` may be a
//! transposed view (the heads of a projection): the kernel reads it through its strides.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate};
use burn::backend::{Autodiff, Backend, Dispatch, RuntimeId, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{Slice, Tensor};

use super::common::{
    Shader, Variant, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_tensor, reads_f16, shader,
};

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait RopeTrainBackend: Backend {
    /// `x [B, H, S, D]` rotated by the angles of `cos`, `sin` `[B or 1, 1, S, D/2]` (by the
    /// opposite angles when `inverse`: the backward), contiguous, in x's dtype.
    #[fusion(meta = |x, _cos, _sin, _inverse| TensorSpec::new(x.shape.clone(), x.dtype))]
    fn rope_train(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        inverse: bool,
    ) -> FloatTensor<Self> {
        reference_rotate::<Self>(x, cos, sin, inverse)
    }
}

/// burn-ops twin: the model's `rope::apply` as it was (in x's dtype), `sin` negated when
/// `inverse`.
pub fn reference_rotate<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    inverse: bool,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let [b, h, s, d] = x.shape().dims::<4>();
    let like_x = |t: FloatTensor<B>| {
        if t.dtype() == dtype {
            t
        } else {
            B::float_cast(t, dtype.into())
        }
    };
    let (cos, sin) = (like_x(cos), like_x(sin));
    let sin = if inverse { B::float_neg(sin) } else { sin };
    let half = |lo: usize, hi: usize| {
        let r = |n: usize| Slice::new(0, Some(n as isize), 1);
        let last = Slice::new(lo as isize, Some(hi as isize), 1);
        B::float_slice(x.clone(), &[r(b), r(h), r(s), last])
    };
    let (x1, x2) = (half(0, d / 2), half(d / 2, d));
    let r1 = B::float_sub(
        B::float_mul(x1.clone(), cos.clone()),
        B::float_mul(x2.clone(), sin.clone()),
    );
    let r2 = B::float_add(B::float_mul(x2, cos), B::float_mul(x1, sin));
    B::float_cat(vec![r1, r2], 3)
}

// ---------------------------------------------------------------- WGSL launch (wgpu runtime only)

pub(crate) const SHADER: Shader = shader!("rope_train.wgsl");

/// One instance of the shader: x's shape and element strides, the angles' batch, the direction.
struct RopeSource {
    shape: [usize; 4],
    strides: [usize; 4],
    angle_rows: usize,
    inverse: bool,
    f16: bool,
}

impl KernelSource for RopeSource {
    fn source(&self) -> SourceTemplate {
        let [b, h, s, d] = self.shape;
        let [sb, sh, ss, sd] = self.strides;
        let mut t = SHADER.template(self.f16);
        for (name, v) in [
            ("b", b),
            ("h", h),
            ("s", s),
            ("d", d),
            ("cb", self.angle_rows),
        ] {
            t = t.register(name, v.to_string());
        }
        for (name, v) in [("sb", sb), ("sh", sh), ("ss", ss), ("sd", sd)] {
            t = t.register(name, v.to_string());
        }
        t.register("sign", if self.inverse { "-1.0" } else { "1.0" })
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((
            self.shape,
            self.strides,
            self.angle_rows,
            self.inverse,
            self.f16,
        ))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shader in both directions, f32 and f16, completed (for the registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for inverse in [false, true] {
        for f16 in [false, true] {
            let kernel = RopeSource {
                shape: [2, 3, 5, 8],
                strides: [120, 8, 24, 1],
                angle_rows: 2,
                inverse,
                f16,
            };
            out.push(Variant::of(&kernel, &SHADER, f16));
        }
    }
    out
}

impl RopeTrainBackend for CubeBackend {
    fn rope_train(x: CubeTensor, cos: CubeTensor, sin: CubeTensor, inverse: bool) -> CubeTensor {
        if x.device.runtime() != RuntimeId::Wgpu {
            return reference_rotate::<Self>(x, cos, sin, inverse);
        }
        let (dtype, shape) = (x.dtype, x.shape());
        let f16 = reads_f16(&x);
        let elem = elem_dtype(f16);
        // Read in place through its strides (no copy of a transposed view); only a dtype the
        // kernel does not read is cast (which makes it contiguous).
        let x = cast_to(x, elem);
        let st = x.meta.strides();
        let strides = [st[0], st[1], st[2], st[3]];
        let (cos, sin) = (contiguous_as(cos, elem), contiguous_as(sin, elem));
        let [b, h, s, d] = shape.dims::<4>();
        let angle_rows = cos.shape()[0];
        assert!(
            cos.shape().dims::<4>() == [angle_rows, 1, s, d / 2]
                && sin.shape() == cos.shape()
                && (angle_rows == 1 || angle_rows == b),
            "rope angles {:?} do not fit x {:?}",
            cos.shape(),
            shape
        );
        let y = new_tensor(&x, shape, elem);
        let pairs = b * h * s * (d / 2);
        if pairs > 0 {
            let kernel = RopeSource {
                shape: [b, h, s, d],
                strides,
                angle_rows,
                inverse,
                f16,
            };
            launch_wgsl(kernel, 256, pairs.div_ceil(256), &[&x, &cos, &sin, &y]);
        }
        cast_to(y, dtype)
    }
}

// ---------------------------------------------------------------- autodiff

#[derive(Debug)]
struct RopeTrainBackward;

impl<B: Backend + RopeTrainBackend> Backward<B, 1> for RopeTrainBackward {
    /// cos, sin
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::rope_train(g, cos, sin, true));
        }
    }
}

impl<B: Backend + RopeTrainBackend, C: CheckpointStrategy> RopeTrainBackend for Autodiff<B, C> {
    fn rope_train(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        inverse: bool,
    ) -> FloatTensor<Self> {
        let node = x.node();
        let (x, cos, sin) = (
            x.into_primitive(),
            cos.into_primitive(),
            sin.into_primitive(),
        );
        match <RopeTrainBackward as Backward<B, 1>>::prepare::<C>(RopeTrainBackward, [node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::rope_train(x, cos.clone(), sin.clone(), inverse);
                // The backward of the inverse rotation is the forward one.
                let (cos, sin) = match inverse {
                    false => (cos, sin),
                    true => (cos, B::float_neg(sin)),
                };
                prep.finish((cos, sin), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rope_train(x, cos, sin, inverse)),
        }
    }
}

// ---------------------------------------------------------------- tensor-level API

/// `x [B, H, S, D]` rotated by `cos`, `sin` `[B or 1, 1, S, D/2]` (halves layout, as
/// [`crate::model::rope::apply`]); differentiable in `x` (the angles are constants).
pub fn rope_train(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as RopeTrainBackend>::rope_train(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        false,
    ))
}

/// The backward alone: `dx` for upstream `grad [B, H, S, D]` (the rotation by −angle).
pub fn rope_train_grad(grad: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as RopeTrainBackend>::rope_train(
        grad.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        true,
    ))
}

/// The burn-ops twin of [`rope_train`] (`inverse` false) and [`rope_train_grad`] (true).
pub fn rope_train_twin(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>, inverse: bool) -> Tensor<4> {
    Tensor::from_dispatch(reference_rotate::<Dispatch>(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        inverse,
    ))
}

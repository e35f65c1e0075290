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
//! rotation's transpose, the rotation by the opposite angle (`sin` negated).
//!
//! Layouts: the op's operand and result each have their heads in a [`HeadsLayout`]. The model
//! rotates a projection's heads `[B, S, H, D]` into the `[B, H, S, D]` the attention reads
//! ([`rope_heads`]): the kernel reads x through its strides and writes y contiguous, and the
//! backward writes the gradient back as `[B, S, H, D]`, x's layout, so autodiff's reshape to the
//! projection's `[B, S, H·D]` is a view. Before, x was a `swap_dims` view and the gradient came
//! back `[B, H, S, D]`: swapped and reshaped, it was copied (one launch for q, one for k).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate};
use burn::backend::{
    Autodiff, Backend, Dispatch, RuntimeId, Shape, TensorMetadata, backend_extension,
};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{Slice, Tensor};

use super::common::{
    Shader, Variant, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_tensor, reads_f16, shader,
};

/// Where a RoPE operand's heads sit: after the batch (`[B, H, S, D]`, what attention reads) or
/// after the positions (`[B, S, H, D]`, a projection's `[B, S, H·D]` split into heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadsLayout {
    /// `[B, H, S, D]`
    Bhsd,
    /// `[B, S, H, D]`
    Bshd,
}

/// `shape` in `from`'s dims reordered to `to`'s (dims 1 and 2 swapped where they differ).
fn relayout(shape: &Shape, from: HeadsLayout, to: HeadsLayout) -> Shape {
    let mut dims = shape.dims::<4>();
    if from != to {
        dims.swap(1, 2);
    }
    Shape::new(dims)
}

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait RopeTrainBackend: Backend {
    /// `x` (heads in `x_layout`) rotated by the angles of `cos`, `sin` `[B or 1, 1, S, D/2]`
    /// (by the opposite angles when `inverse`: the backward), with its heads in `y_layout`,
    /// contiguous, in x's dtype. The backward of (`x_layout`, `y_layout`) is the op with the two
    /// swapped: the gradient comes back in x's layout.
    #[fusion(meta = |x, _cos, _sin, _inverse, x_layout, y_layout| TensorSpec::new(
        relayout(&x.shape, *x_layout, *y_layout),
        x.dtype
    ))]
    fn rope_train(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        inverse: bool,
        x_layout: HeadsLayout,
        y_layout: HeadsLayout,
    ) -> FloatTensor<Self> {
        reference_rotate::<Self>(x, cos, sin, inverse, x_layout, y_layout)
    }
}

/// burn-ops twin: the model's `rope::apply` as it was (in x's dtype), `sin` negated when
/// `inverse`, the heads moved by `swap_dims` where the layouts ask.
pub fn reference_rotate<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    inverse: bool,
    x_layout: HeadsLayout,
    y_layout: HeadsLayout,
) -> FloatTensor<B> {
    let swap = |t: FloatTensor<B>, layout: HeadsLayout| match layout {
        HeadsLayout::Bhsd => t,
        HeadsLayout::Bshd => B::float_swap_dims(t, 1, 2),
    };
    let y = rotate::<B>(swap(x, x_layout), cos, sin, inverse); // [B, H, S, D]
    swap(y, y_layout)
}

/// The rotation of `x [B, H, S, D]` in burn ops.
fn rotate<B: Backend>(
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

/// One instance of the shader: x's logical shape `[B, H, S, D]` and its element strides by
/// logical dim, the angles' batch, the direction, y's layout.
struct RopeSource {
    shape: [usize; 4],
    strides: [usize; 4],
    angle_rows: usize,
    inverse: bool,
    y_layout: HeadsLayout,
    f16: bool,
}

impl KernelSource for RopeSource {
    fn source(&self) -> SourceTemplate {
        let [b, h, s, d] = self.shape;
        let [xb, xh, xs, xd] = self.strides;
        let seq_first = self.y_layout == HeadsLayout::Bshd;
        let (n1, n2) = if seq_first { (s, h) } else { (h, s) };
        let mut t = SHADER.template(self.f16);
        for (name, v) in [
            ("b", b),
            ("n1", n1),
            ("n2", n2),
            ("s", s),
            ("d", d),
            ("cb", self.angle_rows),
            ("xb", xb),
            ("xh", xh),
            ("xs", xs),
            ("xd", xd),
        ] {
            t = t.register(name, v.to_string());
        }
        t.register("sign", if self.inverse { "-1.0" } else { "1.0" })
            .register("y_seq_first", seq_first.to_string())
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((
            self.shape,
            self.strides,
            self.angle_rows,
            self.inverse,
            self.y_layout == HeadsLayout::Bshd,
            self.f16,
        ))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shader in both directions and both output layouts, f32 and f16, completed (for the
/// registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for inverse in [false, true] {
        for y_layout in [HeadsLayout::Bhsd, HeadsLayout::Bshd] {
            for f16 in [false, true] {
                let kernel = RopeSource {
                    shape: [2, 3, 5, 8],
                    strides: [120, 8, 24, 1],
                    angle_rows: 2,
                    inverse,
                    y_layout,
                    f16,
                };
                out.push(Variant::of(&kernel, &SHADER, f16));
            }
        }
    }
    out
}

impl RopeTrainBackend for CubeBackend {
    fn rope_train(
        x: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        inverse: bool,
        x_layout: HeadsLayout,
        y_layout: HeadsLayout,
    ) -> CubeTensor {
        if x.device.runtime() != RuntimeId::Wgpu {
            return reference_rotate::<Self>(x, cos, sin, inverse, x_layout, y_layout);
        }
        let dtype = x.dtype;
        let f16 = reads_f16(&x);
        let elem = elem_dtype(f16);
        // Read in place through its strides (no copy of a transposed view); only a dtype the
        // kernel does not read is cast (which makes it contiguous).
        let x = cast_to(x, elem);
        let st = x.meta.strides();
        // x's dims and strides by logical dim (b, h, s, d).
        let logical = |v: [usize; 4]| match x_layout {
            HeadsLayout::Bhsd => v,
            HeadsLayout::Bshd => [v[0], v[2], v[1], v[3]],
        };
        let strides = logical([st[0], st[1], st[2], st[3]]);
        let [b, h, s, d] = logical(x.shape().dims::<4>());
        let (cos, sin) = (contiguous_as(cos, elem), contiguous_as(sin, elem));
        let angle_rows = cos.shape()[0];
        assert!(
            cos.shape().dims::<4>() == [angle_rows, 1, s, d / 2]
                && sin.shape() == cos.shape()
                && (angle_rows == 1 || angle_rows == b),
            "rope angles {:?} do not fit x {:?}",
            cos.shape(),
            x.shape()
        );
        let y_shape = relayout(&Shape::new([b, h, s, d]), HeadsLayout::Bhsd, y_layout);
        let y = new_tensor(&x, y_shape, elem);
        let pairs = b * h * s * (d / 2);
        if pairs > 0 {
            let kernel = RopeSource {
                shape: [b, h, s, d],
                strides,
                angle_rows,
                inverse,
                y_layout,
                f16,
            };
            launch_wgsl(kernel, 256, pairs.div_ceil(256), &[&x, &cos, &sin, &y]);
        }
        cast_to(y, dtype)
    }
}

// ---------------------------------------------------------------- autodiff

/// The forward's (x, y) layouts: the backward reads the gradient in y's and writes it in x's.
#[derive(Debug)]
struct RopeTrainBackward {
    x_layout: HeadsLayout,
    y_layout: HeadsLayout,
}

impl<B: Backend + RopeTrainBackend> Backward<B, 1> for RopeTrainBackward {
    /// cos, sin
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = parent {
            let dx = B::rope_train(g, cos, sin, true, self.y_layout, self.x_layout);
            grads.register::<B>(node.id, dx);
        }
    }
}

impl<B: Backend + RopeTrainBackend, C: CheckpointStrategy> RopeTrainBackend for Autodiff<B, C> {
    fn rope_train(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        inverse: bool,
        x_layout: HeadsLayout,
        y_layout: HeadsLayout,
    ) -> FloatTensor<Self> {
        let node = x.node();
        let (x, cos, sin) = (
            x.into_primitive(),
            cos.into_primitive(),
            sin.into_primitive(),
        );
        let backward = RopeTrainBackward { x_layout, y_layout };
        match <RopeTrainBackward as Backward<B, 1>>::prepare::<C>(backward, [node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::rope_train(x, cos.clone(), sin.clone(), inverse, x_layout, y_layout);
                // The backward of the inverse rotation is the forward one.
                let (cos, sin) = match inverse {
                    false => (cos, sin),
                    true => (cos, B::float_neg(sin)),
                };
                prep.finish((cos, sin), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::rope_train(x, cos, sin, inverse, x_layout, y_layout))
            }
        }
    }
}

// ---------------------------------------------------------------- tensor-level API

/// [`RopeTrainBackend::rope_train`] or its twin [`reference_rotate`] on the dispatch backend.
type RopeOp = fn(
    FloatTensor<Dispatch>,
    FloatTensor<Dispatch>,
    FloatTensor<Dispatch>,
    bool,
    HeadsLayout,
    HeadsLayout,
) -> FloatTensor<Dispatch>;

/// `op` on tensors.
fn run(
    op: RopeOp,
    x: Tensor<4>,
    [cos, sin]: [Tensor<4>; 2],
    inverse: bool,
    x_layout: HeadsLayout,
    y_layout: HeadsLayout,
) -> Tensor<4> {
    Tensor::from_dispatch(op(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        inverse,
        x_layout,
        y_layout,
    ))
}

/// The op on the dispatch backend.
const OP: RopeOp = <Dispatch as RopeTrainBackend>::rope_train;

/// `x [B, H, S, D]` rotated by `cos`, `sin` `[B or 1, 1, S, D/2]` (halves layout, as
/// [`crate::model::rope::apply`]); differentiable in `x` (the angles are constants).
pub fn rope_train(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    use HeadsLayout::Bhsd;
    run(OP, x, [cos, sin], false, Bhsd, Bhsd)
}

/// The backward alone: `dx` for upstream `grad [B, H, S, D]` (the rotation by −angle).
pub fn rope_train_grad(grad: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    use HeadsLayout::Bhsd;
    run(OP, grad, [cos, sin], true, Bhsd, Bhsd)
}

/// A projection's heads `x [B, S, H, D]` rotated into `[B, H, S, D]` (what attention reads):
/// [`rope_train`] of `x.swap_dims(1, 2)`, read without a copy, its gradient coming back
/// contiguous `[B, S, H, D]`.
pub fn rope_heads(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    use HeadsLayout::{Bhsd, Bshd};
    run(OP, x, [cos, sin], false, Bshd, Bhsd)
}

/// The backward of [`rope_heads`] alone: `dx [B, S, H, D]` for upstream `grad [B, H, S, D]`.
pub fn rope_heads_grad(grad: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    use HeadsLayout::{Bhsd, Bshd};
    run(OP, grad, [cos, sin], true, Bhsd, Bshd)
}

/// The burn-ops twin of the op: [`rope_train`] (`inverse` false, both layouts `Bhsd`),
/// [`rope_train_grad`] (`inverse` true), [`rope_heads`] (`Bshd` → `Bhsd`) and
/// [`rope_heads_grad`] (`Bhsd` → `Bshd`, `inverse`).
pub fn rope_layout_twin(
    x: Tensor<4>,
    angles: [Tensor<4>; 2],
    inverse: bool,
    x_layout: HeadsLayout,
    y_layout: HeadsLayout,
) -> Tensor<4> {
    run(
        reference_rotate::<Dispatch>,
        x,
        angles,
        inverse,
        x_layout,
        y_layout,
    )
}

/// The burn-ops twin of [`rope_train`] (`inverse` false) and [`rope_train_grad`] (true).
pub fn rope_train_twin(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>, inverse: bool) -> Tensor<4> {
    use HeadsLayout::Bhsd;
    rope_layout_twin(x, [cos, sin], inverse, Bhsd, Bhsd)
}

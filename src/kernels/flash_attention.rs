//! Attention as one custom autodiff op whose memory is linear in the sequence: the forward keeps
//! only its output and each query's log-sum-exp, and the backward recomputes the probabilities
//! from them, so nothing `[S, K]` survives the op (the model's attention used to keep its
//! `[b, h, s, k]` probabilities for backward: 37.7 MB per row per layer at s = 1024).
//!
//! Contract (the CPU kernel in [`super::cpu_flash`], the twins below and the WGSL kernels hold to
//! exactly this):
//! - `flash_attention(q [B, H, S, D], k [B, HKV, K, D], v [B, HKV, K, D], qpos [B, S] int,
//!   kpos [B, K] int, window, scale) -> (out [B, H, S, D] in q's dtype, lse [B, H, S] f32)`.
//!   `H = HKV · G`; query head `h` reads kv head `h / G` (transformers' `repeat_kv`). Query `i`
//!   of row `r` sees key `j` iff `qpos[r, i] ≥ 0`, `kpos[r, j] ≥ 0`, `kpos ≤ qpos` and
//!   (`window == 0` or `qpos − kpos < window`). Scores `s = scale · q·k` in f32,
//!   `lse = ln Σ_visible exp(s)`, `out = Σ_visible exp(s − lse) · v`. A query that sees no key
//!   gets `out = 0`, `lse = 0`. f16 or f32 inputs, f32 accumulation.
//! - `flash_attention_backward(q, k, v, out, lse, dout, qpos, kpos, window, scale) -> (dq, dk,
//!   dv)` in q's, k's and v's dtypes: with `P = exp(s − lse)` on visible pairs and
//!   `Δᵢ = Σ_d dout·out`, `dv = Pᵀ dout`, `dS = P ⊙ (dout vᵀ − Δ)`, `dq = scale · dS k`,
//!   `dk = scale · dSᵀ q` (dk, dv summed over the G query heads of a kv head).
//!
//! The autodiff state is `q, k, v, out, lse` and the positions. The twins build the `[S, K]`
//! visibility mask from the positions; they are the reference, not the memory-saving path.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, FloatDType, RuntimeId, Shape,
    TensorMetadata, backend_extension,
};
use burn::tensor::{Int, Tensor};

use super::MASKED;
use super::flash_wgsl::{flash_backward_wgsl, flash_forward_wgsl, flash_wgsl_supported};

/// `lse [B, H, S]` of queries `q [B, H, S, D]`.
fn lse_spec(q: &TensorSpec) -> TensorSpec {
    let s = &q.shape;
    TensorSpec::new(Shape::new([s[0], s[1], s[2]]), DType::F32)
}

fn like_spec(t: &TensorSpec) -> TensorSpec {
    TensorSpec::new(t.shape.clone(), t.dtype)
}

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait FlashAttentionBackend: Backend {
    /// `(out [B, H, S, D], lse [B, H, S])`: see the module's contract.
    #[fusion(meta = |q, _k, _v, _qp, _kp, _w, _s| (like_spec(q), lse_spec(q)))]
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        qpos: IntTensor<Self>,
        kpos: IntTensor<Self>,
        window: u32,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(q, k, v, qpos, kpos, window, scale)
    }

    /// `(dq, dk, dv)` from the forward's `out` and `lse` and upstream `dout`.
    #[fusion(meta = |q, k, v, _o, _l, _d, _qp, _kp, _w, _s| (like_spec(q), like_spec(k), like_spec(v)))]
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        qpos: IntTensor<Self>,
        kpos: IntTensor<Self>,
        window: u32,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward::<Self>(q, k, v, out, lse, dout, qpos, kpos, window, scale)
    }
}

// ---------------------------------------------------------------- burn-ops twins

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

/// `1` where `x ≥ 1`, `0` where `x ≤ 0`: a step on integer-valued floats, so the mask below is
/// float arithmetic alone (exact for positions below 2²⁴).
fn step<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_clamp(x, 0f32.into(), 1f32.into())
}

/// Visibility `[B, 1, 1, S, K]` (1 or 0) of `qpos [B, S]` over `kpos [B, K]`, per the contract.
fn visibility<B: Backend>(qpos: IntTensor<B>, kpos: IntTensor<B>, window: u32) -> FloatTensor<B> {
    let [b, s] = qpos.shape().dims::<2>();
    let kl = kpos.shape()[1];
    let qp = B::int_into_float(B::int_reshape(qpos, Shape::new([b, s, 1])), FloatDType::F32);
    let kp = B::int_into_float(
        B::int_reshape(kpos, Shape::new([b, 1, kl])),
        FloatDType::F32,
    );
    // pos ≥ 0 ⇔ pos + 1 ≥ 1.
    let q_real = step::<B>(B::float_add_scalar(qp.clone(), 1f32.into())); // [B, S, 1]
    let k_real = step::<B>(B::float_add_scalar(kp.clone(), 1f32.into())); // [B, 1, K]
    let dist = B::float_sub(qp, kp); // [B, S, K]: qpos − kpos
    // kpos ≤ qpos ⇔ dist + 1 ≥ 1.
    let mut vis = B::float_mul(
        B::float_mul(q_real, k_real),
        step::<B>(B::float_add_scalar(dist.clone(), 1f32.into())),
    );
    if window > 0 {
        // dist < window ⇔ window − dist ≥ 1.
        let inside = step::<B>(B::float_add_scalar(
            B::float_neg(dist),
            (window as f32).into(),
        ));
        vis = B::float_mul(vis, inside);
    }
    B::float_reshape(vis, Shape::new([b, 1, 1, s, kl]))
}

/// Scaled scores `[B, HKV, G, S, K]` in f32 of `q [B, H, S, D]` (f32) against `k [B, HKV, K, D]`.
fn scores<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, scale: f32) -> FloatTensor<B> {
    let [b, h, s, d] = q.shape().dims::<4>();
    let [_, hkv, kl, _] = k.shape().dims::<4>();
    let g = h / hkv;
    let q = B::float_reshape(q, Shape::new([b, hkv, g * s, d]));
    let x = B::float_matmul(q, B::float_swap_dims(k, 2, 3)); // [B, HKV, G·S, K]
    let x = B::float_mul_scalar(x, scale.into());
    B::float_reshape(x, Shape::new([b, hkv, g, s, kl]))
}

/// Scores `x` with the hidden ones (`vis` 0) replaced by [`MASKED`] exactly (not added to it:
/// `s + MASKED` rounds `s` away unevenly), so a row max is over the visible scores, a fully
/// hidden row's scores are all equal, and `exp(x − lse)` of a hidden one is 0, never ∞.
fn hide<B: Backend>(x: FloatTensor<B>, vis: FloatTensor<B>) -> FloatTensor<B> {
    let hidden = B::float_mul_scalar(
        B::float_add_scalar(B::float_neg(vis.clone()), 1f32.into()),
        MASKED.into(),
    );
    B::float_add(B::float_mul(x, vis), hidden)
}

/// burn-ops twin of the forward.
pub fn reference_forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    qpos: IntTensor<B>,
    kpos: IntTensor<B>,
    window: u32,
    scale: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = q.dtype();
    let [b, h, s, d] = q.shape().dims::<4>();
    let [_, hkv, kl, _] = k.shape().dims::<4>();
    let g = h / hkv;
    let vis = visibility::<B>(qpos, kpos, window); // [B, 1, 1, S, K]
    let x = scores::<B>(in_f32::<B>(q), in_f32::<B>(k), scale); // [B, HKV, G, S, K]
    let x = hide::<B>(x, vis.clone());
    let m = B::float_max_dim(x.clone(), 4); // [B, HKV, G, S, 1]
    let e = B::float_mul(B::float_exp(B::float_sub(x, m.clone())), vis.clone());
    let l = B::float_sum_dim(e.clone(), 4); // [B, HKV, G, S, 1]
    // 1 where the query sees some key; where it sees none, l = 0 becomes 1 below so that
    // out = 0 / 1 and lse = 0.
    let any = B::float_max_dim(vis, 4); // [B, 1, 1, S, 1]
    let none = B::float_add_scalar(B::float_neg(any.clone()), 1f32.into());
    let l = B::float_add(l, none);
    let lse = B::float_mul(B::float_add(m, B::float_log(l.clone())), any);
    let p = B::float_div(e, l); // [B, HKV, G, S, K]
    let p = B::float_reshape(p, Shape::new([b, hkv, g * s, kl]));
    let out = B::float_matmul(p, in_f32::<B>(v)); // [B, HKV, G·S, D]
    (
        cast::<B>(B::float_reshape(out, Shape::new([b, h, s, d])), dtype),
        B::float_reshape(lse, Shape::new([b, h, s])),
    )
}

/// burn-ops twin of the backward.
#[allow(clippy::too_many_arguments)]
pub fn reference_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    dout: FloatTensor<B>,
    qpos: IntTensor<B>,
    kpos: IntTensor<B>,
    window: u32,
    scale: f32,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (qt, kt, vt) = (q.dtype(), k.dtype(), v.dtype());
    let [b, h, s, d] = q.shape().dims::<4>();
    let [_, hkv, kl, _] = k.shape().dims::<4>();
    let g = h / hkv;
    let rows = Shape::new([b, hkv, g * s, d]);
    let (q, k, v) = (in_f32::<B>(q), in_f32::<B>(k), in_f32::<B>(v));
    let vis = visibility::<B>(qpos, kpos, window);
    let x = scores::<B>(q.clone(), k.clone(), scale); // [B, HKV, G, S, K]
    let lse = B::float_reshape(in_f32::<B>(lse), Shape::new([b, hkv, g, s, 1]));
    let p = B::float_mul(
        B::float_exp(B::float_sub(hide::<B>(x, vis.clone()), lse)),
        vis,
    );
    let p = B::float_reshape(p, Shape::new([b, hkv, g * s, kl])); // [B, HKV, G·S, K]
    let dout = B::float_reshape(in_f32::<B>(dout), rows.clone()); // [B, HKV, G·S, D]
    let out = B::float_reshape(in_f32::<B>(out), rows.clone());
    // Summing over G·S sums dk and dv over the kv head's query heads.
    let dv = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), dout.clone()); // [B, HKV, K, D]
    let dp = B::float_matmul(dout.clone(), B::float_swap_dims(v, 2, 3)); // [B, HKV, G·S, K]
    let delta = B::float_sum_dim(B::float_mul(dout, out), 3); // [B, HKV, G·S, 1]
    let ds = B::float_mul(p, B::float_sub(dp, delta));
    let ds = B::float_mul_scalar(ds, scale.into());
    let dq = B::float_matmul(ds.clone(), k); // [B, HKV, G·S, D]
    let q = B::float_reshape(q, rows);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q); // [B, HKV, K, D]
    (
        cast::<B>(B::float_reshape(dq, Shape::new([b, h, s, d])), qt),
        cast::<B>(dk, kt),
        cast::<B>(dv, vt),
    )
}

/// Rows a software rasterizer's kernels may span: lavapipe silently ends every loop of an
/// invocation after 65535 iterations in all, which the WGSL kernels reach at about 19k keys per
/// row or 28k query rows per kv head (`flash_wgsl.rs`); past these (with a margin) the twins run,
/// which fail loudly (buffer limits) rather than return rows cut short.
const SOFTWARE_MAX_KEYS: usize = 16 * 1024;
const SOFTWARE_MAX_GROUP_ROWS: usize = 24 * 1024;

/// Whether the WGSL kernels of `flash_wgsl.rs` run `q [B, H, S, D]` against `k [B, HKV, K, D]`
/// on `q`'s device: a wgpu device and a head layout they take (and, on a software rasterizer,
/// lengths within its loop cap); anything else runs the twins.
fn wgsl_runs(q: &CubeTensor, k: &CubeTensor) -> bool {
    let (h, s, d) = (q.meta.shape()[1], q.meta.shape()[2], q.meta.shape()[3]);
    let (hkv, keys) = (k.meta.shape()[1], k.meta.shape()[2]);
    let software = q.client.properties().identity.physical.is_none();
    let within_cap = keys <= SOFTWARE_MAX_KEYS && (h / hkv.max(1)) * s <= SOFTWARE_MAX_GROUP_ROWS;
    q.device.runtime() == RuntimeId::Wgpu
        && flash_wgsl_supported(h, hkv, d)
        && (!software || within_cap)
}

// burn's fusion calls this implementation through the ops' `meta`.
impl FlashAttentionBackend for CubeBackend {
    fn flash_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        qpos: CubeTensor,
        kpos: CubeTensor,
        window: u32,
        scale: f32,
    ) -> (CubeTensor, CubeTensor) {
        if !wgsl_runs(&q, &k) {
            return reference_forward::<Self>(q, k, v, qpos, kpos, window, scale);
        }
        flash_forward_wgsl(q, k, v, qpos, kpos, window, scale)
    }

    fn flash_attention_backward(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        out: CubeTensor,
        lse: CubeTensor,
        dout: CubeTensor,
        qpos: CubeTensor,
        kpos: CubeTensor,
        window: u32,
        scale: f32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        if !wgsl_runs(&q, &k) {
            return reference_backward::<Self>(q, k, v, out, lse, dout, qpos, kpos, window, scale);
        }
        flash_backward_wgsl(q, k, v, out, lse, dout, qpos, kpos, window, scale)
    }
}

// ---------------------------------------------------------------- autodiff

#[derive(Debug)]
struct FlashAttentionBackward;

/// What the backward reads: q, k, v, out, lse, qpos, kpos, window, scale.
type FlashState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    IntTensor<B>,
    u32,
    f32,
);

impl<B: Backend + FlashAttentionBackend> Backward<B, 3> for FlashAttentionBackward {
    type State = FlashState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_node, k_node, v_node] = ops.parents;
        let dout = grads.consume::<B>(&ops.node);
        if q_node.is_none() && k_node.is_none() && v_node.is_none() {
            return;
        }
        let (q, k, v, out, lse, qpos, kpos, window, scale) = ops.state;
        let (dq, dk, dv) =
            B::flash_attention_backward(q, k, v, out, lse, dout, qpos, kpos, window, scale);
        for (node, grad) in [(q_node, dq), (k_node, dk), (v_node, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Backend + FlashAttentionBackend, C: CheckpointStrategy> FlashAttentionBackend
    for Autodiff<B, C>
{
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        qpos: IntTensor<Self>,
        kpos: IntTensor<Self>,
        window: u32,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [q.node(), k.node(), v.node()];
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        match <FlashAttentionBackward as Backward<B, 3>>::prepare::<C>(
            FlashAttentionBackward,
            nodes,
        )
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::flash_attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    qpos.clone(),
                    kpos.clone(),
                    window,
                    scale,
                );
                let state = (q, k, v, out.clone(), lse.clone(), qpos, kpos, window, scale);
                let out = prep.finish(state, out);
                (out, <Self as AutodiffBackend>::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (out, lse) = B::flash_attention(q, k, v, qpos, kpos, window, scale);
                (prep.finish(out), <Self as AutodiffBackend>::from_inner(lse))
            }
        }
    }
}

// ---------------------------------------------------------------- tensor-level API

/// `(out [B, H, S, D], lse [B, H, S])` of `q [B, H, S, D]` over `k, v [B, HKV, K, D]` with
/// positions `qpos [B, S]`, `kpos [B, K]` (−1 for padding), `window` (0: none) and `scale`;
/// differentiable in q, k and v. See the module's contract.
pub fn flash_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    qpos: Tensor<2, Int>,
    kpos: Tensor<2, Int>,
    window: u32,
    scale: f32,
) -> (Tensor<4>, Tensor<3>) {
    let (out, lse) = <Dispatch as FlashAttentionBackend>::flash_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        qpos.into_dispatch(),
        kpos.into_dispatch(),
        window,
        scale,
    );
    (Tensor::from_dispatch(out), Tensor::from_dispatch(lse))
}

/// The burn-ops twin of [`flash_attention`] on any device (the reference in tests).
pub fn flash_attention_twin(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    qpos: Tensor<2, Int>,
    kpos: Tensor<2, Int>,
    window: u32,
    scale: f32,
) -> (Tensor<4>, Tensor<3>) {
    let (out, lse) = reference_forward::<Dispatch>(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        qpos.into_dispatch(),
        kpos.into_dispatch(),
        window,
        scale,
    );
    (Tensor::from_dispatch(out), Tensor::from_dispatch(lse))
}

/// What the backward reads besides q, k, v: the forward's `out [B, H, S, D]` and
/// `lse [B, H, S]`, upstream `dout [B, H, S, D]`, the positions, window and scale.
pub struct FlashSaved {
    pub out: Tensor<4>,
    pub lse: Tensor<3>,
    pub dout: Tensor<4>,
    pub qpos: Tensor<2, Int>,
    pub kpos: Tensor<2, Int>,
    pub window: u32,
    pub scale: f32,
}

/// The backward alone: `(dq, dk, dv)`; `twin` runs the burn-ops twin instead of the backend's
/// implementation.
pub fn flash_attention_grad(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    saved: FlashSaved,
    twin: bool,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let FlashSaved {
        out,
        lse,
        dout,
        qpos,
        kpos,
        window,
        scale,
    } = saved;
    let args = (
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        out.into_dispatch(),
        lse.into_dispatch(),
        dout.into_dispatch(),
        qpos.into_dispatch(),
        kpos.into_dispatch(),
    );
    let (q, k, v, out, lse, dout, qpos, kpos) = args;
    let (dq, dk, dv) = if twin {
        reference_backward::<Dispatch>(q, k, v, out, lse, dout, qpos, kpos, window, scale)
    } else {
        <Dispatch as FlashAttentionBackend>::flash_attention_backward(
            q, k, v, out, lse, dout, qpos, kpos, window, scale,
        )
    };
    (
        Tensor::from_dispatch(dq),
        Tensor::from_dispatch(dk),
        Tensor::from_dispatch(dv),
    )
}

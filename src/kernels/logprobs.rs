//! Token log-probs as a custom burn op: a fused WGSL kernel on wgpu (`shaders/token_logprobs_*.wgsl`)
//! and a burn-ops twin everywhere else (the CPU backend, other cubecl runtimes, and as the test
//! reference). Two ops:
//!
//! - `token_logprobs(logits [N, V], targets [N]) -> (logp [N], lse [N])`, with its own backward
//!   `dlogits = g · (onehot(t) − softmax(logits))` from the saved lse.
//! - `head_logprobs(hidden [N, H], weight [V, H], targets [N], chunk) -> (logp, lse)`: the lm_head
//!   projection fused with the log-prob, `chunk` rows at a time. Its backward recomputes each chunk's
//!   logits instead of keeping them, so training memory is O(chunk · V), not O(N · V).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, FloatDType, RuntimeId, Shape,
    TensorMetadata, backend_extension,
};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{Int, Slice, Tensor};

use super::common::{
    Shader, Variant, as_i32, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_f32, new_tensor,
    reads_f16, shader, upload_words,
};

fn row_spec(logits: &TensorSpec) -> TensorSpec {
    TensorSpec::new(Shape::new([logits.shape[0]]), DType::F32)
}

#[backend_extension(Cube, Flex, Fusion, Autodiff)]
pub trait LogprobBackend: Backend {
    /// `logits [N, V]`, `targets [N]` → `(logp [N], lse [N])`.
    #[fusion(meta = |logits, _targets| (row_spec(logits), row_spec(logits)))]
    fn token_logprobs(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(logits, targets)
    }

    /// `dlogits [N, V] = grad[n] · (1[v = targets[n]] − exp(logits[n, v] − lse[n]))`, in the
    /// logits' dtype.
    #[fusion(meta = |logits, _t, _l, _g| TensorSpec::new(logits.shape.clone(), logits.dtype))]
    fn token_logprobs_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference_backward::<Self>(logits, targets, lse, grad)
    }

    /// `hidden [N, H]`, `weight [V, H]`, `targets [N]` → `(logp [N], lse [N])`, `chunk` rows of
    /// logits alive at a time.
    #[fusion(default)]
    fn head_logprobs(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        chunk: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let n = hidden.shape()[0];
        let wt = Self::float_transpose(weight);
        let mut logp = vec![];
        let mut lse = vec![];
        for (s, e) in chunks(n, chunk) {
            let h = Self::float_slice(hidden.clone(), &rows(s, e));
            let t = Self::int_slice(
                targets.clone(),
                &[Slice::new(s as isize, Some(e as isize), 1)],
            );
            let (lp, l) = Self::token_logprobs(Self::float_matmul(h, wt.clone()), t);
            logp.push(lp);
            lse.push(l);
        }
        (Self::float_cat(logp, 0), Self::float_cat(lse, 0))
    }
}

/// `[start, end)` row ranges of at most `chunk` rows.
pub fn chunks(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..n).step_by(chunk).map(move |s| (s, (s + chunk).min(n)))
}

fn rows(s: usize, e: usize) -> [Slice; 2] {
    [Slice::new(s as isize, Some(e as isize), 1), Slice::full()]
}

/// burn-ops twin of the forward: [`super::lse::log_sum_exp_rows`], then a gather.
pub fn reference_forward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let n = logits.shape()[0];
    let logits = B::float_cast(logits, FloatDType::F32);
    let lse = super::lse::log_sum_exp_rows::<B>(logits.clone()); // [N, 1]
    let picked = B::float_gather(1, logits, B::int_reshape(targets, Shape::new([n, 1])));
    let logp = B::float_sub(picked, lse.clone());
    (
        B::float_reshape(logp, Shape::new([n])),
        B::float_reshape(lse, Shape::new([n])),
    )
}

/// burn-ops twin of the backward: arithmetic in f32, the result in the logits' dtype.
pub fn reference_backward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let n = logits.shape()[0];
    let dtype = logits.dtype();
    let logits = B::float_cast(logits, FloatDType::F32);
    let lse = B::float_cast(lse, FloatDType::F32);
    let grad = B::float_cast(grad, FloatDType::F32);
    let g = B::float_reshape(grad, Shape::new([n, 1]));
    let p = B::float_exp(B::float_sub(
        logits,
        B::float_reshape(lse, Shape::new([n, 1])),
    ));
    let d = B::float_neg(B::float_mul(p, g.clone()));
    // d[n, t] += g[n]
    let d = B::float_scatter(
        1,
        d,
        B::int_reshape(targets, Shape::new([n, 1])),
        g,
        burn::backend::tensor::IndexingUpdateOp::Add,
    );
    if dtype == DType::F32 {
        d
    } else {
        B::float_cast(d, dtype.into())
    }
}

// ---------------------------------------------------------------- WGSL launch (wgpu runtime only)

pub(crate) const FWD_SHADER: Shader = shader!("token_logprobs_fwd.wgsl", prelude);
pub(crate) const BWD_SHADER: Shader = shader!("token_logprobs_bwd.wgsl");

/// One of the two log-prob shaders, instantiated for the logits' own f16 where the device has
/// WGSL `f16` (half the bytes read, the bandwidth being the kernel's cost), f32 otherwise.
struct WgslSource {
    shader: &'static Shader,
    f16: bool,
}

impl KernelSource for WgslSource {
    fn source(&self) -> SourceTemplate {
        self.shader.template(self.f16)
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shader.file, self.f16))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Both shaders, f32 and f16, completed (for the registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for shader in [&FWD_SHADER, &BWD_SHADER] {
        for f16 in [false, true] {
            out.push(Variant::of(&WgslSource { shader, f16 }, shader, f16));
        }
    }
    out
}

/// The logits as the kernel will read them, contiguous: f16 kept where the device's WGSL has
/// `f16`, every other dtype cast to f32. Returns whether the kernel reads f16.
fn kernel_input(logits: CubeTensor) -> (CubeTensor, bool) {
    let f16 = reads_f16(&logits);
    (contiguous_as(logits, elem_dtype(f16)), f16)
}

/// Launches a log-prob shader with one 256-invocation workgroup per row over `n` rows of width
/// `v`: binds `tensors` in order, then the `[n, v]` info buffer, as both shader headers list
/// their bindings.
fn launch_rows(shader: &'static Shader, f16: bool, [n, v]: [usize; 2], tensors: &[&CubeTensor]) {
    let like = tensors[0];
    let info = upload_words(like, &[n as u32, v as u32], DType::U32);
    let mut bound = tensors.to_vec();
    bound.push(&info);
    launch_wgsl(WgslSource { shader, f16 }, 256, n, &bound);
}

impl LogprobBackend for CubeBackend {
    fn token_logprobs(logits: CubeTensor, targets: CubeTensor) -> (CubeTensor, CubeTensor) {
        if logits.device.runtime() != RuntimeId::Wgpu {
            return reference_forward::<Self>(logits, targets);
        }
        let (logits, f16) = kernel_input(logits);
        let targets = into_contiguous(as_i32(targets));
        let [n, v] = logits.shape().dims::<2>();
        let logp = new_f32(&logits, Shape::new([n]));
        let lse = new_f32(&logits, Shape::new([n]));
        if n > 0 {
            launch_rows(&FWD_SHADER, f16, [n, v], &[&logits, &targets, &logp, &lse]);
        }
        (logp, lse)
    }

    fn token_logprobs_backward(
        logits: CubeTensor,
        targets: CubeTensor,
        lse: CubeTensor,
        grad: CubeTensor,
    ) -> CubeTensor {
        if logits.device.runtime() != RuntimeId::Wgpu {
            return reference_backward::<Self>(logits, targets, lse, grad);
        }
        let dtype = logits.dtype;
        let (logits, f16) = kernel_input(logits);
        let targets = into_contiguous(as_i32(targets));
        let lse = contiguous_as(lse, DType::F32);
        let grad = contiguous_as(grad, DType::F32);
        let [n, v] = logits.shape().dims::<2>();
        let out = new_tensor(&logits, Shape::new([n, v]), elem_dtype(f16));
        if n > 0 {
            let bound = [&logits, &targets, &lse, &grad, &out];
            launch_rows(&BWD_SHADER, f16, [n, v], &bound);
        }
        cast_to(out, dtype)
    }
}

// ---------------------------------------------------------------- autodiff

#[derive(Debug)]
struct TokenLogprobsBackward;

impl<B: Backend + LogprobBackend> Backward<B, 1> for TokenLogprobsBackward {
    /// logits, targets, lse
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<B>(&ops.node); // dL/dlogp [N]
        let (logits, targets, lse) = ops.state;
        if let Some(node) = parent {
            let dtype = logits.dtype();
            let mut d = B::token_logprobs_backward(logits, targets, lse, g);
            if d.dtype() != dtype {
                d = B::float_cast(d, dtype.into());
            }
            grads.register::<B>(node.id, d);
        }
    }
}

#[derive(Debug)]
struct HeadLogprobsBackward;

impl<B: Backend + LogprobBackend> Backward<B, 2> for HeadLogprobsBackward {
    /// hidden [N, H], weight [V, H], targets [N], lse [N], chunk
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        IntTensor<B>,
        FloatTensor<B>,
        usize,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [hidden_node, weight_node] = ops.parents;
        let g = grads.consume::<B>(&ops.node); // [N]
        let (hidden, weight, targets, lse, chunk) = ops.state;
        let n = hidden.shape()[0];
        let wt = B::float_transpose(weight.clone());
        let mut dhidden = vec![];
        let mut dweight: Option<FloatTensor<B>> = None;
        for (s, e) in chunks(n, chunk) {
            let range = [Slice::new(s as isize, Some(e as isize), 1)];
            let h = B::float_slice(hidden.clone(), &rows(s, e)); // [C, H]
            // Recomputed rather than stored by the forward: O(chunk · V) memory.
            let logits = B::float_matmul(h.clone(), wt.clone()); // [C, V]
            let d = B::token_logprobs_backward(
                logits,
                B::int_slice(targets.clone(), &range),
                B::float_slice(lse.clone(), &range),
                B::float_slice(g.clone(), &range),
            ); // [C, V]
            if weight_node.is_some() {
                let dw = B::float_matmul(B::float_transpose(d.clone()), h); // [V, H]
                dweight = Some(match dweight {
                    Some(acc) => B::float_add(acc, dw),
                    None => dw,
                });
            }
            if hidden_node.is_some() {
                dhidden.push(B::float_matmul(d, weight.clone())); // [C, H]
            }
        }
        if let Some(node) = hidden_node {
            grads.register::<B>(node.id, B::float_cat(dhidden, 0));
        }
        if let (Some(node), Some(dw)) = (weight_node, dweight) {
            grads.register::<B>(node.id, dw);
        }
    }
}

impl<B: Backend + LogprobBackend, C: CheckpointStrategy> LogprobBackend for Autodiff<B, C> {
    fn token_logprobs(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let node = logits.node();
        let prim = logits.into_primitive();
        match <TokenLogprobsBackward as Backward<B, 1>>::prepare::<C>(TokenLogprobsBackward, [node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (logp, lse) = B::token_logprobs(prim.clone(), targets.clone());
                let logp = prep.finish((prim, targets, lse.clone()), logp);
                (logp, <Self as AutodiffBackend>::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (logp, lse) = B::token_logprobs(prim, targets);
                (
                    prep.finish(logp),
                    <Self as AutodiffBackend>::from_inner(lse),
                )
            }
        }
    }

    fn head_logprobs(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        chunk: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [hidden.node(), weight.node()];
        let hidden = hidden.into_primitive();
        let weight = weight.into_primitive();
        match <HeadLogprobsBackward as Backward<B, 2>>::prepare::<C>(HeadLogprobsBackward, nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (logp, lse) =
                    B::head_logprobs(hidden.clone(), weight.clone(), targets.clone(), chunk);
                let logp = prep.finish((hidden, weight, targets, lse.clone(), chunk), logp);
                (logp, <Self as AutodiffBackend>::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (logp, lse) = B::head_logprobs(hidden, weight, targets, chunk);
                (
                    prep.finish(logp),
                    <Self as AutodiffBackend>::from_inner(lse),
                )
            }
        }
    }
}

// ---------------------------------------------------------------- tensor-level API

/// Log-prob of `targets [N]` under `logits [N, V]` → `(logp [N], lse [N])`; differentiable in the
/// logits. The WGSL kernel on wgpu devices, the burn-ops twin elsewhere.
pub fn token_logprobs(logits: Tensor<2>, targets: Tensor<1, Int>) -> (Tensor<1>, Tensor<1>) {
    let (logp, lse) = <Dispatch as LogprobBackend>::token_logprobs(
        logits.into_dispatch(),
        targets.into_dispatch(),
    );
    (Tensor::from_dispatch(logp), Tensor::from_dispatch(lse))
}

/// The burn-ops twin of [`token_logprobs`] on any device (the reference in tests and benchmarks).
pub fn token_logprobs_twin(logits: Tensor<2>, targets: Tensor<1, Int>) -> (Tensor<1>, Tensor<1>) {
    let (logp, lse) =
        reference_forward::<Dispatch>(logits.into_dispatch(), targets.into_dispatch());
    (Tensor::from_dispatch(logp), Tensor::from_dispatch(lse))
}

/// The backward kernel alone: `dlogits [N, V]` for upstream `grad [N]`, from the forward's `lse`.
pub fn token_logprobs_grad(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    lse: Tensor<1>,
    grad: Tensor<1>,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as LogprobBackend>::token_logprobs_backward(
        logits.into_dispatch(),
        targets.into_dispatch(),
        lse.into_dispatch(),
        grad.into_dispatch(),
    ))
}

/// The burn-ops twin of [`token_logprobs_grad`].
pub fn token_logprobs_grad_twin(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    lse: Tensor<1>,
    grad: Tensor<1>,
) -> Tensor<2> {
    Tensor::from_dispatch(reference_backward::<Dispatch>(
        logits.into_dispatch(),
        targets.into_dispatch(),
        lse.into_dispatch(),
        grad.into_dispatch(),
    ))
}

/// `log_softmax(hidden · weightᵀ)[n, targets[n]]` for `hidden [N, H]`, `weight [V, H]`, computed
/// `chunk` rows at a time in forward and backward → `[N]`; differentiable in hidden and weight.
pub fn head_logprobs(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    chunk: usize,
) -> Tensor<1> {
    let (logp, _lse) = <Dispatch as LogprobBackend>::head_logprobs(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.into_dispatch(),
        chunk.max(1),
    );
    Tensor::from_dispatch(logp)
}

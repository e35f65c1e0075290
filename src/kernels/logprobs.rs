//! Token log-probs as a custom burn op: a fused WGSL kernel on wgpu (`shaders/token_logprobs_*.wgsl`)
//! and a burn-ops twin everywhere else (the CPU backend, other cubecl runtimes, and as the test
//! reference). Two ops:
//!
//! - `token_logprobs(logits [N, V], targets [N]) -> (logp [N], lse [N])`, with its own backward
//!   `dlogits = g · (onehot(t) − softmax(logits))` from the saved lse.
//! - `head_logprobs(hidden [N, H], weight [V, H], targets [N], chunk) -> (logp, lse)`: the lm_head
//!   projection fused with the log-prob, `chunk` rows at a time. Its backward recomputes each chunk's
//!   logits instead of keeping them, so training memory is O(chunk · V), not O(N · V).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, FloatDType, IntDType, RuntimeId, Shape,
    TensorMetadata, backend_extension,
};
use burn::cubecl::ir::{DeviceProperties, ElemType, FloatKind};
use burn::cubecl::prelude::KernelId;
use burn::cubecl::server::KernelArguments;
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::{Int, Slice, Tensor};

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

/// Whether f16 logits on `device` are read by the f16 instance of the shaders (a wgpu device whose
/// WGSL has `f16`) rather than cast to f32 first.
pub fn f16_kernel_available(device: &burn::tensor::Device) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(d)
        if d.runtime() == RuntimeId::Wgpu && has_f16(d.client().properties()))
}

/// cubecl registers f16 for a wgpu device exactly when its WGSL has `enable f16`.
pub(crate) fn has_f16(properties: &DeviceProperties) -> bool {
    properties.supports_type(ElemType::Float(FloatKind::F16))
}

const FWD_WGSL: &str = include_str!("../../shaders/token_logprobs_fwd.wgsl");
const BWD_WGSL: &str = include_str!("../../shaders/token_logprobs_bwd.wgsl");

/// Element type a log-prob shader is instantiated for: the logits' own f16 where the device has
/// WGSL `f16` (half the bytes read, the bandwidth being the kernel's cost), f32 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Elem {
    F32,
    F16,
}

struct WgslSource {
    source: &'static str,
    name: &'static str,
    elem: Elem,
}

impl KernelSource for WgslSource {
    fn source(&self) -> SourceTemplate {
        let (elem, enable) = match self.elem {
            Elem::F32 => ("f32", ""),
            Elem::F16 => ("f16", "enable f16;"),
        };
        SourceTemplate::new(self.source)
            .register("elem", elem)
            .register("enable", enable)
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.name, self.elem))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

pub(crate) fn as_f32(t: CubeTensor) -> CubeTensor {
    if t.dtype == DType::F32 {
        t
    } else {
        CubeBackend::float_cast(t, FloatDType::F32)
    }
}

/// The logits as the kernel will read them: f16 kept where the device's WGSL has `f16`, every
/// other dtype (bf16, f64, f16 without device support) cast to f32.
fn kernel_input(logits: CubeTensor) -> (CubeTensor, Elem) {
    if logits.dtype == DType::F16 && has_f16(logits.client.properties()) {
        (logits, Elem::F16)
    } else {
        (as_f32(logits), Elem::F32)
    }
}

pub(crate) fn as_i32(t: CubeTensor) -> CubeTensor {
    if t.dtype == DType::I32 {
        t
    } else {
        CubeBackend::int_cast(t, IntDType::I32)
    }
}

/// One workgroup per row; rows folded into (x, y) because a dimension holds at most 65535 groups.
pub(crate) fn rows_grid(n: usize) -> CubeCount {
    let n = n as u32;
    let x = n.clamp(1, 65535);
    CubeCount::Static(x, n.div_ceil(x).max(1), 1)
}

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// Test hook: when on, kernel outputs start as NaN instead of uninitialised memory, so an element
/// a kernel fails to write shows up in the comparison.
pub fn set_poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::Relaxed);
}

pub(crate) fn new_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    new_output(like, shape, Elem::F32)
}

fn new_output(like: &CubeTensor, shape: Shape, elem: Elem) -> CubeTensor {
    let dtype = match elem {
        Elem::F32 => DType::F32,
        Elem::F16 => DType::F16,
    };
    new_tensor(like, shape, dtype)
}

/// A kernel output on `like`'s device: uninitialised, or NaN under [`set_poison_outputs`]
/// (f32 and f16).
pub(crate) fn new_tensor(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    let len = shape.num_elements().max(1);
    let handle = if POISON_OUTPUTS.load(Ordering::Relaxed) {
        let nan = match dtype {
            DType::F16 => half::f16::NAN.to_le_bytes().to_vec(),
            _ => f32::NAN.to_le_bytes().to_vec(),
        };
        let bytes: Vec<u8> = std::iter::repeat_n(nan, len).flatten().collect();
        like.client.create_from_slice(&bytes)
    } else {
        like.client.empty(len * dtype.size())
    };
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}

fn info_buffer(like: &CubeTensor, n: usize, v: usize) -> burn::cubecl::server::Handle {
    let words: Vec<u8> = [n as u32, v as u32]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    like.client.create_from_slice(&words)
}

/// Launches a WGSL kernel with one 256-thread workgroup per row over `n` rows of width `v`:
/// binds `tensors` in order, then the `[n, v]` info buffer, as every shader header here lists
/// its bindings.
pub(crate) fn launch_rows<K: KernelSource + 'static>(
    kernel: K,
    n: usize,
    v: usize,
    tensors: &[&CubeTensor],
) {
    let like = tensors[0];
    let info = info_buffer(like, n, v);
    let mut bindings: Vec<_> = tensors.iter().map(|t| t.handle.clone().binding()).collect();
    bindings.push(info.binding());
    like.client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(256))),
        rows_grid(n),
        KernelArguments::new().with_buffers(bindings),
    );
}

impl LogprobBackend for CubeBackend {
    fn token_logprobs(logits: CubeTensor, targets: CubeTensor) -> (CubeTensor, CubeTensor) {
        if logits.device.runtime() != RuntimeId::Wgpu {
            return reference_forward::<Self>(logits, targets);
        }
        let (logits, elem) = kernel_input(logits);
        let logits = into_contiguous(logits);
        let targets = into_contiguous(as_i32(targets));
        let [n, v] = logits.shape().dims::<2>();
        let logp = new_f32(&logits, Shape::new([n]));
        let lse = new_f32(&logits, Shape::new([n]));
        if n == 0 {
            return (logp, lse);
        }
        let kernel = WgslSource {
            source: FWD_WGSL,
            name: "token_logprobs_fwd",
            elem,
        };
        launch_rows(kernel, n, v, &[&logits, &targets, &logp, &lse]);
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
        let (logits, elem) = kernel_input(logits);
        let logits = into_contiguous(logits);
        let targets = into_contiguous(as_i32(targets));
        let lse = into_contiguous(as_f32(lse));
        let grad = into_contiguous(as_f32(grad));
        let [n, v] = logits.shape().dims::<2>();
        let out = new_output(&logits, Shape::new([n, v]), elem);
        if n > 0 {
            let kernel = WgslSource {
                source: BWD_WGSL,
                name: "token_logprobs_bwd",
                elem,
            };
            launch_rows(kernel, n, v, &[&logits, &targets, &lse, &grad, &out]);
        }
        if out.dtype == dtype {
            out
        } else {
            CubeBackend::float_cast(out, dtype.into())
        }
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

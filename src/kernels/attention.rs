//! Decode attention as a custom burn op: the WGSL kernel `shaders/decode_attention.wgsl` on wgpu
//! (one launch per layer per step, reading only each row's visible keys) and its burn-ops twin
//! everywhere else (the CPU backend) and as the kernel's test reference.
//!
//! `decode_attention(q [B, H, D], k [B, HKV, C, D], v [B, HKV, C, D], pos [B], window)` →
//! `[B, H, D]`: query row b at position pos[b] attends to cache columns j ≤ pos[b] (and
//! j > pos[b] − window with a sliding window; window 0 = none), query head h to kv head
//! h / (H / HKV).

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{Backend, DType, Dispatch, Shape, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::cubecl::server::KernelArguments;
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};

use super::logprobs::{as_i32, has_f16, new_tensor};
use super::sample::is_wgpu;
use crate::model::attention::MASKED;

/// The kernel keeps a group's queries and accumulators in 1024 slots: G · D must fit.
pub const MAX_GROUP_DIM: usize = 1024;

#[backend_extension(Cube, Fusion)]
pub trait DecodeAttentionBackend: Backend {
    /// `q [B, H, D]`, `k`/`v [B, HKV, C, D]`, `pos [B]` → `[B, H, D]` in q's dtype.
    #[fusion(meta = |q, _k, _v, _pos, _window| TensorSpec::new(q.shape.clone(), q.dtype))]
    fn decode_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        pos: IntTensor<Self>,
        window: u32,
    ) -> FloatTensor<Self>;
}

/// The burn-ops twin: scores against the first `attend` columns, the additive `mask
/// [B, 1, 1, attend]` (0 where visible, [`MASKED`] elsewhere), softmax, and the weighted sum.
pub fn decode_attention_twin(
    q: Tensor<3>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4>,
) -> Tensor<3> {
    let [b, h, d] = q.dims();
    let [_, hkv, _, _] = k.dims();
    let attend = mask.dims()[3];
    let keys = k.slice([0..b, 0..hkv, 0..attend, 0..d]);
    let values = v.slice([0..b, 0..hkv, 0..attend, 0..d]);
    // Query heads kv_head * g + i share kv_head.
    let q = q.reshape([b, hkv, h / hkv, d]);
    let scores = q
        .matmul(keys.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt()); // [b, hkv, g, L]
    let probs = softmax(scores + mask, 3);
    probs.matmul(values).reshape([b, h, d])
}

/// The additive mask of the twin for queries at `pos [B]` over `attend` columns whose indices
/// are `columns [B, attend]`.
pub fn decode_mask(pos: &Tensor<1, Int>, columns: Tensor<2, Int>, window: u32) -> Tensor<4> {
    let [b, attend] = columns.dims();
    let p = pos.clone().reshape([b, 1]).expand([b, attend]);
    let mut visible = columns.clone().lower_equal(p.clone());
    if window > 0 {
        visible = visible.bool_and(columns.greater(p.sub_scalar(window as i64)));
    }
    visible
        .bool_not()
        .float()
        .mul_scalar(MASKED)
        .reshape([b, 1, 1, attend])
}

/// Whether `decode_attention` runs the WGSL kernel for these shapes on `device`.
pub fn kernel_available(
    device: &burn::tensor::Device,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> bool {
    is_wgpu(device)
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && heads / kv_heads * d <= MAX_GROUP_DIM
}

/// One decode step of attention through the kernel (callers check [`kernel_available`]).
pub fn decode_attention(
    q: Tensor<3>,
    k: Tensor<4>,
    v: Tensor<4>,
    pos: Tensor<1, Int>,
    window: u32,
) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as DecodeAttentionBackend>::decode_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        pos.into_dispatch(),
        window,
    ))
}

struct AttentionSource {
    shape: [usize; 5],
    window: u32,
    f16: bool,
}

impl KernelSource for AttentionSource {
    fn source(&self) -> SourceTemplate {
        let [b, h, hkv, c, d] = self.shape;
        let (elem, enable) = if self.f16 {
            ("f16", "enable f16;")
        } else {
            ("f32", "")
        };
        let scale = 1.0f32 / (d as f32).sqrt();
        SourceTemplate::new(include_str!("../../shaders/decode_attention.wgsl"))
            .register("elem", elem)
            .register("enable", enable)
            .register("b", b.to_string())
            .register("h", h.to_string())
            .register("hkv", hkv.to_string())
            .register("c", c.to_string())
            .register("d", d.to_string())
            .register("window", (self.window as i32).to_string())
            // Debug formatting prints the shortest string that reads back to the same f32.
            .register("scale", format!("{scale:?}"))
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shape, self.window, self.f16))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

impl DecodeAttentionBackend for CubeBackend {
    fn decode_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        pos: CubeTensor,
        window: u32,
    ) -> CubeTensor {
        let f16 = q.dtype == DType::F16 && has_f16(q.client.properties());
        let elem = if f16 { DType::F16 } else { DType::F32 };
        let cast = |t: CubeTensor| {
            into_contiguous(if t.dtype == elem {
                t
            } else {
                CubeBackend::float_cast(t, elem.into())
            })
        };
        let dtype = q.dtype;
        let (q, k, v) = (cast(q), cast(k), cast(v));
        let pos = into_contiguous(as_i32(pos));
        let [b, h, d] = q.shape().dims::<3>();
        let [_, hkv, c, _] = k.shape().dims::<4>();
        let out = new_tensor(&q, Shape::new([b, h, d]), elem);
        let groups = (b * hkv) as u32;
        if groups > 0 {
            let x = groups.clamp(1, 65535);
            let kernel = AttentionSource {
                shape: [b, h, hkv, c, d],
                window,
                f16,
            };
            let bindings = [&q, &k, &v, &pos, &out]
                .iter()
                .map(|t| t.handle.clone().binding())
                .collect();
            q.client.launch(
                Box::new(SourceKernel::new(kernel, CubeDim::new_1d(128))),
                CubeCount::Static(x, groups.div_ceil(x), 1),
                KernelArguments::new().with_buffers(bindings),
            );
        }
        if out.dtype == dtype {
            out
        } else {
            CubeBackend::float_cast(out, dtype.into())
        }
    }
}

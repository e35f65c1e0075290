//! Helpers shared by the WGSL kernel launches of the decode step and the sampler.

use burn::backend::DType;
use burn::backend::ops::FloatTensorOps;
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::cubecl::CubeDim;
use burn::cubecl::server::KernelArguments;

use super::logprobs::rows_grid;

/// `t` in `dtype` (cast only where it differs).
pub fn cast_to(t: CubeTensor, dtype: DType) -> CubeTensor {
    if t.dtype == dtype {
        t
    } else {
        CubeBackend::float_cast(t, dtype.into())
    }
}

/// `t` in `dtype`, contiguous: what a kernel indexing it row-major needs.
pub fn contiguous_as(t: CubeTensor, dtype: DType) -> CubeTensor {
    into_contiguous(cast_to(t, dtype))
}

/// A decode kernel's source with its shapes `[B, H, HKV, C, D]` and element type registered
/// (`b`, `h`, `hkv`, `c`, `d`, `elem`, `enable`).
pub fn decode_template(source: &str, [b, h, hkv, c, d]: [usize; 5], f16: bool) -> SourceTemplate {
    elem_template(source, f16)
        .register("b", b.to_string())
        .register("h", h.to_string())
        .register("hkv", hkv.to_string())
        .register("c", c.to_string())
        .register("d", d.to_string())
}

/// A kernel's source with its element type registered: `elem` (`f16` or `f32`) and `enable`
/// (the `enable f16;` directive, or nothing).
pub fn elem_template(source: &str, f16: bool) -> SourceTemplate {
    let (elem, enable) = if f16 {
        ("f16", "enable f16;")
    } else {
        ("f32", "")
    };
    SourceTemplate::new(source)
        .register("elem", elem)
        .register("enable", enable)
}

/// Launches the WGSL `kernel` in workgroups of `workgroup` invocations over `groups` workgroups
/// (folded into x and y, see `rows_grid`), binding `tensors` in the order its header lists them.
pub fn launch_wgsl<K: KernelSource + 'static>(
    kernel: K,
    workgroup: u32,
    groups: usize,
    tensors: &[&CubeTensor],
) {
    let Some(first) = tensors.first() else {
        return;
    };
    let bindings = tensors.iter().map(|t| t.handle.clone().binding()).collect();
    first.client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(workgroup))),
        rows_grid(groups),
        KernelArguments::new().with_buffers(bindings),
    );
}

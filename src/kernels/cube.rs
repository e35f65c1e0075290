//! Helpers shared by the WGSL kernel launches of the decode step.

use burn::backend::DType;
use burn::backend::ops::FloatTensorOps;
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceTemplate, into_contiguous};

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
    let (elem, enable) = if f16 {
        ("f16", "enable f16;")
    } else {
        ("f32", "")
    };
    SourceTemplate::new(source)
        .register("elem", elem)
        .register("enable", enable)
        .register("b", b.to_string())
        .register("h", h.to_string())
        .register("hkv", hkv.to_string())
        .register("c", c.to_string())
        .register("d", d.to_string())
}

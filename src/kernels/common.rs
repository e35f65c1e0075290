//! What the WGSL kernels share on the Rust side, in one place: which device runs which kernel,
//! the dtype and layout a kernel reads, its outputs, its source (a shader of `shaders/`, the WGSL
//! prelude and the template values every shader takes) and its launch. The CPU kernels' half
//! (storage access of burn-flex tensors, the dot product) is `kernels/cpu.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{DType, DispatchDevice, IntDType, RuntimeId, Shape};
use burn::cubecl::ir::{DeviceProperties, ElemType, FloatKind};
use burn::cubecl::server::KernelArguments;
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::Device;

// ------------------------------------------------------------------------- where kernels run

/// Whether tensors on `device` live on the CPU backend (where the Rust kernels run).
pub fn is_cpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// Whether tensors on `device` run on the wgpu runtime (where WGSL kernels launch).
pub fn is_wgpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(d) if d.runtime() == RuntimeId::Wgpu)
}

/// Whether f16 tensors on `device` are read by the f16 instance of the shaders (a wgpu device
/// whose WGSL has `f16`) rather than cast to f32 first.
pub fn f16_kernel_available(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(d)
        if d.runtime() == RuntimeId::Wgpu && has_f16(d.client().properties()))
}

/// cubecl registers f16 for a wgpu device exactly when its WGSL has `enable f16`.
fn has_f16(properties: &DeviceProperties) -> bool {
    properties.supports_type(ElemType::Float(FloatKind::F16))
}

/// Whether a kernel reads `t` in f16: it is f16 and its device's WGSL has `f16`. Every other
/// dtype (bf16, f64, f16 without device support) is computed in f32.
pub(crate) fn reads_f16(t: &CubeTensor) -> bool {
    t.dtype == DType::F16 && has_f16(t.client.properties())
}

/// The element type of a shader instance: f16 (see [`reads_f16`]) or f32.
pub(crate) fn elem_dtype(f16: bool) -> DType {
    if f16 { DType::F16 } else { DType::F32 }
}

// ------------------------------------------------------------------------- inputs and outputs

/// `t` in `dtype` (cast only where it differs).
pub(crate) fn cast_to(t: CubeTensor, dtype: DType) -> CubeTensor {
    if t.dtype == dtype {
        t
    } else {
        CubeBackend::float_cast(t, dtype.into())
    }
}

/// An int tensor (positions, targets, parameter words) as the i32 a shader reads.
pub(crate) fn as_i32(t: CubeTensor) -> CubeTensor {
    if t.dtype == DType::I32 {
        t
    } else {
        CubeBackend::int_cast(t, IntDType::I32)
    }
}

/// `t` in `dtype`, contiguous: what a kernel indexing it row-major needs.
pub(crate) fn contiguous_as(t: CubeTensor, dtype: DType) -> CubeTensor {
    into_contiguous(cast_to(t, dtype))
}

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// Test hook: when on, kernel outputs start as NaN instead of uninitialised memory, so an element
/// a kernel fails to write shows up in the comparison.
pub fn set_poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::Relaxed);
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

/// An f32 kernel output (see [`new_tensor`]).
pub(crate) fn new_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    new_tensor(like, shape, DType::F32)
}

/// A launch's parameter words (shapes, offsets, bit patterns of f32 constants) uploaded to
/// `like`'s device as a `[words.len()]` tensor of `dtype` (U32, or F32 where the shader reads
/// floats); counted as a host upload for the profile line (`device::traffic`).
pub(crate) fn upload_words(like: &CubeTensor, words: &[u32], dtype: DType) -> CubeTensor {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    crate::device::traffic::uploaded(1);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::new([words.len()]),
        like.client.create_from_slice(&bytes),
        dtype,
    )
}

// ------------------------------------------------------------------------- sources

/// A shader of `shaders/` as the kernels compile it. Declared next to its launch (`SHADER`
/// constants made with `shader!`) and listed in [`super::registry::KERNELS`].
#[derive(Debug)]
pub struct Shader {
    /// Its file name in `shaders/`.
    pub file: &'static str,
    /// Its text.
    pub text: &'static str,
    /// Whether [`PRELUDE`] goes before it (it calls the prelude's reductions).
    pub prelude: bool,
}

/// `shaders/prelude.wgsl`: the reductions and the online (max, Σ exp) step several shaders share
/// (its header gives the contract).
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// `shader!("name.wgsl")`, or `shader!("name.wgsl", prelude)` for one that uses [`PRELUDE`]: the
/// [`Shader`] of `shaders/name.wgsl`, its text compiled in.
macro_rules! shader {
    ($file:literal) => {
        $crate::kernels::common::Shader {
            file: $file,
            text: include_str!(concat!("../../shaders/", $file)),
            prelude: false,
        }
    };
    ($file:literal, prelude) => {
        $crate::kernels::common::Shader {
            file: $file,
            text: include_str!(concat!("../../shaders/", $file)),
            prelude: true,
        }
    };
}
pub(crate) use shader;

impl Shader {
    /// The shader's source as a template: the `enable f16;` directive first where `f16` (WGSL
    /// wants directives before any declaration), then the prelude where the shader uses it, then
    /// the shader; `elem` registered (`f16` or `f32`). WGSL has no #include: this concatenation
    /// is how the prelude reaches the shaders.
    pub fn template(&self, f16: bool) -> SourceTemplate {
        let mut text = String::new();
        if f16 {
            text.push_str("enable f16;\n");
        }
        if self.prelude {
            text.push_str(PRELUDE);
        }
        text.push_str(self.text);
        SourceTemplate::new(text).register("elem", if f16 { "f16" } else { "f32" })
    }

    /// [`Shader::template`] with a decode step's shapes `[B, H, HKV, C, D]` registered too
    /// (`b`, `h`, `hkv`, `c`, `d`).
    pub(crate) fn decode_template(
        &self,
        [b, h, hkv, c, d]: [usize; 5],
        f16: bool,
    ) -> SourceTemplate {
        self.template(f16)
            .register("b", b.to_string())
            .register("h", h.to_string())
            .register("hkv", hkv.to_string())
            .register("c", c.to_string())
            .register("d", d.to_string())
    }
}

/// One completed instance of a shader, for the registry's validation test.
#[derive(Debug)]
pub struct Variant {
    /// The shader's file name.
    pub file: &'static str,
    /// Whether it is the f16 instance (it needs WGSL `f16`).
    pub f16: bool,
    /// The source the kernel would compile.
    pub source: String,
}

impl Variant {
    /// `kernel`'s completed source.
    pub(crate) fn of(kernel: &impl KernelSource, shader: &Shader, f16: bool) -> Self {
        Self {
            file: shader.file,
            f16,
            source: kernel.source().complete(),
        }
    }
}

// ------------------------------------------------------------------------- launch

/// `n` workgroups folded into (x, y), because a dimension holds at most 65535 of them (a shader
/// reads its index as `wid.x + wid.y * num_workgroups.x`).
fn rows_grid(n: usize) -> CubeCount {
    let n = n as u32;
    let x = n.clamp(1, 65535);
    CubeCount::Static(x, n.div_ceil(x).max(1), 1)
}

/// Launches the WGSL `kernel` in workgroups of `workgroup` invocations over `groups` workgroups
/// (folded into x and y, see [`rows_grid`]), binding `tensors` in the order its header lists them.
pub(crate) fn launch_wgsl<K: KernelSource + 'static>(
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

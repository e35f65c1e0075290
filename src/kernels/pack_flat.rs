//! Tensors packed into one flat buffer at given offsets, zero in between: how the optimizer's
//! gradient groups ([`crate::train::flat`]) are built. On wgpu the WGSL kernel
//! `shaders/pack_flat.wgsl` writes up to [`MAX_SOURCES`] sources per launch straight from their
//! storage, strided views included: a weight's gradient arrives as a transposed view (the linear
//! layer computes `x · wᵀ`), and packing it needs no contiguous copy first. Elsewhere (the CPU
//! backend, a non-f32 source) the burn-ops twin runs: a zero buffer and one `slice_assign` per
//! source, as the groups were built before.
//!
//! `pack_flat(sources [rows_k, cols_k], offsets, len)` → `[len]`: source k's elements in
//! row-major order at `offsets[k]..offsets[k] + rows_k · cols_k`, 0 elsewhere. Offsets ascend and
//! the ranges do not overlap (the layout's members).

use std::ops::Range;

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{
    Backend, DType, Dispatch, DispatchDevice, ExtensionType, Flex, RuntimeId, Shape,
    TensorMetadata, backend_extension,
};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{Device, Slice, Tensor};

use super::common::{Shader, Variant, is_wgpu, launch_wgsl, shader, upload_words};

/// Sources one launch reads at most (the op's fixed arity; a device with fewer storage bindings
/// takes several launches per op, see [`sources_per_launch`]).
pub const MAX_SOURCES: usize = 16;

/// One source slot of a launch: a tensor, or nothing (a launch of fewer sources).
#[derive(ExtensionType)]
#[extension_type(fusion)]
pub enum Slot<B: Backend> {
    Empty,
    Full(FloatTensor<B>),
}

/// The [`MAX_SOURCES`] slots of one op, filled from the first (the backend extension takes no
/// list of tensors, so the arity is fixed here).
#[derive(ExtensionType)]
#[extension_type(fusion)]
pub struct Sources<B: Backend> {
    #[extension_type]
    s0: Slot<B>,
    #[extension_type]
    s1: Slot<B>,
    #[extension_type]
    s2: Slot<B>,
    #[extension_type]
    s3: Slot<B>,
    #[extension_type]
    s4: Slot<B>,
    #[extension_type]
    s5: Slot<B>,
    #[extension_type]
    s6: Slot<B>,
    #[extension_type]
    s7: Slot<B>,
    #[extension_type]
    s8: Slot<B>,
    #[extension_type]
    s9: Slot<B>,
    #[extension_type]
    s10: Slot<B>,
    #[extension_type]
    s11: Slot<B>,
    #[extension_type]
    s12: Slot<B>,
    #[extension_type]
    s13: Slot<B>,
    #[extension_type]
    s14: Slot<B>,
    #[extension_type]
    s15: Slot<B>,
}

impl<B: Backend> Sources<B> {
    /// At most [`MAX_SOURCES`] tensors, in order.
    fn new(tensors: Vec<FloatTensor<B>>) -> Self {
        assert!(
            tensors.len() <= MAX_SOURCES,
            "at most {MAX_SOURCES} sources"
        );
        let mut it = tensors.into_iter();
        let mut next = || it.next().map_or(Slot::Empty, Slot::Full);
        Self {
            s0: next(),
            s1: next(),
            s2: next(),
            s3: next(),
            s4: next(),
            s5: next(),
            s6: next(),
            s7: next(),
            s8: next(),
            s9: next(),
            s10: next(),
            s11: next(),
            s12: next(),
            s13: next(),
            s14: next(),
            s15: next(),
        }
    }

    /// The filled slots, in order.
    fn into_vec(self) -> Vec<FloatTensor<B>> {
        [
            self.s0, self.s1, self.s2, self.s3, self.s4, self.s5, self.s6, self.s7, self.s8,
            self.s9, self.s10, self.s11, self.s12, self.s13, self.s14, self.s15,
        ]
        .into_iter()
        .filter_map(|s| match s {
            Slot::Full(t) => Some(t),
            Slot::Empty => None,
        })
        .collect()
    }
}

/// What one op writes: the output range `[lo, hi)` and each source's offset in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackPlan {
    pub lo: usize,
    pub hi: usize,
    pub offsets: Vec<usize>,
}

impl PackPlan {
    /// The plan cut into parts of at most `k` sources, in order: each part's range of sources and
    /// its own plan. The parts' output ranges cover `[lo, hi)` without overlap: a part runs from
    /// its first source's offset (the first part from `lo`) to the next part's (the last to `hi`).
    fn parts(&self, k: usize) -> Vec<(Range<usize>, PackPlan)> {
        let count = self.offsets.len();
        let n = count.div_ceil(k.max(1)).max(1);
        (0..n)
            .map(|c| {
                let (at, end) = (c * k, ((c + 1) * k).min(count));
                let plan = PackPlan {
                    lo: if c == 0 { self.lo } else { self.offsets[at] },
                    hi: if c + 1 == n {
                        self.hi
                    } else {
                        self.offsets[end]
                    },
                    offsets: self.offsets[at..end].to_vec(),
                };
                (at..end, plan)
            })
            .collect()
    }
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait PackFlatBackend: Backend {
    /// `flat [len]` with `[plan.lo, plan.hi)` overwritten by the sources (rank 1 or 2, any
    /// strides) at `plan.offsets` in row-major order and 0 elsewhere in that range; the rest of
    /// `flat` kept. Written in place where nothing else holds `flat`.
    #[fusion(meta = |flat, _sources, _plan| TensorSpec::new(flat.shape.clone(), flat.dtype))]
    fn pack_flat_into(
        flat: FloatTensor<Self>,
        #[extension_type] sources: Sources<Self>,
        plan: PackPlan,
    ) -> FloatTensor<Self>;
}

/// A source's elements `[numel]` in row-major order (a copy where it is a strided view).
fn flattened<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let n = t.shape().num_elements();
    B::float_reshape(t, Shape::new([n]))
}

/// burn-ops twin of [`PackFlatBackend::pack_flat_into`]: the range as zeros with each source
/// slice-assigned, then assigned into `flat`.
pub fn reference_pack_into<B: Backend>(
    flat: FloatTensor<B>,
    sources: Vec<FloatTensor<B>>,
    plan: &PackPlan,
) -> FloatTensor<B> {
    let (device, dtype) = (flat.device(), flat.dtype());
    let mut range = B::float_zeros(Shape::new([plan.hi - plan.lo]), &device, dtype.into());
    for (s, &off) in sources.into_iter().zip(&plan.offsets) {
        let s = flattened::<B>(B::float_cast(s, dtype.into()));
        let n = s.shape().num_elements();
        let at = off - plan.lo;
        range = B::float_slice_assign(range, &[Slice::from(at..at + n)], s);
    }
    if plan.lo == 0 && plan.hi == flat.shape().num_elements() {
        return range;
    }
    B::float_slice_assign(flat, &[Slice::from(plan.lo..plan.hi)], range)
}

impl PackFlatBackend for Flex {
    fn pack_flat_into(
        flat: FloatTensor<Self>,
        sources: Sources<Self>,
        plan: PackPlan,
    ) -> FloatTensor<Self> {
        reference_pack_into::<Self>(flat, sources.into_vec(), &plan)
    }
}

pub(crate) const SHADER: Shader = shader!("pack_flat.wgsl");

/// Words of the info buffer before the sources' (see the shader's header).
const HEAD: usize = 4;
/// Words per source in the info buffer.
const FIELDS: usize = 5;

struct PackSource {
    /// Source bindings.
    k: usize,
}

impl KernelSource for PackSource {
    fn source(&self) -> SourceTemplate {
        let sources: String = (0..self.k)
            .map(|i| {
                format!(
                    "@group(0) @binding({}) var<storage, read_write> src{i}: array<f32>;\n",
                    i + 2
                )
            })
            .collect();
        let cases: String = (0..self.k)
            .map(|i| format!("        case {i}u: {{\n            v = src{i}[i];\n        }}\n"))
            .collect();
        SHADER
            .template(false)
            .register("k", self.k.to_string())
            .register("sources", sources)
            .register("cases", cases)
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.k)
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// One source binding, a few, and the most (for the registry's validation test).
pub(crate) fn variants() -> Vec<Variant> {
    [1, 3, MAX_SOURCES]
        .into_iter()
        .map(|k| Variant::of(&PackSource { k }, &SHADER, false))
        .collect()
}

/// Sources one launch binds on a device whose runtime allows `max_bindings` storage buffers per
/// shader stage (as cubecl states it: the adapter's limit, which cubecl requests whole, less one
/// for the buffer Metal's backend keeps for array lengths): the output and the info buffer take
/// two.
fn per_launch(max_bindings: u32) -> usize {
    (max_bindings as usize)
        .saturating_sub(2)
        .clamp(1, MAX_SOURCES)
}

/// Sources one op packs on `device`: [`MAX_SOURCES`] where its storage bindings allow, fewer
/// where not; 1 off wgpu (the twin, which does not care).
pub fn sources_per_launch(device: &Device) -> usize {
    match device.as_dispatch() {
        DispatchDevice::Cube(d) if d.runtime() == RuntimeId::Wgpu => {
            per_launch(d.client().properties().hardware.max_bindings)
        }
        _ => 1,
    }
}

/// A source as the kernel reads it: f32 rank 1 or 2 rows, with `(rows, cols, srow, scol)`.
fn strided(t: CubeTensor) -> (CubeTensor, [usize; 4]) {
    // A storage-tiled tensor's strides order tiles, not rows: un-tiled (a copy) first.
    let t = if t.meta.is_tiled() || t.rank() > 2 {
        into_contiguous(t)
    } else {
        t
    };
    let shape: Vec<usize> = t.meta.shape().iter().copied().collect();
    let strides: Vec<usize> = t.meta.strides().iter().copied().collect();
    let dims = match (shape.as_slice(), strides.as_slice()) {
        ([n], [s]) => [1, *n, 0, *s],
        ([r, c], [sr, sc]) => [*r, *c, *sr, *sc],
        // Rank > 2 was made contiguous above: its rows of the last dimension.
        _ => {
            let n = shape.iter().product::<usize>();
            let c = shape.last().copied().unwrap_or(1);
            [n / c.max(1), c, c, 1]
        }
    };
    (t, dims)
}

/// One launch over `[plan.lo, plan.hi)` of `out` (f32) from f32 `sources`, at most `k` of them.
fn launch(
    out: &CubeTensor,
    sources: &[CubeTensor],
    dims: &[[usize; 4]],
    plan: &PackPlan,
    k: usize,
) {
    let word = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    let mut info = vec![plan.lo, plan.hi, sources.len(), 0];
    for (d, &off) in dims.iter().zip(&plan.offsets) {
        let [rows, cols, srow, scol] = *d;
        info.extend([off, rows * cols, cols.max(1), srow, scol]);
    }
    info.resize(HEAD + FIELDS * k, 0);
    let words: Vec<u32> = info.into_iter().map(word).collect();
    let info = upload_words(out, &words, DType::U32);
    let mut bound: Vec<&CubeTensor> = vec![out, &info];
    // Unused slots bind the first source again: one compiled kernel serves every launch.
    let filler = sources.first().unwrap_or(out);
    bound.extend((0..k).map(|i| sources.get(i).unwrap_or(filler)));
    let n = plan.hi - plan.lo;
    launch_wgsl(PackSource { k }, 256, n.div_ceil(256), &bound);
}

impl PackFlatBackend for CubeBackend {
    fn pack_flat_into(flat: CubeTensor, sources: Sources<Self>, plan: PackPlan) -> CubeTensor {
        let sources = sources.into_vec();
        let wgsl = flat.device.runtime() == RuntimeId::Wgpu
            && flat.dtype == DType::F32
            && sources.iter().all(|s| s.dtype == DType::F32);
        if !wgsl || plan.hi <= plan.lo {
            return reference_pack_into::<Self>(flat, sources, &plan);
        }
        // Written in place when nothing else holds the buffer; else into a copy, which keeps
        // the elements outside this op's range.
        let out = if !flat.is_contiguous() {
            into_contiguous(flat)
        } else if flat.can_mut() {
            flat
        } else {
            flat.copy()
        };
        let k = per_launch(out.client.properties().hardware.max_bindings);
        let (sources, dims): (Vec<CubeTensor>, Vec<[usize; 4]>) =
            sources.into_iter().map(strided).unzip();
        // More sources than bindings: consecutive launches, each its own part of the range.
        for (at, part) in plan.parts(k) {
            launch(&out, &sources[at.clone()], &dims[at], &part, k);
        }
        out
    }
}

/// Whether the WGSL kernel packs sources of these dtypes on `device`.
fn kernel_runs(device: &Device, dtypes: impl IntoIterator<Item = DType>) -> bool {
    is_wgpu(device) && dtypes.into_iter().all(|d| d == DType::F32)
}

/// Checks the contract: one offset per source, ascending, ranges apart and inside `len`.
fn check(shapes: &[usize], offsets: &[usize], len: usize) {
    assert_eq!(shapes.len(), offsets.len(), "one offset per source");
    let mut end = 0;
    for (&n, &off) in shapes.iter().zip(offsets) {
        assert!(off >= end, "offsets ascend and the sources do not overlap");
        end = off + n;
    }
    assert!(end <= len, "the sources fit in the buffer");
}

/// The burn-ops twin of [`pack_flat`]: a zero `[len]` buffer (the first source's dtype) with
/// each source, flattened, slice-assigned at its offset.
pub fn pack_flat_twin(sources: Vec<Tensor<2>>, offsets: &[usize], len: usize) -> Tensor<1> {
    let numels: Vec<usize> = sources.iter().map(|s| s.shape().num_elements()).collect();
    check(&numels, offsets, len);
    let first = sources.first().expect("at least one source");
    let (device, dtype) = (first.device(), first.dtype());
    let mut flat = Tensor::<1>::zeros([len], (&device, dtype)); // [len]
    for ((s, &off), n) in sources.into_iter().zip(offsets).zip(numels) {
        flat = flat.slice_assign(off..off + n, super::like(s.reshape([n]), dtype));
    }
    flat
}

/// `sources` (`[rows, cols]` each; a vector as `[1, n]`; any strides) packed into `[len]` at
/// `offsets` (ascending, non-overlapping), zero elsewhere, in the first source's dtype. On wgpu
/// with f32 sources the WGSL kernel (⌈sources / [`MAX_SOURCES`]⌉ launches, views read in place);
/// elsewhere [`pack_flat_twin`].
pub fn pack_flat(sources: Vec<Tensor<2>>, offsets: &[usize], len: usize) -> Tensor<1> {
    let first = sources.first().expect("at least one source");
    let device = first.device();
    if !kernel_runs(&device, sources.iter().map(|s| s.dtype())) {
        return pack_flat_twin(sources, offsets, len);
    }
    let flat = Tensor::<1>::empty([len], (&device, DType::F32));
    pack_flat_into(flat, sources, offsets)
}

/// [`pack_flat`] into `flat [len]` (f32; every element overwritten, its storage reused where
/// nothing else holds it).
pub fn pack_flat_into(flat: Tensor<1>, sources: Vec<Tensor<2>>, offsets: &[usize]) -> Tensor<1> {
    let len = flat.dims()[0];
    let numels: Vec<usize> = sources.iter().map(|s| s.shape().num_elements()).collect();
    check(&numels, offsets, len);
    let device = flat.device();
    let dtypes = std::iter::once(flat.dtype()).chain(sources.iter().map(|s| s.dtype()));
    if !kernel_runs(&device, dtypes) {
        if sources.is_empty() {
            return flat.zeros_like();
        }
        return pack_flat_twin(sources, offsets, len);
    }
    let whole = PackPlan {
        lo: 0,
        hi: len,
        offsets: offsets.to_vec(),
    };
    let mut flat = flat;
    let mut sources = sources.into_iter();
    for (at, plan) in whole.parts(MAX_SOURCES) {
        let part: Vec<FloatTensor<Dispatch>> = sources
            .by_ref()
            .take(at.len())
            .map(Tensor::into_dispatch)
            .collect();
        flat = Tensor::from_dispatch(<Dispatch as PackFlatBackend>::pack_flat_into(
            flat.into_dispatch(),
            Sources::new(part),
            plan,
        ));
    }
    flat
}

//! The residual add and RMSNorm of a decode step as one custom burn op: the WGSL kernel
//! `shaders/rms_norm.wgsl` on wgpu, a Rust loop on the CPU backend, and the model's own burn-ops
//! norm ([`crate::model::layers::RmsNorm::forward`]) as the twin.
//!
//! `add_rms_norm(x [B, N], r [B, N], w [N], eps)` → `(h = x + r, h / sqrt(mean(h²) + eps) · w)`;
//! `rms_norm(x, w, eps)` → the second alone; `norm_add_rms_norm(x, r, rw, w, eps)` norms `r` with
//! its own weight `rw` before the add (sandwich norms: Gemma 3's attention and MLP outputs).
//! burn's ops make 5 to 7 kernels of a norm (a reduce, element-wise passes, the residual add
//! before it); this is one launch.
//!
//! In f16 (where the device's WGSL has it) the kernel reads and writes f16 and computes the
//! statistics in f32, as the model's norm does: no cast launches around it. The residual stream
//! `h` is rounded to the element type before it is normed, so `y` is the norm of the `h` the
//! next layer reads.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate};
use burn::backend::{Backend, DType, Dispatch, Flex, Shape, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::Tensor;

use super::common::{
    Shader, Variant, cast_to, contiguous_as, elem_dtype, launch_wgsl, new_tensor, reads_f16, shader,
};
use super::cpu::{self, dot_f32};

/// `(h, y)`, both like `x`.
fn h_and_y(x: &TensorSpec) -> (TensorSpec, TensorSpec) {
    let like_x = || TensorSpec::new(x.shape.clone(), x.dtype);
    (like_x(), like_x())
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait RmsNormBackend: Backend {
    /// `(x + r, rms_norm(x + r) · w)`.
    #[fusion(meta = |x, _r, _w, _eps| h_and_y(x))]
    fn add_rms_norm(
        x: FloatTensor<Self>,
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `rms_norm(x) · w`.
    #[fusion(meta = |x, _w, _eps| TensorSpec::new(x.shape.clone(), x.dtype))]
    fn rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;

    /// `(h, rms_norm(h) · w)` for `h = x + rms_norm(r) · rw`.
    #[fusion(meta = |x, _r, _rw, _w, _eps| h_and_y(x))]
    fn norm_add_rms_norm(
        x: FloatTensor<Self>,
        r: FloatTensor<Self>,
        rw: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `x [B, N] + rms_norm(r [B, N]) · rw [N]` and its norm with weight `w [N]`: `(h, y)`.
pub fn norm_add_rms_norm(
    x: Tensor<2>,
    r: Tensor<2>,
    rw: Tensor<1>,
    w: Tensor<1>,
    eps: f64,
) -> (Tensor<2>, Tensor<2>) {
    let (h, y) = <Dispatch as RmsNormBackend>::norm_add_rms_norm(
        x.into_dispatch(),
        r.into_dispatch(),
        rw.into_dispatch(),
        w.into_dispatch(),
        eps as f32,
    );
    (Tensor::from_dispatch(h), Tensor::from_dispatch(y))
}

/// `x [B, N] + r [B, N]` and its norm with weight `w [N]`: `(h, y)`.
pub fn add_rms_norm(x: Tensor<2>, r: Tensor<2>, w: Tensor<1>, eps: f64) -> (Tensor<2>, Tensor<2>) {
    let (h, y) = <Dispatch as RmsNormBackend>::add_rms_norm(
        x.into_dispatch(),
        r.into_dispatch(),
        w.into_dispatch(),
        eps as f32,
    );
    (Tensor::from_dispatch(h), Tensor::from_dispatch(y))
}

/// The norm of `x [B, N]` with weight `w [N]`.
pub fn rms_norm(x: Tensor<2>, w: Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as RmsNormBackend>::rms_norm(
        x.into_dispatch(),
        w.into_dispatch(),
        eps as f32,
    ))
}

pub(crate) const SHADER: Shader = shader!("rms_norm.wgsl", prelude);

struct NormSource {
    b: usize,
    n: usize,
    eps: f32,
    residual: bool,
    /// The residual is normed first (with its own weight, binding 5).
    pre_norm: bool,
    f16: bool,
}

impl KernelSource for NormSource {
    fn source(&self) -> SourceTemplate {
        SHADER
            .template(self.f16)
            .register("b", self.b.to_string())
            .register("n", self.n.to_string())
            // Debug formatting prints the shortest string that reads back to the same f32.
            .register("eps", format!("{:?}", self.eps))
            .register("residual", self.residual.to_string())
            .register("pre_norm", self.pre_norm.to_string())
            .register(
                "pre_binding",
                match (self.pre_norm, self.f16) {
                    (false, _) => "",
                    (true, false) => {
                        "@group(0) @binding(5) var<storage, read_write> rw: array<f32>;"
                    }
                    (true, true) => {
                        "@group(0) @binding(5) var<storage, read_write> rw: array<f16>;"
                    }
                },
            )
            .register(
                "residual_at",
                match (self.pre_norm, self.f16) {
                    (false, _) => "    return f32(r[base + i]);",
                    (true, false) => "    return f32(f32(r[base + i]) * r_inv * f32(rw[i]));",
                    (true, true) => "    return f32(f16(f32(r[base + i]) * r_inv * f32(rw[i])));",
                },
            )
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((
            self.b,
            self.n,
            self.eps.to_bits(),
            self.residual,
            self.pre_norm,
            self.f16,
        ))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shader completed for every template branch (plain norm, residual add, pre-normed
/// residual; f32 and f16), for the registry's validation test.
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = vec![];
    for (residual, pre_norm) in [(false, false), (true, false), (true, true)] {
        for f16 in [false, true] {
            let kernel = NormSource {
                b: 3,
                n: 96,
                eps: 1e-6,
                residual,
                pre_norm,
                f16,
            };
            out.push(Variant::of(&kernel, &SHADER, f16));
        }
    }
    out
}

/// Launches the kernel; `r` is `None` for the plain norm, and carries its own norm's weight for
/// PRE_NORM. Returns `(h, y)` (`h` only with `r`).
fn launch(
    x: CubeTensor,
    r: Option<(CubeTensor, Option<CubeTensor>)>,
    w: CubeTensor,
    eps: f32,
) -> (Option<CubeTensor>, CubeTensor) {
    let dtype = x.dtype;
    let f16 = reads_f16(&x);
    let elem = elem_dtype(f16);
    let (x, w) = (contiguous_as(x, elem), contiguous_as(w, elem));
    let [b, n] = x.shape().dims::<2>();
    let y = new_tensor(&x, Shape::new([b, n]), elem);
    let residual = r.is_some();
    let rw = r
        .as_ref()
        .and_then(|(_, rw)| rw.clone())
        .map(|rw| contiguous_as(rw, elem));
    // Without a residual, r and h are bound to a one-element placeholder the kernel never reads.
    let (r, h) = match r {
        Some((r, _)) => (
            contiguous_as(r, elem),
            new_tensor(&x, Shape::new([b, n]), elem),
        ),
        None => {
            let dummy = new_tensor(&x, Shape::new([1]), elem);
            (dummy.clone(), dummy)
        }
    };
    if b > 0 {
        let kernel = NormSource {
            b,
            n,
            eps,
            residual,
            pre_norm: rw.is_some(),
            f16,
        };
        let mut bound = vec![&x, &r, &w, &h, &y];
        bound.extend(rw.as_ref());
        launch_wgsl(kernel, 256, b, &bound);
    }
    (residual.then(|| cast_to(h, dtype)), cast_to(y, dtype))
}

impl RmsNormBackend for CubeBackend {
    fn add_rms_norm(
        x: CubeTensor,
        r: CubeTensor,
        w: CubeTensor,
        eps: f32,
    ) -> (CubeTensor, CubeTensor) {
        let (h, y) = launch(x, Some((r, None)), w, eps);
        (h.expect("launched with a residual"), y)
    }

    fn rms_norm(x: CubeTensor, w: CubeTensor, eps: f32) -> CubeTensor {
        launch(x, None, w, eps).1
    }

    fn norm_add_rms_norm(
        x: CubeTensor,
        r: CubeTensor,
        rw: CubeTensor,
        w: CubeTensor,
        eps: f32,
    ) -> (CubeTensor, CubeTensor) {
        let (h, y) = launch(x, Some((r, Some(rw))), w, eps);
        (h.expect("launched with a residual"), y)
    }
}

/// Normalises each `n`-element row of `h` into `y`.
fn norm_rows(h: &[f32], w: &[f32], n: usize, eps: f32, y: &mut [f32]) {
    for (hr, yr) in h.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let inv = 1.0 / (dot_f32(hr, hr) / n as f32 + eps).sqrt();
        for ((o, &v), &g) in yr.iter_mut().zip(hr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// `(x + r, its norm)` on the CPU, `r` normed with `rw` first when given; every sum rounded to
/// the stream's dtype before it is normed, as the WGSL kernel does.
fn add_norm_flex(
    x: FloatTensor<Flex>,
    r: FloatTensor<Flex>,
    rw: Option<FloatTensor<Flex>>,
    w: FloatTensor<Flex>,
    eps: f32,
) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
    let dtype = x.dtype();
    let [b, n] = x.shape().dims::<2>();
    let (x, r, w) = (cpu::f32_dense(x), cpu::f32_dense(r), cpu::f32_dense(w));
    let round = |v: f32| match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    };
    let r: Vec<f32> = match rw {
        Some(rw) if n > 0 => {
            let rw = cpu::f32_dense(rw);
            let mut normed = vec![0f32; b * n];
            norm_rows(cpu::read(&r), cpu::read(&rw), n, eps, &mut normed);
            normed.into_iter().map(round).collect()
        }
        _ => cpu::read(&r).to_vec(),
    };
    let h: Vec<f32> = cpu::read(&x)
        .iter()
        .zip(&r)
        .map(|(a, b)| round(a + b))
        .collect();
    let mut y = vec![0f32; b * n];
    if n > 0 {
        norm_rows(&h, cpu::read(&w), n, eps, &mut y);
    }
    (
        cpu::cast_back(cpu::from_f32(h, [b, n]), dtype),
        cpu::cast_back(cpu::from_f32(y, [b, n]), dtype),
    )
}

impl RmsNormBackend for Flex {
    fn add_rms_norm(
        x: FloatTensor<Flex>,
        r: FloatTensor<Flex>,
        w: FloatTensor<Flex>,
        eps: f32,
    ) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
        add_norm_flex(x, r, None, w, eps)
    }

    fn norm_add_rms_norm(
        x: FloatTensor<Flex>,
        r: FloatTensor<Flex>,
        rw: FloatTensor<Flex>,
        w: FloatTensor<Flex>,
        eps: f32,
    ) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
        add_norm_flex(x, r, Some(rw), w, eps)
    }

    fn rms_norm(x: FloatTensor<Flex>, w: FloatTensor<Flex>, eps: f32) -> FloatTensor<Flex> {
        let dtype = x.dtype();
        let [b, n] = x.shape().dims::<2>();
        let (x, w) = (cpu::f32_dense(x), cpu::f32_dense(w));
        let mut y = vec![0f32; b * n];
        if n > 0 {
            norm_rows(cpu::read(&x), cpu::read(&w), n, eps, &mut y);
        }
        cpu::cast_back(cpu::from_f32(y, [b, n]), dtype)
    }
}

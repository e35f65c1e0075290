//! The fused sampler: temperature, top-k, top-p, min-p and greedy in one WGSL kernel per batch
//! (`shaders/sample.wgsl`, no sort) on wgpu; its twin in plain burn ops (sorting where top-k or
//! top-p needs the order) on every other backend and as the kernel's reference; and a host
//! reference in f64 for the tests. Randomness comes from a counter-based hash of
//! (seed, request id, step), so a row's token never depends on the batch it was drawn in.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{Backend, DType, Dispatch, Flex, Shape, TensorMetadata, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::common::{
    Shader, Variant, as_i32, contiguous_as, is_cpu, is_wgpu, launch_wgsl, new_f32, new_tensor,
    shader,
};
use crate::error::{Error, Result};

/// How one row is sampled; also the sampling flags of `wgspin generate` and `spin` (the doc
/// comments are their help, [`Default`] their defaults: plain sampling at temperature 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, default_value_t = Self::default().temperature)]
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    #[arg(long, default_value_t = Self::default().top_k)]
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens with this much mass (after top-k); 1 = off.
    #[arg(long, default_value_t = Self::default().top_p)]
    pub top_p: f32,
    /// Keep tokens with probability ≥ min-p × the top probability; 0 = off.
    #[arg(long, default_value_t = Self::default().min_p)]
    pub min_p: f32,
    /// Seed of the sampling; a request's tokens depend only on (seed, request, step), so the
    /// same seed gives the same responses at any batch size.
    #[arg(long = "sampling-seed", default_value_t = Self::default().seed)]
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "--temperature {}: must be a finite number ≥ 0 (0 = greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("--top-p {}: must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("--min-p {}: must be in [0, 1]", self.min_p));
        }
        Ok(())
    }
}

/// Where a row's random number comes from: its request (prompt) id and decoding step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawId {
    pub request: u32,
    pub step: u32,
}

/// pcg4d of Jarzynski & Olano (2020), the same arithmetic as the shader.
pub fn pcg4d(mut v: [u32; 4]) -> [u32; 4] {
    for x in &mut v {
        *x = x.wrapping_mul(1664525).wrapping_add(1013904223);
    }
    let mix = |v: &mut [u32; 4]| {
        v[0] = v[0].wrapping_add(v[1].wrapping_mul(v[3]));
        v[1] = v[1].wrapping_add(v[2].wrapping_mul(v[0]));
        v[2] = v[2].wrapping_add(v[0].wrapping_mul(v[1]));
        v[3] = v[3].wrapping_add(v[1].wrapping_mul(v[2]));
    };
    mix(&mut v);
    for x in &mut v {
        *x ^= *x >> 16;
    }
    mix(&mut v);
    v
}

/// The uniform number in [0, 1) of a draw.
pub fn uniform(seed: u64, id: DrawId) -> f32 {
    let h = pcg4d([seed as u32, (seed >> 32) as u32, id.request, id.step]);
    (h[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Host reference for one row, in f64 sums: the same filters and the same inverse CDF in
/// vocabulary order as the kernel, with the thresholds found by sorting. Returns (token, raw
/// log-prob). For tests; the product samples with the kernel or [`sample_twin`].
pub fn sample_row_reference(logits: &[f32], p: &SamplingParams, u: f32) -> (u32, f32) {
    let m_raw = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m_raw
        + logits
            .iter()
            .map(|&x| ((x - m_raw) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    let token = if p.temperature <= 0.0 {
        // First index of the maximum.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best
    } else {
        let inv_t = 1.0 / p.temperature;
        let x: Vec<f32> = logits.iter().map(|&l| l * inv_t).collect();
        let mx = m_raw * inv_t;
        // Sorted only when a filter reads ranks (top-k, top-p): O(V log V) per row otherwise
        // spent for nothing on every sampled token.
        let ranked = (p.top_k > 0 && (p.top_k as usize) < x.len()) || p.top_p < 1.0;
        let mut order: Vec<usize> = match ranked {
            true => (0..x.len()).filter(|&i| x[i] > f32::MIN).collect(),
            false => vec![],
        };
        order.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
        let mut tau = f32::MIN;
        if p.min_p > 0.0 {
            tau = mx + p.min_p.ln();
        }
        let mut tau_k = f32::MIN;
        if p.top_k > 0 && (p.top_k as usize) < x.len() && !order.is_empty() {
            tau_k = x[order[(p.top_k as usize).min(order.len()) - 1]];
        }
        if p.top_p < 1.0 {
            let w = |i: usize| ((x[i] - mx) as f64).exp();
            let kept: f64 = order
                .iter()
                .filter(|&&i| x[i] >= tau_k)
                .map(|&i| w(i))
                .sum();
            let target = p.top_p as f64 * kept;
            let mut cum = 0.0;
            for &i in &order {
                cum += w(i);
                if cum >= target {
                    tau = tau.max(x[i]);
                    break;
                }
            }
        }
        tau = tau.max(tau_k);
        let weights: Vec<f64> = x
            .iter()
            .map(|&v| {
                if v >= tau {
                    ((v - mx) as f64).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let target = u as f64 * total;
        let mut acc = 0.0;
        let mut pick = None;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                last = i;
                acc += w;
                if acc > target && pick.is_none() {
                    pick = Some(i);
                }
            }
        }
        pick.unwrap_or(last)
    };
    (token as u32, logits[token] - lse)
}

/// Stand-in for −inf in thresholds: "no filter".
const LOWEST: f32 = f32::MIN;

/// The kernel's twin in burn ops on the logits' own device, for the same (seed, request, step)
/// draws: thresholds as in the shader (min-p exact; top-k and top-p read off the row sorted in
/// descending order, top-p from a cumulative sum), then the inverse CDF in vocabulary order as a
/// cumulative sum. The sort runs only when some row uses top-k or top-p. Returns the tokens and
/// their log-probs under the unmodified distribution.
pub fn sample_twin(
    logits: Tensor<2>,
    params: &[SamplingParams],
    ids: &[DrawId],
) -> Result<(Vec<u32>, Vec<f32>)> {
    read_samples(sample_twin_device(logits, params, ids)?)
}

/// [`sample_twin`] without the read-back: `[B, 2]` (token id as f32, log-prob) on the logits'
/// device.
pub fn sample_twin_device(
    logits: Tensor<2>,
    params: &[SamplingParams],
    ids: &[DrawId],
) -> Result<Tensor<2>> {
    let [b, v] = logits.dims();
    check_batch(b, v, params, ids)?;
    let device = logits.device();
    if b == 0 {
        return Ok(Tensor::zeros([0, 2], &device));
    }
    let col = |vals: Vec<f32>| Tensor::<2>::from_data(TensorData::new(vals, [b, 1]), &device);
    let rows_where = |f: &dyn Fn(&SamplingParams) -> bool| {
        let flags: Vec<bool> = params.iter().map(f).collect();
        Tensor::<2, Bool>::from_data(TensorData::new(flags, [b, 1]), &device)
    };
    let lowest = || col(vec![LOWEST; b]);
    let positions = Tensor::<1, Int>::arange(0..v as i64, &device)
        .reshape([1, v])
        .expand([b, v]); // [B, V]

    let logits = logits.cast(burn::tensor::DType::F32); // [B, V]
    let m = logits.clone().max_dim(1); // [B, 1]
    let lse = super::lse::log_sum_exp(logits.clone()); // [B, 1]

    // Greedy: the first index of the maximum.
    let greedy = || {
        positions
            .clone()
            .mask_fill(logits.clone().not_equal(m.clone().expand([b, v])), v as i64)
            .min_dim(1) // [B, 1]
    };
    let greedy_row = |p: &SamplingParams| p.temperature <= 0.0;

    let tokens = if params.iter().all(greedy_row) {
        greedy()
    } else {
        let inv_t = col(params
            .iter()
            .map(|p| {
                if p.temperature > 0.0 {
                    1.0 / p.temperature
                } else {
                    1.0
                }
            })
            .collect());
        let x = logits.clone() * inv_t.clone(); // [B, V]
        let mx = m.clone() * inv_t; // [B, 1]
        let ln_min_p = col(params
            .iter()
            .map(|p| p.min_p.max(f32::MIN_POSITIVE).ln())
            .collect());
        let mut tau = lowest().mask_where(rows_where(&|p| p.min_p > 0.0), mx.clone() + ln_min_p);

        let top_k_on = |p: &SamplingParams| p.top_k > 0 && (p.top_k as usize) < v;
        if params.iter().any(|p| top_k_on(p) || p.top_p < 1.0) {
            let sorted = x.clone().sort_descending(1); // [B, V]
            let k_index: Vec<i64> = params
                .iter()
                .map(|p| if top_k_on(p) { p.top_k as i64 - 1 } else { 0 })
                .collect();
            let k_index = Tensor::<2, Int>::from_data(TensorData::new(k_index, [b, 1]), &device);
            let tau_k =
                lowest().mask_where(rows_where(&top_k_on), sorted.clone().gather(1, k_index));
            // top-p on the mass that survives top-k: the first sorted position whose cumulative
            // mass reaches top_p of it.
            let below_k = sorted.clone().lower(tau_k.clone().expand([b, v]));
            let ws = (sorted.clone() - mx.clone()).exp().mask_fill(below_k, 0.0); // [B, V]
            let target = ws.clone().sum_dim(1) * col(params.iter().map(|p| p.top_p).collect());
            let p_index = ws
                .cumsum(1)
                .lower(target.expand([b, v]))
                .int()
                .sum_dim(1)
                .clamp_max(v as i64 - 1); // [B, 1]
            let tau_p =
                lowest().mask_where(rows_where(&|p| p.top_p < 1.0), sorted.gather(1, p_index));
            tau = tau.max_pair(tau_k).max_pair(tau_p);
        }

        let kept = x.clone().greater_equal(tau.expand([b, v]));
        let w = (x - mx).exp().mask_fill(kept.bool_not(), 0.0); // [B, V]
        let positive = w.clone().greater_elem(0.0);
        let cum = w.cumsum(1); // [B, V]
        let total = cum.clone().slice([0..b, v - 1..v]); // [B, 1]
        let u = col(params
            .iter()
            .zip(ids)
            .map(|(p, id)| uniform(p.seed, *id))
            .collect());
        // The first position whose cumulative mass exceeds u · total, or the last kept token when
        // rounding leaves none.
        let pick = cum.lower_equal((total * u).expand([b, v])).int().sum_dim(1); // [B, 1]
        let last = positions
            .clone()
            .mask_fill(positive.bool_not(), -1)
            .max_dim(1);
        let pick = pick.min_pair(last).clamp_min(0);
        if params.iter().any(greedy_row) {
            pick.mask_where(rows_where(&greedy_row), greedy())
        } else {
            pick
        }
    };

    let logp = logits.gather(1, tokens.clone()) - lse; // [B, 1]
    Ok(Tensor::cat(vec![tokens.float(), logp], 1))
}

/// Reads `[B, 2]` samples (token id as f32, log-prob) back to the host: one blocking read.
pub fn read_samples(samples: Tensor<2>) -> Result<(Vec<u32>, Vec<f32>)> {
    read_samples_many(vec![samples])?
        .pop()
        .ok_or_else(|| Error::Device("sample read-back returned nothing".into()))
}

/// [`read_samples`] of several steps' outputs in one blocking read (one transaction: no
/// concatenation kernel, whatever the number of steps).
pub fn read_samples_many(samples: Vec<Tensor<2>>) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
    let tx = samples
        .into_iter()
        .fold(burn::tensor::Transaction::default(), |tx, t| tx.register(t));
    tx.try_execute()
        .map_err(readback_failed)?
        .into_iter()
        .map(|data| {
            let out = data.try_to_vec::<f32>().map_err(readback_failed)?;
            Ok((
                out.chunks(2).map(|c| c[0] as u32).collect(),
                out.chunks(2).map(|c| c[1]).collect(),
            ))
        })
        .collect()
}

fn readback_failed(e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("reading samples back failed: {e:?}"))
}

fn check_batch(b: usize, v: usize, params: &[SamplingParams], ids: &[DrawId]) -> Result<()> {
    if params.len() != b || ids.len() != b {
        return Err(Error::Invalid(format!(
            "sample: {b} rows but {} params and {} draw ids",
            params.len(),
            ids.len()
        )));
    }
    if v == 0 && b > 0 {
        return Err(Error::Invalid(
            "sample: logits with an empty vocabulary".into(),
        ));
    }
    params.iter().try_for_each(SamplingParams::validate)
}

// ------------------------------------------------------------------------------ kernel launch

#[backend_extension(Cube, Flex, Fusion)]
pub trait SampleBackend: Backend {
    /// `logits [B, V]`, `params [B, 8]` (i32 bit patterns, see the shader) → `([B, 2]` (token id
    /// as f32, log-prob), `[B]` token ids as i32 for the next step's embedding lookup).
    #[fusion(meta = |logits, _params| (
        TensorSpec::new(Shape::new([logits.shape[0], 2]), DType::F32),
        TensorSpec::new(Shape::new([logits.shape[0]]), DType::I32),
    ))]
    fn sample_rows(
        logits: FloatTensor<Self>,
        params: IntTensor<Self>,
    ) -> (FloatTensor<Self>, IntTensor<Self>);
}

pub(crate) const SHADER: Shader = shader!("sample.wgsl", prelude);

struct SampleSource {
    b: usize,
    v: usize,
}

/// The shader completed (f32 only), for the registry's validation test.
pub(crate) fn variants() -> Vec<Variant> {
    vec![Variant::of(&SampleSource { b: 3, v: 1000 }, &SHADER, false)]
}

impl KernelSource for SampleSource {
    fn source(&self) -> SourceTemplate {
        SHADER
            .template(false)
            .register("b", self.b.to_string())
            .register("v", self.v.to_string())
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.b, self.v))
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

impl SampleBackend for CubeBackend {
    fn sample_rows(logits: CubeTensor, params: CubeTensor) -> (CubeTensor, CubeTensor) {
        let logits = contiguous_as(logits, DType::F32);
        let params = into_contiguous(as_i32(params));
        let [b, v] = logits.shape().dims::<2>();
        let out = new_f32(&logits, Shape::new([b, 2]));
        let tokens = new_tensor(&logits, Shape::new([b]), DType::I32);
        if b == 0 {
            return (out, tokens);
        }
        launch_wgsl(
            SampleSource { b, v },
            256,
            b,
            &[&logits, &params, &out, &tokens],
        );
        (out, tokens)
    }
}

/// On the CPU backend the kernel is [`sample_row_reference`] per row, rows across threads (f64
/// sums; thresholds by sorting, where top-k or top-p needs ranks): the same filters and inverse
/// CDF as the shader, instead of the twin's dozen burn ops.
impl SampleBackend for Flex {
    fn sample_rows(
        logits: FloatTensor<Flex>,
        params: IntTensor<Flex>,
    ) -> (FloatTensor<Flex>, IntTensor<Flex>) {
        let [b, v] = logits.shape().dims::<2>();
        let logits = super::cpu::f32_dense(logits);
        let words = super::cpu::positions(params);
        let rows = super::cpu::read(&logits);
        let draw = |(row, w): (&[f32], &[i64])| {
            let bits = |i: usize| w[i] as u32;
            let p = SamplingParams {
                temperature: f32::from_bits(bits(0)),
                top_k: bits(1),
                top_p: f32::from_bits(bits(2)),
                min_p: f32::from_bits(bits(3)),
                seed: bits(4) as u64 | (bits(5) as u64) << 32,
            };
            let id = DrawId {
                request: bits(6),
                step: bits(7),
            };
            sample_row_reference(row, &p, uniform(p.seed, id))
        };
        let drawn: Vec<(u32, f32)> = rows
            .par_chunks(v.max(1))
            .zip(words.par_chunks(8))
            .take(b)
            .map(draw)
            .collect();
        let out = drawn.iter().flat_map(|&(t, lp)| [t as f32, lp]).collect();
        let tokens = drawn.iter().map(|&(t, _)| t as i32).collect::<Vec<_>>();
        let tokens = burn::backend::flex::FlexTensor::from_data(TensorData::new(tokens, [b]));
        (super::cpu::from_f32(out, [b, 2]), tokens)
    }
}

fn params_words(p: &SamplingParams, id: DrawId) -> [i32; 8] {
    [
        p.temperature.to_bits() as i32,
        p.top_k as i32,
        p.top_p.to_bits() as i32,
        p.min_p.to_bits() as i32,
        p.seed as u32 as i32,
        (p.seed >> 32) as u32 as i32,
        id.request as i32,
        id.step as i32,
    ]
}

/// Samples one token per row of `logits [B, V]`; row `i` uses `params[i]` and `ids[i]`.
/// Returns the tokens and their log-probs under the unmodified distribution.
pub fn sample(
    logits: Tensor<2>,
    params: &[SamplingParams],
    ids: &[DrawId],
) -> Result<(Vec<u32>, Vec<f32>)> {
    let sampler = BatchSampler::new(params.to_vec(), ids.to_vec(), &logits.device())?;
    read_samples(sampler.draw(logits)?.0)
}

/// A batch's sampling settings as the decode loop keeps them between steps: host copies for
/// the twin and, on wgpu, the kernel's parameter words on the device, advanced a step there so
/// that a step uploads nothing.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    params: Vec<SamplingParams>,
    ids: Vec<DrawId>,
    /// `[B, 8]` kernel words and the `[B, 8]` increment of one step (1 in the step column).
    device_words: Option<(Tensor<2, Int>, Tensor<2, Int>)>,
}

impl BatchSampler {
    pub fn new(params: Vec<SamplingParams>, ids: Vec<DrawId>, device: &Device) -> Result<Self> {
        let b = params.len();
        check_batch(b, 1, &params, &ids)?;
        let device_words = (is_wgpu(device) || is_cpu(device)).then(|| {
            let words: Vec<i32> = params
                .iter()
                .zip(&ids)
                .flat_map(|(p, id)| params_words(p, *id))
                .collect();
            let inc: Vec<i32> = (0..b * 8).map(|i| (i % 8 == 7) as i32).collect();
            (
                Tensor::<2, Int>::from_data(TensorData::new(words, [b, 8]), device),
                Tensor::<2, Int>::from_data(TensorData::new(inc, [b, 8]), device),
            )
        });
        Ok(Self {
            params,
            ids,
            device_words,
        })
    }

    /// Tensors [`BatchSampler::new`] uploaded (the parameter words and their step increment).
    pub fn uploads(&self) -> usize {
        if self.device_words.is_some() { 2 } else { 0 }
    }

    /// Every row moves on to its next draw.
    pub fn advance(&mut self) {
        for id in &mut self.ids {
            id.step += 1;
        }
        if let Some((words, inc)) = &mut self.device_words {
            *words = words.clone() + inc.clone();
        }
    }

    /// `[B, 2]` (token id as f32, log-prob under the unmodified distribution) and the token ids
    /// `[B]` for `logits [B, V]`, left on the device: the kernel on wgpu and the CPU backend,
    /// [`sample_twin_device`] elsewhere.
    pub fn draw(&self, logits: Tensor<2>) -> Result<(Tensor<2>, Tensor<1, Int>)> {
        let [b, v] = logits.dims();
        check_batch(b, v, &self.params, &self.ids)?;
        match &self.device_words {
            Some((words, _)) => {
                let (out, tokens) = <Dispatch as SampleBackend>::sample_rows(
                    logits.into_dispatch(),
                    words.clone().into_dispatch(),
                );
                Ok((Tensor::from_dispatch(out), Tensor::from_dispatch(tokens)))
            }
            None => {
                let out = sample_twin_device(logits, &self.params, &self.ids)?;
                let tokens = out.clone().slice([0..b, 0..1]).int().reshape([b]);
                Ok((out, tokens))
            }
        }
    }
}

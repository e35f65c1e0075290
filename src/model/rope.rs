//! Rotary position embeddings (RoPE) with the `default`, `linear` and `llama3` frequency rules of
//! transformers. Angles are computed on the host per call from the actual positions, so there is no
//! table sized by `max_position_embeddings` on the device.

use burn::tensor::{Device, Tensor, TensorData};

use crate::hf::config::{RopeConfig, RopeScaling};
use crate::kernels::rope_train::{rope_heads, rope_train};

/// Inverse frequencies, one per rotated pair (`head_dim / 2`).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Self {
        // Same float32 arithmetic as transformers' `_compute_default_rope_parameters`.
        let base: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / (cfg.theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = match cfg.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let low_wavelen = old_ctx / low_freq_factor;
                let high_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let f = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                        } else {
                            scaled as f32
                        }
                    })
                    .collect()
            }
        };
        Self { inv_freq }
    }

    /// cos and sin of every (position, pair): `[batch, 1, seq, head_dim / 2]` each.
    pub fn angles(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * s * half);
        let mut sin = Vec::with_capacity(b * s * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    // transformers multiplies in float32, then takes cos/sin of the float32 angle.
                    let a = (p as f32 * f) as f64;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        let shape = [b, 1, s, half];
        crate::device::traffic::uploaded(2);
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Rotates `x` `[batch, heads, seq, head_dim]` by the angles (halves layout, as transformers'
/// `rotate_half`).
pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    // One fused op forward and backward (kernels::rope_train, whose twin is the burn-ops form
    // this function used to run: two slices, four products, an add, a sub and a cat).
    rope_train(x, cos.clone(), sin.clone())
}

/// Rotates a projection's heads `x` `[batch, seq, heads, head_dim]` into
/// `[batch, heads, seq, head_dim]`: [`apply`] of `x.swap_dims(1, 2)`, but the kernel reads the
/// heads in place and hands the gradient back as `[batch, seq, heads, head_dim]`, so neither
/// direction copies q or k between the layouts.
pub fn apply_heads(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    rope_heads(x, cos.clone(), sin.clone())
}

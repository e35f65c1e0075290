//! GGML tensor types: block geometry, dequantization to f32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1 and the K-quants Q2_K..Q6_K) and the few encoders the GGUF writer needs (F32, F16,
//! Q8_0). Block layouts and formulas follow ggml's `ggml-quants.c` reference (non-SIMD) code; the
//! unit tests and `tests/fixtures/gguf/` (made with the `gguf` Python package) check them.

use half::{bf16, f16};

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// The GGML tensor types wgspin reads (the numbers are ggml's `enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

/// Every supported type, for error messages and tests.
pub const SUPPORTED_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Names of ggml types wgspin does not read, so an error can say what the file holds.
fn unsupported_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgmlType {
    /// ggml's type number → type; `Err` carries a description of the unsupported type.
    pub fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => {
                let supported: Vec<&str> = SUPPORTED_TYPES.iter().map(|t| t.name()).collect();
                return Err(format!(
                    "tensor type {} is not supported (supported: {})",
                    match unsupported_name(other) {
                        Some(n) => format!("{n} ({other})"),
                        None => format!("{other} (unknown)"),
                    },
                    supported.join(", ")
                ));
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (QK_K, 84),
            GgmlType::Q3K => (QK_K, 110),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
        }
    }

    /// Bytes of `numel` elements, `None` when `numel` is not whole blocks or the size overflows.
    pub fn byte_size(self, numel: u64) -> Option<u64> {
        let (elems, bytes) = self.block();
        if !numel.is_multiple_of(elems as u64) {
            return None;
        }
        (numel / elems as u64).checked_mul(bytes as u64)
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The scale `d` and offset `m` of a Q4_x / Q5_x block, and the bytes after them: the `_1` types
/// store `m` after `d`; the `_0` ones centre their unsigned values on `zero`, so `m = -zero·d`.
fn scale_offset(b: &[u8], stores_min: bool, zero: f32) -> (f32, f32, &[u8]) {
    let d = half_at(b, 0);
    if stores_min {
        (d, half_at(b, 2), &b[4..])
    } else {
        (d, -zero * d, &b[2..])
    }
}

/// Dequantizes whole blocks of `ty` from `data` (whose length must be a multiple of the block
/// size; the reader checks it) into `out`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) {
    let (elems, bytes) = ty.block();
    out.reserve(data.len() / bytes * elems);
    for b in data.chunks_exact(bytes) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(half_at(b, 0)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q8_0 => {
                // d: f16, qs: i8[32]
                let d = half_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                // d (, m): f16, qs: 16 bytes; low nibbles are elements 0..16, high ones 16..32.
                let (d, m, qs) = scale_offset(b, ty == GgmlType::Q4_1, 8.0);
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                // d (, m): f16, qh: u32 (5th bits), qs: 16 bytes of low nibbles.
                let (d, m, rest) = scale_offset(b, ty == GgmlType::Q5_1, 16.0);
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                for (j, &q) in qs.iter().enumerate() {
                    let hi = ((qh >> j) << 4) & 0x10;
                    out.push(((q as u32 & 0xF) | hi) as f32 * d + m);
                }
                for (j, &q) in qs.iter().enumerate() {
                    let hi = (qh >> (j + 12)) & 0x10;
                    out.push(((q as u32 >> 4) | hi) as f32 * d + m);
                }
            }
            GgmlType::Q2K => dequant_q2k(b, out),
            GgmlType::Q3K => dequant_q3k(b, out),
            GgmlType::Q4K | GgmlType::Q5K => dequant_q45k(ty == GgmlType::Q5K, b, out),
            GgmlType::Q6K => dequant_q6k(b, out),
        }
    }
}

/// Q2_K: scales u8[16] (low nibble scale, high nibble min), qs u8[64] (2-bit), d, dmin: f16.
fn dequant_q2k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                for &v in &q[part * 16..part * 16 + 16] {
                    out.push(dl * ((v >> shift) & 3) as f32 - ml);
                }
            }
        }
    }
}

/// Q3_K: hmask u8[32] (3rd bits), qs u8[64] (2-bit), scales: 16 6-bit values packed in 12 bytes, d: f16.
fn dequant_q3k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half_at(b, 108);
    // Unpack the 6-bit scales as ggml does with its kmask shuffles: low 4 bits from bytes 0..8,
    // high 2 bits from bytes 8..12.
    let mut scales = [0i32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0xF
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in part * 16..part * 16 + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let sub = if hmask[l] & m != 0 { 0 } else { 4 };
                    out.push(dl * (low - sub) as f32);
                }
            }
            m <<= 1;
        }
    }
}

/// Scale and min `j` (0..8) of the 12-byte packed 6-bit scales of Q4_K / Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: d, dmin: f16, scales [12], qs u8[128]. Q5_K: the same plus qh u8[32] (5th bits) before qs.
fn dequant_q45k(five: bool, b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if five {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    let (mut u1, mut u2) = (1u8, 2u8);
    for (chunk, is) in (0..4).map(|c| (c, 2 * c)) {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(is, scales);
        let (sc2, m2) = scale_min_k4(is + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for (l, &v) in q.iter().enumerate() {
            let hi = if five && qh[l] & u1 != 0 { 16 } else { 0 };
            out.push(d1 * ((v & 0xF) + hi) as f32 - m1);
        }
        for (l, &v) in q.iter().enumerate() {
            let hi = if five && qh[l] & u2 != 0 { 16 } else { 0 };
            out.push(d2 * ((v >> 4) + hi) as f32 - m2);
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// Q6_K: ql u8[128] (low 4 bits), qh u8[64] (high 2 bits), scales i8[16], d: f16.
fn dequant_q6k(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for n in 0..2 {
        let ql = &b[n * 64..n * 64 + 64];
        let qh = &b[128 + n * 32..128 + n * 32 + 32];
        let sc = &b[192 + n * 8..192 + n * 8 + 8];
        let y = &mut y[n * 128..n * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Encodes f32 values as `ty` (F32, F16 or Q8_0; `values.len()` a multiple of 32 for Q8_0).
/// Q8_0 rounds as ggml's reference quantizer does: d = max|x| / 127, q = round(x / d).
pub fn encode(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    match ty {
        GgmlType::F32 => Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => Some(
            values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        GgmlType::Q8_0 if values.len().is_multiple_of(32) => {
            let mut out = Vec::with_capacity(values.len() / 32 * 34);
            for block in values.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5; nibbles 0..16 in the low halves, 15 in the high halves.
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|i| i | 0xF0));
        let mut out = vec![];
        dequantize(GgmlType::Q4_0, &b, &mut out);
        let want: Vec<f32> = (0..16)
            .map(|i| (i as f32 - 8.0) * 0.5)
            .chain(std::iter::repeat_n(3.5, 16))
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn q8_0_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let bytes = encode(GgmlType::Q8_0, &values).unwrap();
        assert_eq!(bytes.len(), 2 * 34);
        let mut out = vec![];
        dequantize(GgmlType::Q8_0, &bytes, &mut out);
        for (block, got) in values.chunks(32).zip(out.chunks(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in block.iter().zip(got) {
                assert!((a - b).abs() <= step * 0.5 + 1e-3 * a.abs(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn unknown_types_are_named() {
        let e = GgmlType::from_id(23).unwrap_err();
        assert!(e.contains("IQ4_XS") && e.contains("Q6_K"), "{e}");
        assert!(GgmlType::from_id(999).unwrap_err().contains("unknown"));
        for t in SUPPORTED_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Ok(*t));
        }
    }
}

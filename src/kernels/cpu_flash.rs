//! Flash attention on the CPU backend ([`super::flash_attention`]'s contract): blocked and
//! streaming, so a task holds O(block · head_dim) floats and nothing `[S, K]` exists at any time.
//!
//! Forward: one rayon task per (row, kv head, query block) covering the kv head's G query heads
//! (the block's keys and values are read once for all of them); an online softmax over key
//! blocks (running max, sum and output, rescaled when the max grows). Backward: two passes that
//! recompute the scores from `lse`, so neither needs atomics: per (row, kv head, key block) the
//! key block's `dk`, `dv` summed over every query that sees it, then per (row, kv head, query
//! block) `dq`. Blocks whose positions show no visible pair (the causal upper triangle, outside
//! the window, all padding) are skipped whole. Accumulation is in f32, as the WGSL kernels do.

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use rayon::prelude::*;

use super::cpu;
use super::flash_attention::FlashAttentionBackend;

/// Queries per task and keys per inner block: a block's scores and its G heads' running
/// outputs stay in cache; 300-token rows still split into several tasks.
const BLOCK_Q: usize = 32;
const BLOCK_K: usize = 64;

/// The shapes, positions and settings one call works over.
struct Geometry {
    b: usize,
    h: usize,
    hkv: usize,
    g: usize,
    s: usize,
    kl: usize,
    d: usize,
    /// `[B · S]` and `[B · K]`, −1 (any negative) for padding.
    qpos: Vec<i64>,
    kpos: Vec<i64>,
    window: i64,
    scale: f32,
}

/// `(min, max)` of the real positions in `pos`, `None` when all are padding.
fn span(pos: &[i64]) -> Option<(i64, i64)> {
    pos.iter()
        .filter(|&&p| p >= 0)
        .fold(None, |acc, &p| match acc {
            None => Some((p, p)),
            Some((lo, hi)) => Some((lo.min(p), hi.max(p))),
        })
}

impl Geometry {
    fn new(
        q: &FlexTensor,
        k: &FlexTensor,
        qpos: IntTensor<Flex>,
        kpos: IntTensor<Flex>,
        window: u32,
        scale: f32,
    ) -> Self {
        let [b, h, s, d] = q.shape().dims::<4>();
        let [kb, hkv, kl, kd] = k.shape().dims::<4>();
        assert!(
            kb == b && kd == d && hkv > 0 && h % hkv == 0,
            "flash attention: q {:?} does not fit k {:?}",
            q.shape(),
            k.shape()
        );
        let (qpos, kpos) = (cpu::positions(qpos), cpu::positions(kpos));
        assert!(
            qpos.len() == b * s && kpos.len() == b * kl,
            "flash attention: positions do not fit q {:?} and k {:?}",
            q.shape(),
            k.shape()
        );
        Self {
            b,
            h,
            hkv,
            g: h / hkv,
            s,
            kl,
            d,
            qpos,
            kpos,
            window: window as i64,
            scale,
        }
    }

    fn visible(&self, qp: i64, kp: i64) -> bool {
        qp >= 0 && kp >= 0 && kp <= qp && (self.window == 0 || qp - kp < self.window)
    }

    /// Query rows `[start, end)` of query block `qb`, likewise for key block `kb`.
    fn q_range(&self, qb: usize) -> (usize, usize) {
        (qb * BLOCK_Q, ((qb + 1) * BLOCK_Q).min(self.s))
    }
    fn k_range(&self, kb: usize) -> (usize, usize) {
        (kb * BLOCK_K, ((kb + 1) * BLOCK_K).min(self.kl))
    }
    fn q_blocks(&self) -> usize {
        self.s.div_ceil(BLOCK_Q)
    }
    fn k_blocks(&self) -> usize {
        self.kl.div_ceil(BLOCK_K)
    }

    /// Whether any query of block `qb` may see any key of block `kb` in row `r`, from the
    /// blocks' position spans (positions need not be sorted: left padding, cached slots).
    fn blocks_meet(&self, r: usize, qb: usize, kb: usize) -> bool {
        let (q0, q1) = self.q_range(qb);
        let (k0, k1) = self.k_range(kb);
        let qs = span(&self.qpos[r * self.s + q0..r * self.s + q1]);
        let ks = span(&self.kpos[r * self.kl + k0..r * self.kl + k1]);
        match (qs, ks) {
            (Some((qlo, qhi)), Some((klo, khi))) => {
                klo <= qhi && (self.window == 0 || qlo - khi < self.window)
            }
            _ => false,
        }
    }

    /// Offset of query `i` of head `head` in row `r` in a `[B, H, S, ·]` tensor, in rows.
    fn q_row(&self, r: usize, head: usize, i: usize) -> usize {
        (r * self.h + head) * self.s + i
    }
    /// Offset of key `j` of kv head `c` in row `r` in a `[B, HKV, K, ·]` tensor, in rows.
    fn k_row(&self, r: usize, c: usize, j: usize) -> usize {
        (r * self.hkv + c) * self.kl + j
    }
}

/// `acc += a · x`.
#[inline(always)]
fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in acc.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// The forward of one (row, kv head, query block): `(out [G, nq, D], lse [G, nq])`.
fn forward_task(
    geo: &Geometry,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (r, c, qb): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (g, d) = (geo.g, geo.d);
    let (q0, q1) = geo.q_range(qb);
    let nq = q1 - q0;
    let mut acc = vec![0f32; g * nq * d];
    let mut m = vec![f32::NEG_INFINITY; g * nq];
    let mut l = vec![0f32; g * nq];
    let mut sc = [0f32; BLOCK_K];
    for kb in 0..geo.k_blocks() {
        if !geo.blocks_meet(r, qb, kb) {
            continue;
        }
        let (k0, k1) = geo.k_range(kb);
        for gi in 0..g {
            for i in q0..q1 {
                let qp = geo.qpos[r * geo.s + i];
                let qv = &q[geo.q_row(r, c * g + gi, i) * d..][..d];
                let mut bm = f32::NEG_INFINITY;
                for j in k0..k1 {
                    let x = if geo.visible(qp, geo.kpos[r * geo.kl + j]) {
                        geo.scale * cpu::dot_f32(qv, &k[geo.k_row(r, c, j) * d..][..d])
                    } else {
                        f32::NEG_INFINITY
                    };
                    sc[j - k0] = x;
                    bm = bm.max(x);
                }
                if bm == f32::NEG_INFINITY {
                    continue;
                }
                let t = gi * nq + (i - q0);
                let a = &mut acc[t * d..][..d];
                let new_m = m[t].max(bm);
                if m[t] != f32::NEG_INFINITY && new_m > m[t] {
                    let corr = (m[t] - new_m).exp();
                    l[t] *= corr;
                    a.iter_mut().for_each(|x| *x *= corr);
                }
                m[t] = new_m;
                for j in k0..k1 {
                    let x = sc[j - k0];
                    if x != f32::NEG_INFINITY {
                        let p = (x - new_m).exp();
                        l[t] += p;
                        axpy(a, p, &v[geo.k_row(r, c, j) * d..][..d]);
                    }
                }
            }
        }
    }
    let mut lse = vec![0f32; g * nq];
    for t in 0..g * nq {
        // l > 0 exactly when the query saw a key (its largest term is exp(0) = 1).
        if l[t] > 0.0 {
            let inv = 1.0 / l[t];
            acc[t * d..][..d].iter_mut().for_each(|x| *x *= inv);
            lse[t] = m[t] + l[t].ln();
        }
    }
    (acc, lse)
}

/// Every (row, kv head, block) task of `blocks` blocks per (row, kv head), in order.
fn tasks(geo: &Geometry, blocks: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::with_capacity(geo.b * geo.hkv * blocks);
    for r in 0..geo.b {
        for c in 0..geo.hkv {
            out.extend((0..blocks).map(|x| (r, c, x)));
        }
    }
    out
}

/// Copies per-task `[G, nq, width]` results of query-block tasks into `[B, H, S, width]`.
fn scatter_q(
    geo: &Geometry,
    parts: &[(usize, usize, usize)],
    results: &[Vec<f32>],
    width: usize,
) -> Vec<f32> {
    let mut dst = vec![0f32; geo.b * geo.h * geo.s * width];
    for (&(r, c, qb), part) in parts.iter().zip(results) {
        let (q0, q1) = geo.q_range(qb);
        let nq = q1 - q0;
        for gi in 0..geo.g {
            let at = geo.q_row(r, c * geo.g + gi, q0) * width;
            dst[at..at + nq * width].copy_from_slice(&part[gi * nq * width..][..nq * width]);
        }
    }
    dst
}

/// The backward's per-query `Δ = Σ_d dout · out`, `[B · H · S]`.
fn deltas(geo: &Geometry, out: &[f32], dout: &[f32]) -> Vec<f32> {
    let d = geo.d.max(1);
    out.par_chunks(d)
        .zip(dout.par_chunks(d))
        .map(|(o, g)| cpu::dot_f32(o, g))
        .collect()
}

/// The backward's shared inputs, dense f32.
struct Saved<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    lse: &'a [f32],
    delta: &'a [f32],
}

/// `ds = P ⊙ (dout·v − Δ)` for query `i` of head `head` against key `j` of kv head `c`, and
/// `P`, or `None` where the pair is hidden.
#[inline(always)]
fn pair(
    geo: &Geometry,
    sv: &Saved,
    (r, c, head): (usize, usize, usize),
    i: usize,
    j: usize,
) -> Option<(f32, f32)> {
    let d = geo.d;
    if !geo.visible(geo.qpos[r * geo.s + i], geo.kpos[r * geo.kl + j]) {
        return None;
    }
    let qr = geo.q_row(r, head, i);
    let kr = geo.k_row(r, c, j);
    let x = geo.scale * cpu::dot_f32(&sv.q[qr * d..][..d], &sv.k[kr * d..][..d]);
    let p = (x - sv.lse[qr]).exp();
    let dp = cpu::dot_f32(&sv.dout[qr * d..][..d], &sv.v[kr * d..][..d]);
    Some((p, p * (dp - sv.delta[qr])))
}

/// `(dk, dv)` `[nk, D]` each of one (row, kv head, key block).
fn dkv_task(geo: &Geometry, sv: &Saved, (r, c, kb): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let d = geo.d;
    let (k0, k1) = geo.k_range(kb);
    let (mut dk, mut dv) = (vec![0f32; (k1 - k0) * d], vec![0f32; (k1 - k0) * d]);
    for qb in 0..geo.q_blocks() {
        if !geo.blocks_meet(r, qb, kb) {
            continue;
        }
        let (q0, q1) = geo.q_range(qb);
        for head in c * geo.g..(c + 1) * geo.g {
            for i in q0..q1 {
                let qr = geo.q_row(r, head, i);
                for j in k0..k1 {
                    if let Some((p, ds)) = pair(geo, sv, (r, c, head), i, j) {
                        let t = (j - k0) * d;
                        axpy(&mut dv[t..t + d], p, &sv.dout[qr * d..][..d]);
                        axpy(&mut dk[t..t + d], geo.scale * ds, &sv.q[qr * d..][..d]);
                    }
                }
            }
        }
    }
    (dk, dv)
}

/// `dq [G, nq, D]` of one (row, kv head, query block).
fn dq_task(geo: &Geometry, sv: &Saved, (r, c, qb): (usize, usize, usize)) -> Vec<f32> {
    let d = geo.d;
    let (q0, q1) = geo.q_range(qb);
    let nq = q1 - q0;
    let mut dq = vec![0f32; geo.g * nq * d];
    for kb in 0..geo.k_blocks() {
        if !geo.blocks_meet(r, qb, kb) {
            continue;
        }
        let (k0, k1) = geo.k_range(kb);
        for gi in 0..geo.g {
            for i in q0..q1 {
                let t = (gi * nq + i - q0) * d;
                for j in k0..k1 {
                    if let Some((_, ds)) = pair(geo, sv, (r, c, c * geo.g + gi), i, j) {
                        let kr = geo.k_row(r, c, j);
                        axpy(&mut dq[t..t + d], geo.scale * ds, &sv.k[kr * d..][..d]);
                    }
                }
            }
        }
    }
    dq
}

impl FlashAttentionBackend for Flex {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        qpos: IntTensor<Self>,
        kpos: IntTensor<Self>,
        window: u32,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dtype = q.dtype();
        let geo = Geometry::new(&q, &k, qpos, kpos, window, scale);
        let (q, k, v) = (cpu::f32_dense(q), cpu::f32_dense(k), cpu::f32_dense(v));
        let ins = (cpu::read(&q), cpu::read(&k), cpu::read(&v));
        let parts = tasks(&geo, geo.q_blocks());
        let (outs, lses): (Vec<_>, Vec<_>) = parts
            .par_iter()
            .map(|&t| forward_task(&geo, ins, t))
            .unzip();
        let out = scatter_q(&geo, &parts, &outs, geo.d);
        let lse = scatter_q(&geo, &parts, &lses, 1);
        let (b, h, s, d) = (geo.b, geo.h, geo.s, geo.d);
        (
            cpu::cast_back(cpu::from_f32(out, [b, h, s, d]), dtype),
            cpu::from_f32(lse, [b, h, s]),
        )
    }

    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        qpos: IntTensor<Self>,
        kpos: IntTensor<Self>,
        window: u32,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (qt, kt, vt) = (q.dtype(), k.dtype(), v.dtype());
        let geo = Geometry::new(&q, &k, qpos, kpos, window, scale);
        let dense = |t| cpu::f32_dense(t);
        let (q, k, v) = (dense(q), dense(k), dense(v));
        let (out, lse, dout) = (dense(out), dense(lse), dense(dout));
        let delta = deltas(&geo, cpu::read(&out), cpu::read(&dout));
        let sv = Saved {
            q: cpu::read(&q),
            k: cpu::read(&k),
            v: cpu::read(&v),
            dout: cpu::read(&dout),
            lse: cpu::read(&lse),
            delta: &delta,
        };
        let kparts = tasks(&geo, geo.k_blocks());
        let (dks, dvs): (Vec<_>, Vec<_>) =
            kparts.par_iter().map(|&t| dkv_task(&geo, &sv, t)).unzip();
        // Key-block results are already in [B, HKV, K, D] order: (row, kv head, block) major.
        let (dk, dv): (Vec<f32>, Vec<f32>) = (dks.concat(), dvs.concat());
        let qparts = tasks(&geo, geo.q_blocks());
        let dqs: Vec<_> = qparts.par_iter().map(|&t| dq_task(&geo, &sv, t)).collect();
        let dq = scatter_q(&geo, &qparts, &dqs, geo.d);
        let (b, h, s, d, hkv, kl) = (geo.b, geo.h, geo.s, geo.d, geo.hkv, geo.kl);
        (
            cpu::cast_back(cpu::from_f32(dq, [b, h, s, d]), qt),
            cpu::cast_back(cpu::from_f32(dk, [b, hkv, kl, d]), kt),
            cpu::cast_back(cpu::from_f32(dv, [b, hkv, kl, d]), vt),
        )
    }
}

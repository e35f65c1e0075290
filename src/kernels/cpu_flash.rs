//! Flash attention on the CPU backend ([`super::flash_attention`]'s contract): blocked and
//! streaming, so a task holds O(block · head_dim) floats and nothing `[S, K]` exists at any time.
//!
//! Forward: one rayon task per (row, kv head, query block) covering the kv head's G query heads
//! (the block's keys and values are read once for all of them); an online softmax over key
//! blocks (running max, sum and output, rescaled when the max grows). The block products
//! (`q kᵀ`, `P v` and the backward's) go through the gemm crate, as burn-flex's matmuls do;
//! masks, exponentials and sums are loops here. Backward: two passes that
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

/// A read-only matrix view: element `(i, j)` at `data[i · rs + j · cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// `rows × width` row-major rows starting at row `row` of `data` (width `width`).
    fn rows(data: &'a [f32], row: usize, width: usize) -> Self {
        Self {
            data: &data[row * width..],
            rs: width,
            cs: 1,
        }
    }
    /// The transpose of [`Mat::rows`].
    fn rows_t(data: &'a [f32], row: usize, width: usize) -> Self {
        Self {
            data: &data[row * width..],
            rs: 1,
            cs: width,
        }
    }
    /// Whether an `m × n` view fits in `data`.
    fn fits(&self, m: usize, n: usize) -> bool {
        m == 0 || n == 0 || (m - 1) * self.rs + (n - 1) * self.cs < self.data.len()
    }
}

/// `dst [m × n]` (row-major) `= (accumulate ? dst : 0) + alpha · a [m × k] · b [k × n]`, one
/// thread (the caller's tasks are the parallelism), through the gemm crate burn-flex uses.
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    alpha: f32,
    accumulate: bool,
) {
    assert!(
        dst.len() >= m * n && a.fits(m, k) && b.fits(k, n),
        "flash attention: a block product out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assert above keeps every element the views address inside their slices, and
    // `dst` is a distinct `&mut` (so it aliases neither input).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One task's view of the inputs, dense f32.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// `scale · q·k` `[nq × nk]` of query block `(q0..q1)` of head `head` against key block
/// `(k0..k1)` of kv head `c` in row `r`; hidden pairs set to −∞.
fn block_scores(
    geo: &Geometry,
    x: Inputs,
    (r, c, head): (usize, usize, usize),
    (q0, q1): (usize, usize),
    (k0, k1): (usize, usize),
    out: &mut [f32],
) {
    let (nq, nk, d) = (q1 - q0, k1 - k0, geo.d);
    let q = Mat::rows(x.q, geo.q_row(r, head, q0), d);
    let kt = Mat::rows_t(x.k, geo.k_row(r, c, k0), d);
    matmul(out, (nq, nk, d), q, kt, geo.scale, false);
    for i in 0..nq {
        let qp = geo.qpos[r * geo.s + q0 + i];
        let row = &mut out[i * nk..(i + 1) * nk];
        let kpos = &geo.kpos[r * geo.kl + k0..r * geo.kl + k1];
        for (x, &kp) in row.iter_mut().zip(kpos) {
            if !geo.visible(qp, kp) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// The forward of one (row, kv head, query block): `(out [G, nq, D], lse [G, nq])`.
fn forward_task(
    geo: &Geometry,
    x: Inputs,
    (r, c, qb): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (g, d) = (geo.g, geo.d);
    let (q0, q1) = geo.q_range(qb);
    let nq = q1 - q0;
    let mut acc = vec![0f32; g * nq * d];
    let mut m = vec![f32::NEG_INFINITY; g * nq];
    let mut l = vec![0f32; g * nq];
    let mut sc = vec![0f32; nq * BLOCK_K];
    for kb in 0..geo.k_blocks() {
        if !geo.blocks_meet(r, qb, kb) {
            continue;
        }
        let (k0, k1) = geo.k_range(kb);
        let nk = k1 - k0;
        for gi in 0..g {
            block_scores(geo, x, (r, c, c * g + gi), (q0, q1), (k0, k1), &mut sc);
            let acc = &mut acc[gi * nq * d..(gi + 1) * nq * d];
            for i in 0..nq {
                let t = gi * nq + i;
                let row = &mut sc[i * nk..(i + 1) * nk];
                let bm = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if bm == f32::NEG_INFINITY {
                    // Nothing visible in this block: its probabilities are 0.
                    row.fill(0.0);
                    continue;
                }
                let new_m = m[t].max(bm);
                if new_m > m[t] && m[t] != f32::NEG_INFINITY {
                    // Earlier blocks' sums and outputs were relative to the smaller max.
                    let corr = (m[t] - new_m).exp();
                    l[t] *= corr;
                    acc[i * d..(i + 1) * d].iter_mut().for_each(|a| *a *= corr);
                }
                m[t] = new_m;
                let mut sum = 0f32;
                for p in row.iter_mut() {
                    // exp(−∞) = 0 for hidden keys.
                    *p = (*p - new_m).exp();
                    sum += *p;
                }
                l[t] += sum;
            }
            let vb = Mat::rows(x.v, geo.k_row(r, c, k0), d);
            matmul(acc, (nq, d, nk), Mat::rows(&sc, 0, nk), vb, 1.0, true);
        }
    }
    let mut lse = vec![0f32; g * nq];
    for t in 0..g * nq {
        // l > 0 exactly when the query saw a key (its largest term is exp(0) = 1).
        if l[t] > 0.0 {
            let inv = 1.0 / l[t];
            acc[t * d..(t + 1) * d].iter_mut().for_each(|a| *a *= inv);
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

/// The backward's shared inputs, dense f32: `dout [B, H, S, D]`, `lse` and
/// `Δ = Σ_d dout · out` `[B, H, S]`.
#[derive(Clone, Copy)]
struct Saved<'a> {
    x: Inputs<'a>,
    dout: &'a [f32],
    lse: &'a [f32],
    delta: &'a [f32],
}

/// `P` and `dS = P ⊙ (dout·vᵀ − Δ)` `[nq × nk]` of a query block of `head` against a key block
/// of kv head `c` in row `r`, recomputed from `lse` (0 on hidden pairs).
fn block_grads(
    geo: &Geometry,
    sv: Saved,
    (r, c, head): (usize, usize, usize),
    qr: (usize, usize),
    kr: (usize, usize),
    p: &mut [f32],
    ds: &mut [f32],
) {
    let ((q0, q1), (k0, k1), d) = (qr, kr, geo.d);
    let (nq, nk) = (q1 - q0, k1 - k0);
    block_scores(geo, sv.x, (r, c, head), qr, kr, p);
    let dout = Mat::rows(sv.dout, geo.q_row(r, head, q0), d);
    let vt = Mat::rows_t(sv.x.v, geo.k_row(r, c, k0), d);
    matmul(ds, (nq, nk, d), dout, vt, 1.0, false);
    for i in 0..nq {
        let at = geo.q_row(r, head, q0 + i);
        let (lse, delta) = (sv.lse[at], sv.delta[at]);
        for j in i * nk..(i + 1) * nk {
            p[j] = (p[j] - lse).exp();
            ds[j] = p[j] * (ds[j] - delta);
        }
    }
}

/// `(dk, dv)` `[nk, D]` each of one (row, kv head, key block): summed over every query block
/// and query head that sees it.
fn dkv_task(geo: &Geometry, sv: Saved, (r, c, kb): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let d = geo.d;
    let (k0, k1) = geo.k_range(kb);
    let nk = k1 - k0;
    let (mut dk, mut dv) = (vec![0f32; nk * d], vec![0f32; nk * d]);
    let (mut p, mut ds) = (vec![0f32; BLOCK_Q * nk], vec![0f32; BLOCK_Q * nk]);
    for qb in 0..geo.q_blocks() {
        if !geo.blocks_meet(r, qb, kb) {
            continue;
        }
        let (q0, q1) = geo.q_range(qb);
        let nq = q1 - q0;
        for head in c * geo.g..(c + 1) * geo.g {
            block_grads(geo, sv, (r, c, head), (q0, q1), (k0, k1), &mut p, &mut ds);
            let row = geo.q_row(r, head, q0);
            // dv += Pᵀ dout, dk += scale · dSᵀ q.
            let pt = Mat::rows_t(&p, 0, nk);
            matmul(
                &mut dv,
                (nk, d, nq),
                pt,
                Mat::rows(sv.dout, row, d),
                1.0,
                true,
            );
            let dst = Mat::rows_t(&ds, 0, nk);
            matmul(
                &mut dk,
                (nk, d, nq),
                dst,
                Mat::rows(sv.x.q, row, d),
                geo.scale,
                true,
            );
        }
    }
    (dk, dv)
}

/// `dq [G, nq, D]` of one (row, kv head, query block).
fn dq_task(geo: &Geometry, sv: Saved, (r, c, qb): (usize, usize, usize)) -> Vec<f32> {
    let d = geo.d;
    let (q0, q1) = geo.q_range(qb);
    let nq = q1 - q0;
    let mut dq = vec![0f32; geo.g * nq * d];
    let (mut p, mut ds) = (vec![0f32; nq * BLOCK_K], vec![0f32; nq * BLOCK_K]);
    for kb in 0..geo.k_blocks() {
        if !geo.blocks_meet(r, qb, kb) {
            continue;
        }
        let (k0, k1) = geo.k_range(kb);
        for gi in 0..geo.g {
            block_grads(
                geo,
                sv,
                (r, c, c * geo.g + gi),
                (q0, q1),
                (k0, k1),
                &mut p,
                &mut ds,
            );
            // dq += scale · dS k.
            let dst = &mut dq[gi * nq * d..(gi + 1) * nq * d];
            let kmat = Mat::rows(sv.x.k, geo.k_row(r, c, k0), d);
            matmul(
                dst,
                (nq, d, k1 - k0),
                Mat::rows(&ds, 0, k1 - k0),
                kmat,
                geo.scale,
                true,
            );
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
        let x = Inputs {
            q: cpu::read(&q),
            k: cpu::read(&k),
            v: cpu::read(&v),
        };
        let parts = tasks(&geo, geo.q_blocks());
        let (outs, lses): (Vec<_>, Vec<_>) =
            parts.par_iter().map(|&t| forward_task(&geo, x, t)).unzip();
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
        let d = geo.d.max(1);
        let delta: Vec<f32> = cpu::read(&out)
            .par_chunks(d)
            .zip(cpu::read(&dout).par_chunks(d))
            .map(|(o, g)| cpu::dot_f32(o, g))
            .collect();
        let sv = Saved {
            x: Inputs {
                q: cpu::read(&q),
                k: cpu::read(&k),
                v: cpu::read(&v),
            },
            dout: cpu::read(&dout),
            lse: cpu::read(&lse),
            delta: &delta,
        };
        let kparts = tasks(&geo, geo.k_blocks());
        let (dks, dvs): (Vec<_>, Vec<_>) =
            kparts.par_iter().map(|&t| dkv_task(&geo, sv, t)).unzip();
        // Key-block results are already in [B, HKV, K, D] order: (row, kv head, block) major.
        let (dk, dv): (Vec<f32>, Vec<f32>) = (dks.concat(), dvs.concat());
        let qparts = tasks(&geo, geo.q_blocks());
        let dqs: Vec<_> = qparts.par_iter().map(|&t| dq_task(&geo, sv, t)).collect();
        let dq = scatter_q(&geo, &qparts, &dqs, geo.d);
        let (b, h, s, d, hkv, kl) = (geo.b, geo.h, geo.s, geo.d, geo.hkv, geo.kl);
        (
            cpu::cast_back(cpu::from_f32(dq, [b, h, s, d]), qt),
            cpu::cast_back(cpu::from_f32(dk, [b, hkv, kl, d]), kt),
            cpu::cast_back(cpu::from_f32(dv, [b, hkv, kl, d]), vt),
        )
    }
}

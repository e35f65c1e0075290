// decode_attention.wgsl — one decoding step of grouped-query attention over a preallocated cache.
//
// For queries q [B, H, D] (one token per row, RoPE applied), a key/value cache k, v
// [B, HKV, C, D] (keys after RoPE) and the query positions pos [B], computes
//   out[b, h, :] = Σ_j softmax_j(scale · q[b, h] · k[b, h / G, j]) · v[b, h / G, j]
// over the visible keys j: j ≤ pos[b] (causal; the cache holds the row's tokens at columns
// 0..=pos) and, with a sliding window W > 0, j > pos[b] − W (Mistral). G = H / HKV query heads
// share a kv head (query head h reads kv head h / G, as transformers' repeat_kv).
// Algorithm: one workgroup of 128 per (row, kv head), so the G heads of a group read each key and
// value once. The visible keys are walked in tiles of 128: each invocation scores one key for all
// G heads into shared memory, one invocation per head updates its online softmax (running max m,
// sum l; the accumulators are rescaled by exp(m_old − m_new)), then invocation i accumulates the
// (head, dim) pairs i, i + 128, … of Σ p_j v_j. Only keys in [lo, hi] are read, so the work per
// row follows its own length, not the cache's capacity.
// Shapes and settings are compile-time constants (a run decodes with fixed shapes, so one kernel
// is compiled per run and a launch uploads nothing): B {{ b }}, H {{ h }}, HKV {{ hkv }},
// C {{ c }}, D {{ d }}, window {{ window }} (0 = none), scale {{ scale }}. G · D ≤ 1024.
// Element type: {{ elem }} (f32 or f16, the `enable f16;` directive then put first by
// src/kernels/common.rs; scores and accumulation are always f32).
//
// Bindings (group 0):
//   0 q    {{ elem }} [B * H * D]        read
//   1 k    {{ elem }} [B * HKV * C * D]  read
//   2 v    {{ elem }} [B * HKV * C * D]  read
//   3 pos  i32        [B]                read
//   4 out  {{ elem }} [B * H * D]        write
// Dispatch: workgroups (x, y, 1) with x * y ≥ B * HKV (group = x + y * num_workgroups.x).

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> pos: array<i32>;
@group(0) @binding(4) var<storage, read_write> out: array<{{ elem }}>;

const B: u32 = {{ b }}u;
const H: u32 = {{ h }}u;
const HKV: u32 = {{ hkv }}u;
const C: u32 = {{ c }}u;
const D: u32 = {{ d }}u;
const WINDOW: i32 = {{ window }};
const SCALE: f32 = {{ scale }};
const G: u32 = H / HKV;
const WG: u32 = 128u;
const TILE: u32 = 128u;
// Accumulator slots per invocation: G · D ≤ WG · PER.
const PER: u32 = 8u;
// Stand-in for −inf that keeps exp() arguments finite.
const LOWEST: f32 = -3.4028235e38;

var<workgroup> qs: array<f32, 1024>;
// [G][TILE] scores, then probabilities, of the current tile.
var<workgroup> sc: array<f32, 1024>;
var<workgroup> run_m: array<f32, 8>;
var<workgroup> run_l: array<f32, 8>;
var<workgroup> corr: array<f32, 8>;
var<workgroup> sh_lo: u32;
var<workgroup> sh_hi: u32;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let group = wid.x + wid.y * groups.x;
    if (group >= B * HKV) {
        return;
    }
    let b = group / HKV;
    let kvh = group % HKV;
    if (lid == 0u) {
        let p = clamp(pos[b], 0, i32(C) - 1);
        var lo = 0;
        if (WINDOW > 0) {
            lo = max(0, p - WINDOW + 1);
        }
        sh_lo = u32(lo);
        sh_hi = u32(p);
    }
    if (lid < G) {
        run_m[lid] = LOWEST;
        run_l[lid] = 0.0;
    }
    // The G heads of this kv head are consecutive in q.
    let qbase = (b * H + kvh * G) * D;
    for (var i = lid; i < G * D; i += WG) {
        qs[i] = f32(q[qbase + i]);
    }
    // Loaded through workgroupUniformLoad so the tile loop (with barriers) is uniform.
    let lo = workgroupUniformLoad(&sh_lo);
    let hi = workgroupUniformLoad(&sh_hi);
    let kvbase = (b * HKV + kvh) * C * D;
    var acc: array<f32, 8>;
    for (var e = 0u; e < PER; e++) {
        acc[e] = 0.0;
    }
    for (var t0 = lo; t0 <= hi; t0 += TILE) {
        let n = min(TILE, hi - t0 + 1u);
        // Scores of key t0 + lid for every head of the group: the key is read once.
        var dots: array<f32, 8>;
        for (var h = 0u; h < G; h++) {
            dots[h] = 0.0;
        }
        if (lid < n) {
            let kb = kvbase + (t0 + lid) * D;
            for (var dd = 0u; dd < D; dd++) {
                let kv = f32(k[kb + dd]);
                for (var h = 0u; h < G; h++) {
                    dots[h] += qs[h * D + dd] * kv;
                }
            }
        }
        for (var h = 0u; h < G; h++) {
            sc[h * TILE + lid] = select(LOWEST, dots[h] * SCALE, lid < n);
        }
        workgroupBarrier();
        // Online softmax: one invocation per head turns its scores into probabilities relative
        // to the new running max, and rescales the running sum.
        if (lid < G) {
            let row = lid * TILE;
            var tile_max = LOWEST;
            for (var i = 0u; i < n; i++) {
                tile_max = max(tile_max, sc[row + i]);
            }
            let m_new = max(run_m[lid], tile_max);
            let c = exp(run_m[lid] - m_new);
            var s = 0.0;
            for (var i = 0u; i < n; i++) {
                let p = exp(sc[row + i] - m_new);
                sc[row + i] = p;
                s += p;
            }
            run_l[lid] = run_l[lid] * c + s;
            run_m[lid] = m_new;
            corr[lid] = c;
        }
        workgroupBarrier();
        // Σ p_j v_j for the (head, dim) pairs this invocation owns; v rows are read coalesced.
        for (var e = 0u; e < PER; e++) {
            let idx = lid + e * WG;
            if (idx < G * D) {
                let h = idx / D;
                let dd = idx % D;
                var a = acc[e] * corr[h];
                for (var i = 0u; i < n; i++) {
                    a += sc[h * TILE + i] * f32(v[kvbase + (t0 + i) * D + dd]);
                }
                acc[e] = a;
            }
        }
        workgroupBarrier();
    }
    for (var e = 0u; e < PER; e++) {
        let idx = lid + e * WG;
        if (idx < G * D) {
            let h = idx / D;
            let l = run_l[h];
            out[qbase + idx] = {{ elem }}(select(0.0, acc[e] / l, l > 0.0));
        }
    }
}

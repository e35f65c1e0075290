// flash_attention_fwd.wgsl — attention forward over position-masked keys without a scores
// matrix: the output and the row log-sum-exp the backward recomputes from.
//
// For q [B, H, S, D], k, v [B, HKV, K, D], query positions qpos [B, S] and key positions kpos
// [B, K] (i32; negative = padding), query i of row r sees key j iff qpos[r, i] ≥ 0,
// kpos[r, j] ≥ 0, kpos[r, j] ≤ qpos[r, i] and (window = 0 or qpos − kpos < window). With
// s = scale · q · k (f32):
//   lse[b, h, i] = ln Σ_visible exp(s),  out[b, h, i] = Σ_visible exp(s − lse) · v
// and out = 0, lse = 0 for a query that sees no key. Query head h reads kv head h / G.
// Algorithm: one workgroup per (row, kv head, tile of TQ = WG / G query positions) holding the
// G · TQ queries of the G heads that share the kv head, one query per invocation (its q, running
// max, sum and output accumulator in registers). Keys and values are walked in tiles of TK,
// staged in workgroup memory in f32, so each is read once for the G heads; a tile is skipped,
// by a workgroup-uniform test on the positions, when no key of it can be visible to any query
// of the workgroup (causal tiles past the last query, tiles left of the window, padding). The
// softmax is online: per tile the running max moves once and the accumulator is rescaled once.
// Rows of D are held as D4 = D / 4 vec4s, and the per-key work over them is unrolled by
// src/kernels/flash_wgsl.rs into the template values dot_qk (q · key j), rescale (acc *= c) and
// add_pv (acc += p · value j): lavapipe stops every loop of an invocation once the invocation
// has run 65535 loop iterations in all (gallivm's loop limiter), so no loop may run per key.
// Compile-time: D {{ d }} (a multiple of 4), G {{ g }}, workgroup WG {{ wg }} (G ≤ WG), key tile
// TK {{ tk }} (TK ≤ WG; ks and vs take 2 · TK · D f32 of workgroup memory). Element type {{ elem }}
// (f32 or f16, the `enable f16;` directive then put first by src/kernels/common.rs); scores,
// softmax and accumulation in f32.
//
// Bindings (group 0):
//   0 q     {{ elem }} [B * H * S * D]    read
//   1 k     {{ elem }} [B * HKV * K * D]  read
//   2 v     {{ elem }} [B * HKV * K * D]  read
//   3 qpos  i32        [B * S]            read
//   4 kpos  i32        [B * K]            read
//   5 out   {{ elem }} [B * H * S * D]    write
//   6 lse   f32        [B * H * S]        write
//   7 info  u32        [6]                read: B, HKV, S, K, window, bits of scale
// Dispatch: workgroups (x, y, 1) with x * y ≥ B * HKV * ceil(S / TQ) (group = x + y * num_workgroups.x).

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> qpos: array<i32>;
@group(0) @binding(4) var<storage, read_write> kpos: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<{{ elem }}>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
@group(0) @binding(7) var<storage, read_write> info: array<u32>;

const D: u32 = {{ d }}u;
const G: u32 = {{ g }}u;
const WG: u32 = {{ wg }}u;
const TK: u32 = {{ tk }}u;
const D4: u32 = D / 4u;
// Query positions per workgroup (each for the G heads).
const TQ: u32 = WG / G;
// Stand-in for −inf that keeps exp() arguments finite.
const LOWEST: f32 = -3.4028235e38;

var<workgroup> ks: array<vec4<f32>, TK * D4>;
var<workgroup> vs: array<vec4<f32>, TK * D4>;
var<workgroup> kp: array<i32, TK>;
var<workgroup> dims: array<u32, 6>;
var<workgroup> q_lo: atomic<i32>;
var<workgroup> q_hi: atomic<i32>;
var<workgroup> lo_s: i32;
var<workgroup> hi_s: i32;
var<workgroup> live: u32;

fn visible(qp: i32, p: i32, window: i32) -> bool {
    return qp >= 0 && p >= 0 && p <= qp && (window == 0 || qp - p < window);
}

@compute @workgroup_size({{ wg }})
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // The shape goes through workgroup memory so that the loops holding barriers are uniform
    // (naga treats a storage read as non-uniform).
    if (lid < 6u) {
        dims[lid] = info[lid];
    }
    if (lid == 0u) {
        atomicStore(&q_lo, 2147483647);
        atomicStore(&q_hi, -1);
    }
    let nb = workgroupUniformLoad(&dims[0]);
    let hkv = workgroupUniformLoad(&dims[1]);
    let s = workgroupUniformLoad(&dims[2]);
    let nk = workgroupUniformLoad(&dims[3]);
    let window = i32(workgroupUniformLoad(&dims[4]));
    let scale = bitcast<f32>(workgroupUniformLoad(&dims[5]));
    let qtiles = (s + TQ - 1u) / TQ;
    let group = wid.x + wid.y * groups.x;
    if (group >= nb * hkv * qtiles) {
        return;
    }
    let b = group / (hkv * qtiles);
    let kvh = (group / qtiles) % hkv;
    let qi = (group % qtiles) * TQ + lid % TQ;
    let h = kvh * G + lid / TQ;
    let owned = lid < G * TQ && qi < s;
    let row = (b * hkv * G + h) * s + qi;

    var qv: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    var qp = -1;
    if (owned) {
        qp = qpos[b * s + qi];
        for (var i = 0u; i < D4; i++) {
            let at = row * D + 4u * i;
            qv[i] = vec4<f32>(f32(q[at]), f32(q[at + 1u]), f32(q[at + 2u]), f32(q[at + 3u])) * scale;
            acc[i] = vec4<f32>(0.0);
        }
    }
    if (qp >= 0) {
        atomicMin(&q_lo, qp);
        atomicMax(&q_hi, qp);
    }
    workgroupBarrier();
    if (lid == 0u) {
        lo_s = atomicLoad(&q_lo);
        hi_s = atomicLoad(&q_hi);
    }
    // The workgroup's query positions span [lo, hi] (hi < 0: none is a query).
    let lo = workgroupUniformLoad(&lo_s);
    let hi = workgroupUniformLoad(&hi_s);

    var m = LOWEST;
    var l = 0.0;
    let kbase = (b * hkv + kvh) * nk;
    for (var t0 = 0u; hi >= 0 && t0 < nk; t0 += TK) {
        let n = min(TK, nk - t0);
        if (lid < TK) {
            var p = -1;
            if (lid < n) {
                p = kpos[b * nk + t0 + lid];
            }
            kp[lid] = p;
        }
        workgroupBarrier();
        // Whether some key of the tile can be visible to some query in [lo, hi].
        if (lid == 0u) {
            var found = 0u;
            for (var j = 0u; j < n; j++) {
                let p = kp[j];
                if (p >= 0 && p <= hi && (window == 0 || lo - p < window)) {
                    found = 1u;
                }
            }
            live = found;
        }
        if (workgroupUniformLoad(&live) == 0u) {
            continue;
        }
        for (var e = lid; e < n * D4; e += WG) {
            let at = (kbase + t0) * D + 4u * e;
            // A padding key's row is zeroed: whatever it holds (a cache slot never written)
            // must not reach the sums it is masked out of.
            let real = kp[e / D4] >= 0;
            let kr = vec4<f32>(f32(k[at]), f32(k[at + 1u]), f32(k[at + 2u]), f32(k[at + 3u]));
            let vr = vec4<f32>(f32(v[at]), f32(v[at + 1u]), f32(v[at + 2u]), f32(v[at + 3u]));
            ks[e] = select(vec4<f32>(0.0), kr, real);
            vs[e] = select(vec4<f32>(0.0), vr, real);
        }
        workgroupBarrier();
        // Branch-free over the tile (masked keys weigh 0): every invocation reads the same key
        // at the same time, which a SIMD device (lavapipe included) serves as one broadcast load.
        var sc: array<f32, TK>;
        var mt = LOWEST;
        for (var j = 0u; j < n; j++) {
            let kb = j * D4;
            let dot = {{ dot_qk }};
            let seen = visible(qp, kp[j], window);
            sc[j] = select(LOWEST, dot, seen);
            mt = select(mt, max(mt, dot), seen);
        }
        // mt > LOWEST: the query sees a key of the tile.
        let m_new = max(m, mt);
        let c = exp(m - m_new);
        l *= c;
        {{ rescale }}
        for (var j = 0u; j < n; j++) {
            let kb = j * D4;
            let p = select(0.0, exp(sc[j] - m_new), sc[j] > LOWEST);
            l += p;
            {{ add_pv }}
        }
        m = m_new;
        // The next tile overwrites kp, ks and vs.
        workgroupBarrier();
    }
    if (owned) {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var i = 0u; i < D4; i++) {
            let o = acc[i] * inv;
            let at = row * D + 4u * i;
            out[at] = {{ elem }}(o.x);
            out[at + 1u] = {{ elem }}(o.y);
            out[at + 2u] = {{ elem }}(o.z);
            out[at + 3u] = {{ elem }}(o.w);
        }
        lse[row] = select(0.0, m + log(l), l > 0.0);
    }
}

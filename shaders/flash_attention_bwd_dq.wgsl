// flash_attention_bwd_dq.wgsl — the query half of flash attention's backward: dq, and the
// per-query Δ the key half (flash_attention_bwd_dkdv.wgsl) reads.
//
// With the forward's masks and shapes (see flash_attention_fwd.wgsl), its out and lse, and the
// upstream gradient dout [B, H, S, D], for query i of head h:
//   Δ_i = Σ_d dout_i · out_i,  P_ij = exp(scale · q_i · k_j − lse_i) on visible pairs (0 elsewhere),
//   dS_ij = P_ij · (dout_i · v_j − Δ_i),  dq_i = scale · Σ_j dS_ij · k_j.
// Nothing [S, K] is stored: P is recomputed from lse one key tile at a time.
// Algorithm: as the forward — one workgroup per (row, kv head, tile of TQ = WG / G query
// positions), one query per invocation (q, dout and the dq accumulator in registers), key and
// value tiles of TK staged in workgroup memory once for the G heads, tiles no query of the
// workgroup can see skipped by a workgroup-uniform test on the positions.
// Compile-time: D {{ d }} (a multiple of 4), G {{ g }}, workgroup WG {{ wg }} (G ≤ WG), key tile TK {{ tk }}
// (TK ≤ WG). Element type {{ elem }} (q, k, v, out, dout and dq; arithmetic in f32).
//
// Bindings (group 0):
//   0 q     {{ elem }} [B * H * S * D]    read
//   1 k     {{ elem }} [B * HKV * K * D]  read
//   2 v     {{ elem }} [B * HKV * K * D]  read
//   3 out   {{ elem }} [B * H * S * D]    read
//   4 dout  {{ elem }} [B * H * S * D]    read
//   5 lse   f32        [B * H * S]        read
//   6 qpos  i32        [B * S]            read
//   7 kpos  i32        [B * K]            read
//   8 dq    {{ elem }} [B * H * S * D]    write
//   9 delta f32        [B * H * S]        write: Δ
//  10 info  u32        [6]                read: B, HKV, S, K, window, bits of scale
// Dispatch: workgroups (x, y, 1) with x * y ≥ B * HKV * ceil(S / TQ) (group = x + y * num_workgroups.x).

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> out: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> dout: array<{{ elem }}>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> qpos: array<i32>;
@group(0) @binding(7) var<storage, read_write> kpos: array<i32>;
@group(0) @binding(8) var<storage, read_write> dq: array<{{ elem }}>;
@group(0) @binding(9) var<storage, read_write> delta: array<f32>;
@group(0) @binding(10) var<storage, read_write> info: array<u32>;

const D: u32 = {{ d }}u;
const G: u32 = {{ g }}u;
const WG: u32 = {{ wg }}u;
const TK: u32 = {{ tk }}u;
const D4: u32 = D / 4u;
// Query positions per workgroup (each for the G heads).
const TQ: u32 = WG / G;

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
    // The shape goes through workgroup memory so that the loops holding barriers are uniform.
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

    // q pre-scaled, so q · k is the score; the row's dout and Δ.
    var qv: array<vec4<f32>, D4>;
    var dov: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    var qp = -1;
    var dl = 0.0;
    var ls = 0.0;
    if (owned) {
        qp = qpos[b * s + qi];
        ls = lse[row];
        for (var i = 0u; i < D4; i++) {
            let at = row * D + 4u * i;
            qv[i] = vec4<f32>(f32(q[at]), f32(q[at + 1u]), f32(q[at + 2u]), f32(q[at + 3u])) * scale;
            dov[i] = vec4<f32>(f32(dout[at]), f32(dout[at + 1u]), f32(dout[at + 2u]), f32(dout[at + 3u]));
            let o = vec4<f32>(f32(out[at]), f32(out[at + 1u]), f32(out[at + 2u]), f32(out[at + 3u]));
            dl += dot(dov[i], o);
            acc[i] = vec4<f32>(0.0);
        }
        delta[row] = dl;
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
    let lo = workgroupUniformLoad(&lo_s);
    let hi = workgroupUniformLoad(&hi_s);

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
        for (var j = 0u; j < n; j++) {
            let kb = j * D4;
            let sc = {{ dot_qk }};
            let dp = {{ dot_dv }};
            let ds = select(0.0, exp(sc - ls) * (dp - dl), visible(qp, kp[j], window));
            {{ add_dsk }}
        }
        // The next tile overwrites kp, ks and vs.
        workgroupBarrier();
    }
    if (owned) {
        for (var i = 0u; i < D4; i++) {
            let o = acc[i] * scale;
            let at = row * D + 4u * i;
            dq[at] = {{ elem }}(o.x);
            dq[at + 1u] = {{ elem }}(o.y);
            dq[at + 2u] = {{ elem }}(o.z);
            dq[at + 3u] = {{ elem }}(o.w);
        }
    }
}

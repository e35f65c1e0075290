// flash_attention_bwd_dkdv.wgsl — the key half of flash attention's backward: dk and dv, summed
// over the G query heads that share a kv head, without atomics.
//
// With the forward's masks and shapes (see flash_attention_fwd.wgsl), its lse, the upstream
// gradient dout and Δ from flash_attention_bwd_dq.wgsl (launched first), for key j of kv head c:
//   P_ij = exp(scale · q_i · k_j − lse_i) on visible pairs, dS_ij = P_ij · (dout_i · v_j − Δ_i),
//   dv_j = Σ_{h in c's group} Σ_i P_ij · dout_i,  dk_j = scale · Σ_h Σ_i dS_ij · q_i.
// Nothing [S, K] is stored: P is recomputed from lse one query tile at a time.
// Algorithm: one workgroup per (row, kv head, tile of WG keys), one key per invocation (its k, v
// and both accumulators in registers), so every dk and dv element has one writer. For each of
// the G heads the queries are walked in tiles of TQ = TK: q, dout, lse, Δ and the positions are
// staged in workgroup memory (f32); a tile none of whose queries can see any key of the
// workgroup is skipped by a workgroup-uniform test on the positions. Rows are D4 = D / 4 vec4s
// and the per-query work is unrolled by src/kernels/flash_wgsl.rs into dot_qk (query i · k),
// dot_dv (dout_i · v), add_pdo (dv += P · dout_i) and add_dsq (dk += dS · q_i): lavapipe's loop
// limiter (65535 loop iterations per invocation in all, see flash_attention_fwd.wgsl) forbids a
// loop per query.
// Compile-time: D {{ d }} (a multiple of 4), G {{ g }}, workgroup WG {{ wg }}, query tile TK {{ tk }} (TK ≤ WG;
// qs and dos take 2 · TK · D f32 of workgroup memory). Element type {{ elem }} (q, k, v, dout,
// dk, dv; arithmetic in f32).
//
// Bindings (group 0):
//   0 q     {{ elem }} [B * H * S * D]    read
//   1 k     {{ elem }} [B * HKV * K * D]  read
//   2 v     {{ elem }} [B * HKV * K * D]  read
//   3 dout  {{ elem }} [B * H * S * D]    read
//   4 lse   f32        [B * H * S]        read
//   5 delta f32        [B * H * S]        read: Δ
//   6 qpos  i32        [B * S]            read
//   7 kpos  i32        [B * K]            read
//   8 dk    {{ elem }} [B * HKV * K * D]  write
//   9 dv    {{ elem }} [B * HKV * K * D]  write
//  10 info  u32        [6]                read: B, HKV, S, K, window, bits of scale
// Dispatch: workgroups (x, y, 1) with x * y ≥ B * HKV * ceil(K / WG) (group = x + y * num_workgroups.x).

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> dout: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> qpos: array<i32>;
@group(0) @binding(7) var<storage, read_write> kpos: array<i32>;
@group(0) @binding(8) var<storage, read_write> dk: array<{{ elem }}>;
@group(0) @binding(9) var<storage, read_write> dv: array<{{ elem }}>;
@group(0) @binding(10) var<storage, read_write> info: array<u32>;

const D: u32 = {{ d }}u;
const G: u32 = {{ g }}u;
const WG: u32 = {{ wg }}u;
const TQ: u32 = {{ tk }}u;
const D4: u32 = D / 4u;

var<workgroup> qs: array<vec4<f32>, TQ * D4>;
var<workgroup> dos: array<vec4<f32>, TQ * D4>;
var<workgroup> qp: array<i32, TQ>;
var<workgroup> ls: array<f32, TQ>;
var<workgroup> dl: array<f32, TQ>;
var<workgroup> dims: array<u32, 6>;
var<workgroup> k_lo: atomic<i32>;
var<workgroup> k_hi: atomic<i32>;
var<workgroup> lo_s: i32;
var<workgroup> hi_s: i32;
var<workgroup> live: u32;

fn visible(p: i32, kp: i32, window: i32) -> bool {
    return p >= 0 && kp >= 0 && kp <= p && (window == 0 || p - kp < window);
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
        atomicStore(&k_lo, 2147483647);
        atomicStore(&k_hi, -1);
    }
    let nb = workgroupUniformLoad(&dims[0]);
    let hkv = workgroupUniformLoad(&dims[1]);
    let s = workgroupUniformLoad(&dims[2]);
    let nk = workgroupUniformLoad(&dims[3]);
    let window = i32(workgroupUniformLoad(&dims[4]));
    let scale = bitcast<f32>(workgroupUniformLoad(&dims[5]));
    let ktiles = (nk + WG - 1u) / WG;
    let group = wid.x + wid.y * groups.x;
    if (group >= nb * hkv * ktiles) {
        return;
    }
    let b = group / (hkv * ktiles);
    let kvh = (group / ktiles) % hkv;
    let j = (group % ktiles) * WG + lid;
    let owned = j < nk;
    let krow = (b * hkv + kvh) * nk + j;

    var kv: array<vec4<f32>, D4>;
    var vv: array<vec4<f32>, D4>;
    var dka: array<vec4<f32>, D4>;
    var dva: array<vec4<f32>, D4>;
    var kp = -1;
    if (owned) {
        kp = kpos[b * nk + j];
        for (var i = 0u; i < D4; i++) {
            let at = krow * D + 4u * i;
            // k pre-scaled, so q · k is the score.
            // A padding key's own rows are zeroed (its gradients are 0 whatever it holds).
            let real = kp >= 0;
            let kr = vec4<f32>(f32(k[at]), f32(k[at + 1u]), f32(k[at + 2u]), f32(k[at + 3u])) * scale;
            let vr = vec4<f32>(f32(v[at]), f32(v[at + 1u]), f32(v[at + 2u]), f32(v[at + 3u]));
            kv[i] = select(vec4<f32>(0.0), kr, real);
            vv[i] = select(vec4<f32>(0.0), vr, real);
            dka[i] = vec4<f32>(0.0);
            dva[i] = vec4<f32>(0.0);
        }
    }
    if (kp >= 0) {
        atomicMin(&k_lo, kp);
        atomicMax(&k_hi, kp);
    }
    workgroupBarrier();
    if (lid == 0u) {
        lo_s = atomicLoad(&k_lo);
        hi_s = atomicLoad(&k_hi);
    }
    // The workgroup's key positions span [lo, hi] (hi < 0: every key is padding).
    let lo = workgroupUniformLoad(&lo_s);
    let hi = workgroupUniformLoad(&hi_s);

    for (var gh = 0u; gh < G; gh++) {
        let hrow = (b * hkv * G + kvh * G + gh) * s;
        for (var t0 = 0u; hi >= 0 && t0 < s; t0 += TQ) {
            let n = min(TQ, s - t0);
            if (lid < TQ) {
                var p = -1;
                if (lid < n) {
                    p = qpos[b * s + t0 + lid];
                }
                qp[lid] = p;
            }
            workgroupBarrier();
            // Whether some query of the tile can see some key in [lo, hi].
            if (lid == 0u) {
                var found = 0u;
                for (var i = 0u; i < n; i++) {
                    let p = qp[i];
                    if (p >= 0 && p >= lo && (window == 0 || p - hi < window)) {
                        found = 1u;
                    }
                }
                live = found;
            }
            if (workgroupUniformLoad(&live) == 0u) {
                continue;
            }
            for (var e = lid; e < n * D4; e += WG) {
                let at = (hrow + t0) * D + 4u * e;
                // A padding query's rows are zeroed: whatever they hold must not reach the sums
                // it is masked out of.
                let real = qp[e / D4] >= 0;
                let qr = vec4<f32>(f32(q[at]), f32(q[at + 1u]), f32(q[at + 2u]), f32(q[at + 3u]));
                let dr = vec4<f32>(f32(dout[at]), f32(dout[at + 1u]), f32(dout[at + 2u]), f32(dout[at + 3u]));
                qs[e] = select(vec4<f32>(0.0), qr, real);
                dos[e] = select(vec4<f32>(0.0), dr, real);
            }
            if (lid < n) {
                let real = qp[lid] >= 0;
                ls[lid] = select(0.0, lse[hrow + t0 + lid], real);
                dl[lid] = select(0.0, delta[hrow + t0 + lid], real);
            }
            workgroupBarrier();
            // Branch-free over the tile (masked queries weigh 0): every invocation reads the same
            // query at the same time, which a SIMD device (lavapipe included) serves as one
            // broadcast load.
            for (var i = 0u; i < n; i++) {
                let ib = i * D4;
                let sc = {{ dot_qk }};
                let dp = {{ dot_dv }};
                let p = select(0.0, exp(sc - ls[i]), visible(qp[i], kp, window));
                let ds = p * (dp - dl[i]);
                {{ add_pdo }}
                {{ add_dsq }}
            }
            // The next tile overwrites the staged queries.
            workgroupBarrier();
        }
    }
    if (owned) {
        for (var i = 0u; i < D4; i++) {
            let at = krow * D + 4u * i;
            let a = dka[i] * scale;
            let c = dva[i];
            dk[at] = {{ elem }}(a.x);
            dk[at + 1u] = {{ elem }}(a.y);
            dk[at + 2u] = {{ elem }}(a.z);
            dk[at + 3u] = {{ elem }}(a.w);
            dv[at] = {{ elem }}(c.x);
            dv[at + 1u] = {{ elem }}(c.y);
            dv[at + 2u] = {{ elem }}(c.z);
            dv[at + 3u] = {{ elem }}(c.w);
        }
    }
}

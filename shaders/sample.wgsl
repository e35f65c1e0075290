// sample.wgsl — sort-free fused sampler: one token per row of logits.
//
// For logits [B, V] and per-row parameters it draws token ~ softmax(logits / T) restricted to the
// tokens that survive top-k, then top-p (nucleus, on the top-k renormalised mass), then min-p —
// the order of Hugging Face's logits warpers — and greedy argmax when T = 0 (lowest index on ties).
// Also returns log softmax(logits)[token] of the unmodified (T = 1) distribution.
//
// Algorithm (one workgroup of 256 per row, no sort): every filter is a threshold τ on the scaled
// logit x = logit / T, since a token's probability is monotone in x:
//   min-p: τ = max(x) + ln(min_p) (exact);
//   top-k: the largest τ with #{x ≥ τ} ≥ k, by bisection on τ between min(x) and max(x);
//   top-p: the largest τ with mass{x ≥ τ} ≥ top_p · mass{x ≥ τ_k}, by bisection;
// each bisection step is one pass over the row plus a workgroup reduction. The draw is an inverse
// CDF in vocabulary order: invocation i owns a contiguous slice, a workgroup prefix scan of the
// slices' kept mass locates the slice holding u · W, and that invocation walks it.
// Randomness: u = pcg4d(seed_lo, seed_hi, request, step).x / 2^32 (Jarzynski & Olano 2020), a
// counter-based hash, so a row's draw depends only on its own (seed, request, step) and logits —
// never on the batch it is in.
//
// Bindings (group 0):
//   0 logits  f32 [B * V]  read
//   1 params  u32 [B * 8]  read: temperature (f32 bits), top_k (0 = off), top_p (f32 bits),
//                                min_p (f32 bits), seed_lo, seed_hi, request, step
//   2 out     f32 [B * 2]  write: token id (as f32, exact below 2^24), log-prob
//   3 tokens  i32 [B]      write: token id (the next decode step's input, read there on the device)
// B {{ b }} and V {{ v }} are compile-time constants (a decode run samples with fixed shapes, so
// one kernel is compiled per run and a launch uploads nothing).
// Dispatch: workgroups (x, y, 1) with x * y ≥ B (row = x + y * num_workgroups.x).
// Uses prelude.wgsl (online_add, reduce_sum, reduce_min, reduce_max_sum, LOWEST, and its scratch
// red_a, red_b, res_f for the prefix scan).

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> params: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<i32>;

const B: u32 = {{ b }}u;
const V: u32 = {{ v }}u;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
const BISECT_STEPS: u32 = 40u;

var<workgroup> red_i: array<u32, 256>;
var<workgroup> res_u: u32;
var<workgroup> sh_b: u32;
var<workgroup> sh_v: u32;
var<workgroup> sh_p: array<u32, 8>;
var<workgroup> chosen: atomic<u32>;
var<workgroup> last_kept: atomic<u32>;

fn pcg4d(seed: vec4<u32>) -> vec4<u32> {
    var v = seed * 1664525u + 1013904223u;
    v.x += v.y * v.w; v.y += v.z * v.x; v.z += v.x * v.y; v.w += v.y * v.z;
    v = v ^ (v >> vec4<u32>(16u));
    v.x += v.y * v.w; v.y += v.z * v.x; v.z += v.x * v.y; v.w += v.y * v.z;
    return v;
}

// Index of the largest value, lowest index on ties; called from uniform control flow, as the
// prelude's reductions, and its result is uniform.
fn reduce_argmax(x: f32, idx: u32, lid: u32) -> u32 {
    red_a[lid] = x;
    red_i[lid] = idx;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if (lid < k) {
            let a = red_a[lid];
            let b = red_a[lid + k];
            if (b > a || (b == a && red_i[lid + k] < red_i[lid])) {
                red_a[lid] = b;
                red_i[lid] = red_i[lid + k];
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) { res_u = red_i[0]; }
    return workgroupUniformLoad(&res_u);
}

// Number of scaled logits ≥ t in the row.
fn count_at_least(base: u32, v: u32, inv_t: f32, t: f32, lid: u32) -> f32 {
    var c = 0.0;
    for (var i = lid; i < v; i += WG) {
        if (logits[base + i] * inv_t >= t) { c += 1.0; }
    }
    return reduce_sum(c, lid);
}

// Σ exp(x − m) over scaled logits x ≥ t.
fn mass_at_least(base: u32, v: u32, inv_t: f32, m: f32, t: f32, lid: u32) -> f32 {
    var s = 0.0;
    for (var i = lid; i < v; i += WG) {
        let x = logits[base + i] * inv_t;
        if (x >= t) { s += exp(x - m); }
    }
    return reduce_sum(s, lid);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row_guess = wid.x + wid.y * groups.x;
    if (lid == 0u) {
        sh_b = B;
        sh_v = V;
        atomicStore(&chosen, NONE);
        atomicStore(&last_kept, 0u);
    }
    if (lid < 8u && row_guess < B) {
        sh_p[lid] = params[row_guess * 8u + lid];
    }
    let b = workgroupUniformLoad(&sh_b);
    let v = workgroupUniformLoad(&sh_v);
    let row = wid.x + wid.y * groups.x;
    if (row >= b) {
        return;
    }
    let temperature = bitcast<f32>(workgroupUniformLoad(&sh_p[0]));
    let top_k = workgroupUniformLoad(&sh_p[1]);
    let top_p = bitcast<f32>(workgroupUniformLoad(&sh_p[2]));
    let min_p = bitcast<f32>(workgroupUniformLoad(&sh_p[3]));
    let base = row * v;

    // Log-sum-exp of the raw logits, for the returned log-prob.
    var m = LOWEST;
    var s = 0.0;
    for (var i = lid; i < v; i += WG) {
        let x = logits[base + i];
        online_add(&m, &s, x);
    }
    let ms = reduce_max_sum(m, s, lid);
    let lse = ms.x + log(ms.y);

    var token = 0u;
    if (temperature <= 0.0) {
        var best = LOWEST;
        var best_i = NONE;
        for (var i = lid; i < v; i += WG) {
            let x = logits[base + i];
            if (x > best || best_i == NONE) { best = x; best_i = i; }
        }
        token = reduce_argmax(best, best_i, lid);
    } else {
        let inv_t = 1.0 / temperature;
        let mx = ms.x * inv_t;
        var tau = LOWEST;
        if (min_p > 0.0) {
            tau = mx + log(min_p);
        }
        var tau_k = LOWEST;
        if (top_k > 0u && top_k < v) {
            let k = f32(top_k);
            var lo_local = mx;
            for (var i = lid; i < v; i += WG) {
                let x = logits[base + i] * inv_t;
                if (x > LOWEST) { lo_local = min(lo_local, x); }
            }
            var lo = reduce_min(lo_local, lid);
            var hi = mx;
            if (count_at_least(base, v, inv_t, hi, lid) >= k) {
                lo = hi;
            } else {
                for (var it = 0u; it < BISECT_STEPS; it++) {
                    let mid = lo + (hi - lo) * 0.5;
                    if (mid <= lo || mid >= hi) { break; }
                    if (count_at_least(base, v, inv_t, mid, lid) >= k) { lo = mid; } else { hi = mid; }
                }
            }
            tau_k = lo;
        }
        if (top_p < 1.0) {
            let goal = top_p * mass_at_least(base, v, inv_t, mx, tau_k, lid);
            var lo = tau_k;
            if (lo <= LOWEST) {
                var lo_local = mx;
                for (var i = lid; i < v; i += WG) {
                    let x = logits[base + i] * inv_t;
                    if (x > LOWEST) { lo_local = min(lo_local, x); }
                }
                lo = reduce_min(lo_local, lid);
            }
            var hi = mx;
            if (mass_at_least(base, v, inv_t, mx, hi, lid) >= goal) {
                lo = hi;
            } else {
                for (var it = 0u; it < BISECT_STEPS; it++) {
                    let mid = lo + (hi - lo) * 0.5;
                    if (mid <= lo || mid >= hi) { break; }
                    if (mass_at_least(base, v, inv_t, mx, mid, lid) >= goal) { lo = mid; } else { hi = mid; }
                }
            }
            tau = max(tau, lo);
        }
        tau = max(tau, tau_k);

        // Inverse CDF in vocabulary order over the kept tokens.
        let seg = (v + WG - 1u) / WG;
        let start = min(lid * seg, v);
        let end = min(start + seg, v);
        var part = 0.0;
        var last = NONE;
        for (var i = start; i < end; i++) {
            let x = logits[base + i] * inv_t;
            if (x >= tau) { part += exp(x - mx); last = i; }
        }
        // Hillis–Steele inclusive scan of the slice masses (ping-pong between red_a and red_b).
        red_a[lid] = part;
        workgroupBarrier();
        var from_a = true;
        for (var off = 1u; off < WG; off = off << 1u) {
            if (from_a) {
                var acc = red_a[lid];
                if (lid >= off) { acc += red_a[lid - off]; }
                red_b[lid] = acc;
            } else {
                var acc = red_b[lid];
                if (lid >= off) { acc += red_b[lid - off]; }
                red_a[lid] = acc;
            }
            from_a = !from_a;
            workgroupBarrier();
        }
        // 8 steps: the result is back in red_a.
        let incl = red_a[lid];
        var excl = 0.0;
        if (lid > 0u) { excl = red_a[lid - 1u]; }
        if (lid == 0u) { res_f = red_a[WG - 1u]; }
        let total = workgroupUniformLoad(&res_f);

        let seed = vec4<u32>(sh_p[4], sh_p[5], sh_p[6], sh_p[7]);
        let u = f32(pcg4d(seed).x >> 8u) * (1.0 / 16777216.0);
        let goal = u * total;
        if (last != NONE) {
            atomicMax(&last_kept, last + 1u);
            if (goal >= excl && goal < incl) {
                var acc = excl;
                var pick = last;
                for (var i = start; i < end; i++) {
                    let x = logits[base + i] * inv_t;
                    if (x >= tau) {
                        acc += exp(x - mx);
                        if (acc > goal) { pick = i; break; }
                    }
                }
                atomicMin(&chosen, pick);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var c = atomicLoad(&chosen);
            // Rounding can leave u · W at or past the scanned total: take the last kept token.
            if (c == NONE) { c = atomicLoad(&last_kept) - 1u; }
            res_u = c;
        }
        token = workgroupUniformLoad(&res_u);
    }
    if (lid == 0u) {
        out[row * 2u] = f32(token);
        out[row * 2u + 1u] = logits[base + token] - lse;
        tokens[row] = i32(token);
    }
}

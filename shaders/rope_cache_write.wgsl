// rope_cache_write.wgsl — the step between a decode step's fused q/k/v projection and attention.
//
// For the projection qkv [B, (H + 2·HKV) · D] of one token per row (q heads, then k heads, then v
// heads, as the fused weight concatenates them), its bias [(H + 2·HKV) · D] (zeros when the
// model has none), the rows' positions pos [B] and RoPE tables cos, sin [C, D] (cos over both
// halves, sin with its first half negated, so rotate_half(x)·sin_hf = swap_halves(x)·sin):
//   q[b, h, i]            = x_q[i] · cos[p, i] + x_q[i ± D/2] · sin[p, i]
//   k_cache[b, g, p, i]   = x_k[i] · cos[p, i] + x_k[i ± D/2] · sin[p, i]
//   v_cache[b, g, p, i]   = x_v[i]
// with x = qkv + bias and p = pos[b]. The caches are written in place at column p only; a row
// whose position is outside the cache (p < 0 or p ≥ C) writes nothing to them.
// With QK_NORM (Qwen3, Gemma 3) each q and k head is first RMS-normalised over its D values,
// x̂ = x / sqrt(mean(x²) + EPS) · w (w = qn for q heads, kn for k heads, the factor the model's
// norm multiplies by), and x̂ is rotated: the norm costs no launch of its own.
// This one launch replaces the bias add, two RoPE expressions (a flip each) and two scatters.
// Shapes are compile-time constants (fixed for a run): B {{ b }}, H {{ h }}, HKV {{ hkv }},
// C {{ c }}, D {{ d }} (even). Element type {{ elem }} (f32 or f16, the `enable f16;` directive then
// put first by src/kernels/common.rs; tables always f32; math in f32).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 qkv  {{ elem }} [B * (H + 2 HKV) * D]  read
//   1 bias {{ elem }} [(H + 2 HKV) * D]      read
//   2 pos  i32        [B]                    read
//   3 cos  f32        [C * D]                read
//   4 sin  f32        [C * D]                read
//   5 kc   {{ elem }} [B * HKV * C * D]      written at column pos[b]
//   6 vc   {{ elem }} [B * HKV * C * D]      written at column pos[b]
//   7 q    {{ elem }} [B * H * D]            write
//   8 qn   {{ elem }} [D]                    read (QK_NORM only)
//   9 kn   {{ elem }} [D]                    read (QK_NORM only)
// Dispatch without QK_NORM: one invocation per element of qkv, workgroups (x, y, 1) of {{ wg }}
// with x · y · {{ wg }} ≥ B · (H + 2 HKV) · D (index = global x + global y · x-extent). With
// QK_NORM: one workgroup of {{ wg }} per head of a row (B · (H + 2 HKV) workgroups, index = x + y ·
// x-extent), its invocations striding over the head's D values and meeting in shared memory for
// the sum of squares (the prelude's `reduce_sum`: this shader uses prelude.wgsl). QK_NORM
// {{ qk_norm }}, EPS {{ eps }}.

@group(0) @binding(0) var<storage, read_write> qkv: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> bias: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> cos_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> sin_t: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<{{ elem }}>;
@group(0) @binding(6) var<storage, read_write> vc: array<{{ elem }}>;
@group(0) @binding(7) var<storage, read_write> q: array<{{ elem }}>;
{{ norm_bindings }}

const B: u32 = {{ b }}u;
const H: u32 = {{ h }}u;
const HKV: u32 = {{ hkv }}u;
const C: u32 = {{ c }}u;
const D: u32 = {{ d }}u;
const HALF: u32 = D / 2u;
const ROW: u32 = (H + 2u * HKV) * D;
const WG: u32 = {{ wg }}u;
const QK_NORM: bool = {{ qk_norm }};
const EPS: f32 = {{ eps }};

@compute @workgroup_size({{ wg }})
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    if (QK_NORM) {
        normed_head(wid.x + wid.y * groups.x, lid.x);
        return;
    }
    let idx = gid.x + gid.y * groups.x * WG;
    if (idx >= B * ROW) {
        return;
    }
    let b = idx / ROW;
    let r = idx % ROW;
    let head = r / D;
    let i = r % D;
    let x = f32(qkv[idx]) + f32(bias[r]);
    let p = pos[b];
    let in_cache = p >= 0 && u32(p) < C;
    if (head >= H + HKV) {
        if (in_cache) {
            vc[((b * HKV + head - H - HKV) * C + u32(p)) * D + i] = {{ elem }}(x);
        }
        return;
    }
    // The partner element of rotate_half: the other half of the same head.
    let j = select(i + HALF, i - HALF, i >= HALF);
    let xs = f32(qkv[idx - i + j]) + f32(bias[r - i + j]);
    let t = u32(clamp(p, 0, i32(C) - 1)) * D + i;
    let y = x * cos_t[t] + xs * sin_t[t];
    if (head < H) {
        q[(b * H + head) * D + i] = {{ elem }}(y);
    } else if (in_cache) {
        kc[((b * HKV + head - H) * C + u32(p)) * D + i] = {{ elem }}(y);
    }
}

/// The norm's factor of element i of a q (`is_q`) or k head.
fn norm_weight(is_q: bool, i: u32) -> f32 {
{{ norm_weight }}
}

/// QK_NORM's layout: workgroup `unit` = (row b, head) of qkv; invocation `t` of WG.
fn normed_head(unit: u32, t: u32) {
    let heads = H + 2u * HKV;
    if (unit >= B * heads) {
        return; // the whole workgroup: barriers below stay in uniform control flow
    }
    let b = unit / heads;
    let head = unit % heads;
    let base = b * ROW + head * D;
    let p = pos[b];
    let in_cache = p >= 0 && u32(p) < C;
    if (head >= H + HKV) {
        if (in_cache) {
            for (var i = t; i < D; i += WG) {
                let x = f32(qkv[base + i]) + f32(bias[head * D + i]);
                vc[((b * HKV + head - H - HKV) * C + u32(p)) * D + i] = {{ elem }}(x);
            }
        }
        return;
    }
    var sum = 0.0;
    for (var i = t; i < D; i += WG) {
        let x = f32(qkv[base + i]) + f32(bias[head * D + i]);
        sum += x * x;
    }
    let inv = inverseSqrt(reduce_sum(sum, t) / f32(D) + EPS);
    let is_q = head < H;
    let cell = u32(clamp(p, 0, i32(C) - 1)) * D;
    for (var i = t; i < D; i += WG) {
        let j = select(i + HALF, i - HALF, i >= HALF);
        let xi = (f32(qkv[base + i]) + f32(bias[head * D + i])) * inv * norm_weight(is_q, i);
        let xj = (f32(qkv[base + j]) + f32(bias[head * D + j])) * inv * norm_weight(is_q, j);
        let y = xi * cos_t[cell + i] + xj * sin_t[cell + i];
        if (is_q) {
            q[(b * H + head) * D + i] = {{ elem }}(y);
        } else if (in_cache) {
            kc[((b * HKV + head - H) * C + u32(p)) * D + i] = {{ elem }}(y);
        }
    }
}

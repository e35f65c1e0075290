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
// This one launch replaces the bias add, two RoPE expressions (a flip each) and two scatters.
// Shapes are compile-time constants (fixed for a run): B {{ b }}, H {{ h }}, HKV {{ hkv }},
// C {{ c }}, D {{ d }} (even). Element type {{ elem }} (tables always f32; math in f32).
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
// Dispatch: one invocation per element of qkv, workgroups (x, y, 1) of {{ wg }} with
// x · y · {{ wg }} ≥ B · (H + 2 HKV) · D (index = global x + global y · x-extent).
{{ enable }}
@group(0) @binding(0) var<storage, read_write> qkv: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> bias: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> cos_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> sin_t: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<{{ elem }}>;
@group(0) @binding(6) var<storage, read_write> vc: array<{{ elem }}>;
@group(0) @binding(7) var<storage, read_write> q: array<{{ elem }}>;

const B: u32 = {{ b }}u;
const H: u32 = {{ h }}u;
const HKV: u32 = {{ hkv }}u;
const C: u32 = {{ c }}u;
const D: u32 = {{ d }}u;
const HALF: u32 = D / 2u;
const ROW: u32 = (H + 2u * HKV) * D;
const WG: u32 = {{ wg }}u;

@compute @workgroup_size({{ wg }})
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
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

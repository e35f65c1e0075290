// optim_step.wgsl — one RMSprop or AdamW update of a flat group of parameters, with the
// gradient-norm clip and the skip of a step that is not finite decided here, from a device
// value, so the host reads nothing before the update.
//
// For the weights w, the gradient g and the optimizer state [N] (RMSprop: s0 = square average v;
// AdamW: s0 = first moment m, s1 = second moment v), and the probe p [1] (the squared norm of
// the unscaled gradient, NaN where the step's loss is not finite: step_probe.wgsl):
//   apply = p is finite; norm = sqrt(p)
//   scale = GS · (MAXN / (norm + 1e-6) when MAXN > 0 and norm > MAXN, else 1)
//   RMSprop: g' = g·scale + WD·w;  v' = A·v + (1 − A)·g'²;  w' = w − LR·g' / (sqrt(v') + EPS)
//   AdamW:   g' = g·scale;  m' = A·m + (1 − A)·g';  v' = B2·v + (1 − B2)·g'²;
//            w' = w·(1 − LR·WD) − LR·(m' / BIAS1) / (sqrt(v' / BIAS2) + EPS)
//   not applied: w' = w and the state as it was (copied), whatever g holds (NaN, inf).
// torch.optim.RMSprop (no momentum, not centered) and torch.optim.AdamW, in f32 as their CPU
// twins in src/kernels/cpu_train.rs compute them. One invocation per element; every invocation
// derives (apply, scale) from p itself (one load of a broadcast value).
// Compile-time constants: N {{ n }}, ADAMW {{ adamw }}. Per-step coefficients come in the
// coefs buffer (the learning rate moves every step; constants would recompile).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 w      f32 [N]  read
//   1 g      f32 [N]  read
//   2 s0     f32 [N]  read
//   3 s1     f32 [N]  read (ADAMW; otherwise a one-element placeholder)
//   4 p      f32 [1]  read
//   5 coefs  f32 [9]  read: LR, A (alpha or beta1), B2, EPS, WD, BIAS1, BIAS2, GS, MAXN
//   6 w_out  f32 [N]  write
//   7 s0_out f32 [N]  write
//   8 s1_out f32 [N]  write (ADAMW; otherwise a placeholder)
// w_out, s0_out and s1_out may be bound to the same memory as w, s0 and s1 (an update in place,
// when nothing else holds them): each invocation reads its element before it writes it.
// Dispatch: workgroups (x, y, 1) with x · y · 256 ≥ N (group = x + y * num_workgroups.x).

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> s0: array<f32>;
@group(0) @binding(3) var<storage, read_write> s1: array<f32>;
@group(0) @binding(4) var<storage, read_write> p: array<f32>;
@group(0) @binding(5) var<storage, read_write> coefs: array<f32>;
@group(0) @binding(6) var<storage, read_write> w_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> s0_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> s1_out: array<f32>;

const N: u32 = {{ n }}u;
const ADAMW: bool = {{ adamw }};
const WG: u32 = 256u;

// Finite by the exponent bits: no arithmetic a compiler may fold away (x − x → 0).
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * groups.x) * WG + lid;
    if (i >= N) {
        return;
    }
    let probe = p[0];
    if (!is_finite(probe)) {
        w_out[i] = w[i];
        s0_out[i] = s0[i];
        if (ADAMW) {
            s1_out[i] = s1[i];
        }
        return;
    }
    let lr = coefs[0];
    let a = coefs[1];
    let b2 = coefs[2];
    let eps = coefs[3];
    let wd = coefs[4];
    let maxn = coefs[8];
    let norm = sqrt(probe);
    var scale = coefs[7];
    if (maxn > 0.0 && norm > maxn) {
        scale = scale * (maxn / (norm + 1e-6));
    }
    let wi = w[i];
    if (ADAMW) {
        let gi = g[i] * scale;
        let m = a * s0[i] + (1.0 - a) * gi;
        let v = b2 * s1[i] + (1.0 - b2) * gi * gi;
        let decayed = wi * (1.0 - lr * wd);
        w_out[i] = decayed - lr * (m / coefs[5]) / (sqrt(v / coefs[6]) + eps);
        s0_out[i] = m;
        s1_out[i] = v;
    } else {
        let gi = g[i] * scale + wd * wi;
        let v = a * s0[i] + (1.0 - a) * gi * gi;
        w_out[i] = wi - lr * gi / (sqrt(v) + eps);
        s0_out[i] = v;
    }
}

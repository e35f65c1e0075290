// rope_train.wgsl — rotary position embedding of a training or prefill step, forward and
// backward, in one launch each.
//
// For x [B, H, S, D] (read through its strides: the heads come from a transposed view) and
// cos, sin [CB, 1, S, D/2] (CB = B, or 1 for angles shared by the batch), with x1 = x[.., :D/2],
// x2 = x[.., D/2:] (transformers' rotate_half layout, src/model/rope.rs):
//   y1 = x1 · cos − SIGN · x2 · sin
//   y2 = x2 · cos + SIGN · x1 · sin
// SIGN = 1 is the forward; SIGN = −1 rotates by the opposite angle, which is the backward (the
// rotation's transpose): dx = rope(dy, cos, −sin). y is written contiguous.
// Algorithm: one invocation per rotated pair (b, h, s, i < D/2), reading both halves and
// writing both. Math in f32, each output rounded once to the element type.
// Compile-time constants: B {{ b }}, H {{ h }}, S {{ s }}, D {{ d }} (even), CB {{ cb }},
// SIGN {{ sign }}, x's element strides SB {{ sb }}, SH {{ sh }}, SS {{ ss }}, SD {{ sd }}.
// Element type {{ elem }} for every binding (f32 or f16; the `enable f16;` directive then put
// first by src/kernels/common.rs).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 x   {{ elem }} strided [B, H, S, D]  read
//   1 cos {{ elem }} [CB * S * D/2]        read
//   2 sin {{ elem }} [CB * S * D/2]        read
//   3 y   {{ elem }} [B * H * S * D]       write
// Dispatch: workgroups of 256 (x, y, 1) with x * y * 256 ≥ B·H·S·D/2 (pair = global x +
// y · x-extent).

@group(0) @binding(0) var<storage, read_write> x: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> cos_t: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> sin_t: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> y: array<{{ elem }}>;

const B: u32 = {{ b }}u;
const H: u32 = {{ h }}u;
const S: u32 = {{ s }}u;
const D: u32 = {{ d }}u;
const HALF: u32 = D / 2u;
const CB: u32 = {{ cb }}u;
const SIGN: f32 = {{ sign }};
const SB: u32 = {{ sb }}u;
const SH: u32 = {{ sh }}u;
const SS: u32 = {{ ss }}u;
const SD: u32 = {{ sd }}u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let p = gid.x + gid.y * groups.x * 256u;
    if (p >= B * H * S * HALF) {
        return;
    }
    let i = p % HALF;
    let s = (p / HALF) % S;
    let h = (p / (HALF * S)) % H;
    let b = p / (HALF * S * H);
    let src = b * SB + h * SH + s * SS;
    let x1 = f32(x[src + i * SD]);
    let x2 = f32(x[src + (i + HALF) * SD]);
    let cb = select(b, 0u, CB == 1u);
    let a = (cb * S + s) * HALF + i;
    let c = f32(cos_t[a]);
    let sn = SIGN * f32(sin_t[a]);
    let dst = ((b * H + h) * S + s) * D;
    y[dst + i] = {{ elem }}(x1 * c - x2 * sn);
    y[dst + i + HALF] = {{ elem }}(x2 * c + x1 * sn);
}

// rope_train.wgsl — rotary position embedding of a training or prefill step, forward and
// backward, in one launch each, reading and writing the heads in either layout.
//
// For x with logical dims (b, h, s, d) of sizes [B, H, S, D], read through its strides (the
// heads of a projection, [B, S, H, D] in memory, read without a copy) and cos, sin
// [CB, 1, S, D/2] (CB = B, or 1 for angles shared by the batch), with x1 = x[.., :D/2],
// x2 = x[.., D/2:] (transformers' rotate_half layout, src/model/rope.rs):
//   y1 = x1 · cos − SIGN · x2 · sin
//   y2 = x2 · cos + SIGN · x1 · sin
// SIGN = 1 is the forward; SIGN = −1 rotates by the opposite angle, which is the backward (the
// rotation's transpose): dx = rope(dy, cos, −sin).
// y is written contiguous in its own dims [B, N1, N2, D]: [B, H, S, D] (N1 = H, N2 = S, what
// the attention reads next) or, with Y_SEQ_FIRST, [B, S, H, D] (N1 = S, N2 = H: a gradient in
// its projection's layout, which the reshape back to [B, S, H·D] takes as a view).
// Algorithm: one invocation per rotated pair, numbered in y's memory order (writes coalesce),
// reading both halves and writing both. Math in f32, each output rounded once to the element
// type.
// Compile-time constants: B {{ b }}, N1 {{ n1 }}, N2 {{ n2 }}, S {{ s }}, D {{ d }} (even),
// CB {{ cb }}, SIGN {{ sign }}, Y_SEQ_FIRST {{ y_seq_first }}, x's element strides by logical
// dim XB {{ xb }}, XH {{ xh }}, XS {{ xs }}, XD {{ xd }}.
// Element type {{ elem }} for every binding (f32 or f16; the `enable f16;` directive then put
// first by src/kernels/common.rs).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 x   {{ elem }} strided (b, h, s, d)  read
//   1 cos {{ elem }} [CB * S * D/2]        read
//   2 sin {{ elem }} [CB * S * D/2]        read
//   3 y   {{ elem }} [B * N1 * N2 * D]     write
// Dispatch: workgroups of 256 (x, y, 1) with x * y * 256 ≥ B·H·S·D/2 (pair = global x +
// y · x-extent).

@group(0) @binding(0) var<storage, read_write> x: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> cos_t: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> sin_t: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> y: array<{{ elem }}>;

const B: u32 = {{ b }}u;
const N1: u32 = {{ n1 }}u;
const N2: u32 = {{ n2 }}u;
const S: u32 = {{ s }}u;
const D: u32 = {{ d }}u;
const HALF: u32 = D / 2u;
const CB: u32 = {{ cb }}u;
const SIGN: f32 = {{ sign }};
const Y_SEQ_FIRST: bool = {{ y_seq_first }};
const XB: u32 = {{ xb }}u;
const XH: u32 = {{ xh }}u;
const XS: u32 = {{ xs }}u;
const XD: u32 = {{ xd }}u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let p = gid.x + gid.y * groups.x * 256u;
    if (p >= B * N1 * N2 * HALF) {
        return;
    }
    let i = p % HALF;
    let row = p / HALF; // (b · N1 + o1) · N2 + o2: y's row
    let o2 = row % N2;
    let o1 = (row / N2) % N1;
    let b = row / (N2 * N1);
    let h = select(o1, o2, Y_SEQ_FIRST);
    let s = select(o2, o1, Y_SEQ_FIRST);
    let src = b * XB + h * XH + s * XS;
    let x1 = f32(x[src + i * XD]);
    let x2 = f32(x[src + (i + HALF) * XD]);
    let cb = select(b, 0u, CB == 1u);
    let a = (cb * S + s) * HALF + i;
    let c = f32(cos_t[a]);
    let sn = SIGN * f32(sin_t[a]);
    let dst = row * D;
    y[dst + i] = {{ elem }}(x1 * c - x2 * sn);
    y[dst + i + HALF] = {{ elem }}(x2 * c + x1 * sn);
}

// rms_norm.wgsl — the residual add and RMSNorm between a decode step's blocks, in one launch.
//
// For rows x [B, N], a residual r [B, N] and the norm's weight w [N]:
//   h = x + r                                   (written out: the residual stream)
//   y = h / sqrt(mean(h²) + eps) · w            (the next block's input; Llama/Qwen2/Mistral)
// Without a residual (RESIDUAL false: the first layer's input norm) h = x and only y is
// written; r and h are then bound to placeholders and not touched. With PRE_NORM (sandwich
// norms, Gemma 3: the attention and MLP outputs are normed before they join the stream) the
// residual is normed first with its own weight rw [N]:
//   h = x + r / sqrt(mean(r²) + eps) · rw       (the normed r rounded to the element type first)
// Algorithm: one workgroup of WG invocations per row. Each invocation sums the squares of
// elements lid, lid + WG, … (writing h as it goes), a tree reduction in shared memory (the
// prelude's `reduce_sum`: this shader uses prelude.wgsl) gives the row's sum, and each
// invocation then scales its own elements. Math in f32 whatever the element type (an f16 square
// overflows past 256); each output is rounded to it once.
// Compile-time constants: B {{ b }}, N {{ n }}, eps {{ eps }}, RESIDUAL {{ residual }},
// PRE_NORM {{ pre_norm }} (only with RESIDUAL).
// Element type {{ elem }} (f32 or f16, the `enable f16;` directive then put first by
// src/kernels/common.rs) for every binding.
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 x  {{ elem }} [B * N]   read
//   1 r  {{ elem }} [B * N]   read (RESIDUAL)
//   2 w  {{ elem }} [N]       read
//   3 h  {{ elem }} [B * N]   write (RESIDUAL)
//   4 y  {{ elem }} [B * N]   write
//   5 rw {{ elem }} [N]       read (PRE_NORM only)
// Dispatch: workgroups (x, y, 1) with x * y ≥ B (row = x + y * num_workgroups.x).

@group(0) @binding(0) var<storage, read_write> x: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> r: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> w: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> h: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> y: array<{{ elem }}>;
{{ pre_binding }}

const B: u32 = {{ b }}u;
const N: u32 = {{ n }}u;
const EPS: f32 = {{ eps }};
const RESIDUAL: bool = {{ residual }};
const PRE_NORM: bool = {{ pre_norm }};
const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    let row = wid.x + wid.y * groups.x;
    if (row >= B) {
        return;
    }
    let base = row * N;
    // PRE_NORM: r's own norm first (the same tree reduction), its factor kept in r_inv.
    var r_inv = 1.0;
    if (PRE_NORM) {
        var rs = 0.0;
        for (var i = lid; i < N; i += WG) {
            let v = f32(r[base + i]);
            rs += v * v;
        }
        r_inv = 1.0 / sqrt(reduce_sum(rs, lid) / f32(N) + EPS);
    }
    var sq = 0.0;
    for (var i = lid; i < N; i += WG) {
        var v = f32(x[base + i]);
        if (RESIDUAL) {
            // The stream is kept in the element type: the sum is rounded to it before it is
            // squared, so the norm sees exactly the h the next layer adds to.
            let hv = {{ elem }}(v + residual_at(base, i, r_inv));
            h[base + i] = hv;
            v = f32(hv);
        }
        sq += v * v;
    }
    let inv = 1.0 / sqrt(reduce_sum(sq, lid) / f32(N) + EPS);
    for (var i = lid; i < N; i += WG) {
        var v = f32(x[base + i]);
        if (RESIDUAL) {
            v = f32({{ elem }}(v + residual_at(base, i, r_inv)));
        }
        y[base + i] = {{ elem }}(v * inv * f32(w[i]));
    }
}

/// The residual's element i of the row at `base`: as it is, or normed (PRE_NORM) and rounded to
/// the element type as the model's norm output is.
fn residual_at(base: u32, i: u32, r_inv: f32) -> f32 {
{{ residual_at }}
}

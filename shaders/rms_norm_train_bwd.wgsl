// rms_norm_train_bwd.wgsl — RMSNorm's backward: the input's gradient, and per workgroup a
// partial sum of the weight's gradient (summed by rms_norm_train_dw.wgsl; no atomics).
//
// For rows x [R, N], the weight w [N], the forward's inv [R] (rms_norm_train_fwd.wgsl) and the
// upstream gradient g [R, N], with n = x · inv the normalised row and w' the factor it was
// scaled by (elem(w) for OFFSET = 0, OFFSET + w otherwise):
//   dn = g · w'
//   dx = inv · (dn − n · mean(dn · n))                  (the chain rule through 1/rms)
//   dw = Σ_rows g · n'       (n' = elem(n) for OFFSET = 0, the value the forward multiplied)
// Algorithm: workgroup k of G takes rows k, k + G, k + 2G, …; per row its WG invocations sum
// dn · n over the row (the prelude's tree `reduce_sum`: this shader uses prelude.wgsl), write
// dx and add g · n' to their own columns' private accumulators (invocation lid owns columns lid,
// lid + WG, …: COLS of them); at the end each writes its columns to part[k, ·]. Math in f32.
// Compile-time constants: R {{ r }}, N {{ n }}, G {{ g }}, OFFSET {{ offset }}, WG {{ wg }} (a
// power of two, ≤ 256), COLS {{ cols }} = ceil(N / WG). Element type {{ elem }} for x, g and dx,
// {{ welem }} for w (f32 or f16; the `enable f16;` directive then put first by
// src/kernels/common.rs).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 x    {{ elem }}  [R * N]  read
//   1 w    {{ welem }} [N]      read
//   2 inv  f32         [R]      read
//   3 g    {{ elem }}  [R * N]  read
//   4 dx   {{ elem }}  [R * N]  write
//   5 part f32         [G * N]  write
// Dispatch: G workgroups (x, y, 1) with x * y ≥ G (k = x + y * num_workgroups.x).

@group(0) @binding(0) var<storage, read_write> x: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> w: array<{{ welem }}>;
@group(0) @binding(2) var<storage, read_write> inv_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> g: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> dx: array<{{ elem }}>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;

const R: u32 = {{ r }}u;
const N: u32 = {{ n }}u;
const G: u32 = {{ g }}u;
const OFFSET: f32 = {{ offset }};
const WG: u32 = {{ wg }}u;
const COLS: u32 = {{ cols }}u;

// The factor the forward scaled column i by.
fn scale_of(i: u32) -> f32 {
    if (OFFSET != 0.0) {
        return OFFSET + f32(w[i]);
    }
    return f32({{ elem }}(w[i]));
}

@compute @workgroup_size({{ wg }})
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    let k = wid.x + wid.y * groups.x;
    if (k >= G) {
        return;
    }
    var acc: array<f32, {{ cols }}>;
    for (var c = 0u; c < COLS; c++) {
        acc[c] = 0.0;
    }
    for (var row = k; row < R; row += G) {
        let base = row * N;
        let inv = inv_in[row];
        var dsum = 0.0;
        for (var i = lid; i < N; i += WG) {
            let n = f32(x[base + i]) * inv;
            dsum += f32(g[base + i]) * scale_of(i) * n;
        }
        let mean = reduce_sum(dsum, lid) / f32(N);
        for (var c = 0u; c < COLS; c++) {
            let i = lid + c * WG;
            if (i < N) {
                let n = f32(x[base + i]) * inv;
                let gv = f32(g[base + i]);
                dx[base + i] = {{ elem }}(inv * (gv * scale_of(i) - n * mean));
                var nq = n;
                if (OFFSET == 0.0) {
                    nq = f32({{ elem }}(n));
                }
                acc[c] += gv * nq;
            }
        }
    }
    for (var c = 0u; c < COLS; c++) {
        let i = lid + c * WG;
        if (i < N) {
            part[k * N + i] = acc[c];
        }
    }
}

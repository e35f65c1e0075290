// rms_norm_train_fwd.wgsl — a training step's RMSNorm forward in one launch, keeping the row
// statistic its backward needs.
//
// For rows x [R, N] and the norm's weight w [N], with inv[r] = 1 / sqrt(mean(x[r]²) + EPS):
//   OFFSET = 0 (Llama, Qwen, Mistral):  y = elem(elem(x · inv) · elem(w))
//   OFFSET ≠ 0 (Gemma):                 y = elem(x · inv · (OFFSET + w))
// exactly the roundings of the model's RmsNorm::forward (src/model/layers.rs): statistics in
// f32, Llama's normalised values cast back to the element type before the (element-typed)
// weight scales them, Gemma's offset weight applied in f32. inv [R] (f32) is written for the
// backward (rms_norm_train_bwd.wgsl), which then needs no second pass over x for it.
// Algorithm: workgroup k of G takes rows k, k + G, k + 2G, … (fewer, longer-lived workgroups:
// on lavapipe one workgroup per row cost 3× the time), per row its WG invocations sum the
// squares of elements lid, lid + WG, …, the prelude's tree `reduce_sum` (this shader uses
// prelude.wgsl) gives the row's sum, then each invocation scales its own elements. Math in f32
// (an f16 square overflows past 256).
// Compile-time constants: R {{ r }}, N {{ n }}, G {{ g }}, EPS {{ eps }}, OFFSET {{ offset }},
// WG {{ wg }} (a power of two, ≤ 256). Element type {{ elem }} for x and y, {{ welem }} for w (f32 or f16;
// the `enable f16;` directive then put first by src/kernels/common.rs).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 x   {{ elem }}  [R * N]  read
//   1 w   {{ welem }} [N]      read
//   2 y   {{ elem }}  [R * N]  write
//   3 inv f32         [R]      write
// Dispatch: G workgroups (x, y, 1) with x * y ≥ G (k = x + y * num_workgroups.x).

@group(0) @binding(0) var<storage, read_write> x: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> w: array<{{ welem }}>;
@group(0) @binding(2) var<storage, read_write> y: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> inv_out: array<f32>;

const R: u32 = {{ r }}u;
const N: u32 = {{ n }}u;
const G: u32 = {{ g }}u;
const EPS: f32 = {{ eps }};
const OFFSET: f32 = {{ offset }};
const WG: u32 = {{ wg }}u;

@compute @workgroup_size({{ wg }})
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so the barriers in norm_row stay in uniform control flow.
    let k = wid.x + wid.y * groups.x;
    if (k >= G) {
        return;
    }
    for (var row = k; row < R; row += G) {
        norm_row(row, lid);
    }
}

fn norm_row(row: u32, lid: u32) {
    let base = row * N;
    var sq = 0.0;
    for (var i = lid; i < N; i += WG) {
        let v = f32(x[base + i]);
        sq += v * v;
    }
    let inv = 1.0 / sqrt(reduce_sum(sq, lid) / f32(N) + EPS);
    if (lid == 0u) {
        inv_out[row] = inv;
    }
    for (var i = lid; i < N; i += WG) {
        let v = f32(x[base + i]);
        if (OFFSET != 0.0) {
            y[base + i] = {{ elem }}(v * inv * (OFFSET + f32(w[i])));
        } else {
            y[base + i] = {{ elem }}(f32({{ elem }}(v * inv)) * f32({{ elem }}(w[i])));
        }
    }
}

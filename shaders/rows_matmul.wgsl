// rows_matmul.wgsl — the projections of a decode step: a few rows against a weight, in one pass.
//
// For rows x [M, K] (M ≤ 16: one token per batch row) and a weight in Hugging Face layout
// w [N, K] (each output's weights contiguous), computes
//   y[m, n] = Σ_k x[m, k] · w[n, k]
// With GATED (a gated MLP: w stacks the gate rows, then the up rows, [2N, K]) it computes instead
//   y[m, n] = act(g) · u,   g = Σ_k x[m, k] · w[n, k],   u = Σ_k x[m, k] · w[N + n, k]
// act = silu, or with GELU the tanh GELU (argument clamped to ±15, where tanh is ±1 in f32).
// so the MLP's activation costs no launch and no [M, 2N] intermediate.
// A decode step reads every weight once for a handful of rows, so the kernel is bound by the
// weight's bytes, not by arithmetic; a tiled GEMM's 16- or 32-row tiles run mostly empty here.
// Algorithm: a workgroup of COLS · LANES invocations computes COLS adjacent outputs for all M
// rows. The LANES invocations of a team share one output n and stride along its weight row in
// vec4 loads (a team reads LANES · 16 contiguous bytes per iteration), each keeping M partial
// dots in registers against the matching vec4 of every input row (x is small and stays in
// cache); GATED teams stream their gate and up rows side by side. The partials meet in shared
// memory [COLS][M][LANES] (twice with GATED); after one barrier each
// invocation sums the LANES partials of outputs (m, n) with n fastest, so the writes of a
// workgroup are contiguous per row. Accumulation in f32.
// Shapes are compile-time constants (a run decodes with fixed shapes, so a launch uploads
// nothing): M {{ m }}, K {{ k }} (a multiple of 4; K4 = K / 4), N {{ n }}; COLS {{ cols }},
// LANES {{ lanes }} (workgroup {{ wg }}), GATED {{ gated }}, GELU {{ gelu }}. Element type {{ elem }}
// (f32 or f16, the `enable f16;` directive then put first by src/kernels/common.rs) for x and w;
// y is {{ out }} ({{ elem }}, or f32 for logits: the sums are f32 already).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 x  vec4<{{ elem }}> [M * K4]   read
//   1 w  vec4<{{ elem }}> [N * K4]   read ([2N * K4] with GATED)
//   2 y  {{ out }}       [M * N]    write
// Dispatch: workgroups (x, y, 1) with x * y ≥ ceil(N / COLS) (group = x + y * num_workgroups.x).

@group(0) @binding(0) var<storage, read_write> x: array<vec4<{{ elem }}>>;
@group(0) @binding(1) var<storage, read_write> w: array<vec4<{{ elem }}>>;
@group(0) @binding(2) var<storage, read_write> y: array<{{ out }}>;

const M: u32 = {{ m }}u;
const K4: u32 = {{ k }}u / 4u;
const N: u32 = {{ n }}u;
const COLS: u32 = {{ cols }}u;
const LANES: u32 = {{ lanes }}u;
const WG: u32 = COLS * LANES;
const GATED: bool = {{ gated }};
const GELU: bool = {{ gelu }};

fn act(g: f32) -> f32 {
    if (GELU) {
        let inner = clamp(0.7978846 * (g + 0.044715 * g * g * g), -15.0, 15.0);
        return 0.5 * g * (1.0 + tanh(inner));
    }
    return g / (1.0 + exp(-g));
}
const UP: u32 = COLS * M * LANES; // where the up partials start in `partial`

var<workgroup> partial: array<f32, {{ partial }}>; // COLS * M * LANES, twice with GATED

@compute @workgroup_size({{ wg }})
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so the barrier below stays in uniform control flow.
    let first = (wid.x + wid.y * groups.x) * COLS;
    if (first >= N) {
        return;
    }
    let team = lid / LANES;
    let lane = lid % LANES;
    let n = first + team;
    var acc: array<f32, {{ m }}>;
    var acc_up: array<f32, {{ m }}>;
    for (var r = 0u; r < M; r++) {
        acc[r] = 0.0;
        acc_up[r] = 0.0;
    }
    if (n < N) {
        let row = n * K4;
        let up_row = (N + n) * K4;
        for (var i = lane; i < K4; i += LANES) {
            let wv = vec4<f32>(w[row + i]);
            if (GATED) {
                let uv = vec4<f32>(w[up_row + i]);
                for (var r = 0u; r < M; r++) {
                    let xv = vec4<f32>(x[r * K4 + i]);
                    acc[r] += dot(wv, xv);
                    acc_up[r] += dot(uv, xv);
                }
            } else {
                for (var r = 0u; r < M; r++) {
                    acc[r] += dot(wv, vec4<f32>(x[r * K4 + i]));
                }
            }
        }
    }
    for (var r = 0u; r < M; r++) {
        partial[(team * M + r) * LANES + lane] = acc[r];
        if (GATED) {
            partial[UP + (team * M + r) * LANES + lane] = acc_up[r];
        }
    }
    workgroupBarrier();
    for (var j = lid; j < COLS * M; j += WG) {
        let r = j / COLS;
        let c = j % COLS;
        if (first + c < N) {
            let at = (c * M + r) * LANES;
            var s = 0.0;
            for (var l = 0u; l < LANES; l++) {
                s += partial[at + l];
            }
            if (GATED) {
                var u = 0.0;
                for (var l = 0u; l < LANES; l++) {
                    u += partial[UP + at + l];
                }
                s = act(s) * u;
            }
            y[r * N + first + c] = {{ out }}(s);
        }
    }
}

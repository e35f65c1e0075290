// rms_norm_train_dw.wgsl — the second half of RMSNorm's weight gradient: the G partial sums
// rms_norm_train_bwd.wgsl left per workgroup, summed per column (a reduction without atomics).
//
//   dw[i] = Σ_k part[k, i]      for part [G, N] (f32), dw [N] in {{ welem }}
// Algorithm: one invocation per column, k in order (the same sum on every run).
// Compile-time constants: N {{ n }}, G {{ g }}. Element type {{ welem }} for dw (f32 or f16; the
// `enable f16;` directive then put first by src/kernels/common.rs).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 part f32         [G * N]  read
//   1 dw   {{ welem }} [N]      write
// Dispatch: workgroups of 256 (x, y, 1) with x * y * 256 ≥ N (column = global x + y · x-extent).

@group(0) @binding(0) var<storage, read_write> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> dw: array<{{ welem }}>;

const N: u32 = {{ n }}u;
const G: u32 = {{ g }}u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= N) {
        return;
    }
    var s = 0.0;
    for (var k = 0u; k < G; k++) {
        s += part[k * N + i];
    }
    dw[i] = {{ welem }}(s);
}

// token_logprobs_bwd.wgsl — gradient of token_logprobs_fwd with respect to the logits.
//
// Computes dlogits[n, v] = g[n] · (1[v = targets[n]] − exp(logits[n, v] − lse[n])), i.e. the
// upstream gradient g = dL/dlogp times the derivative of log_softmax at the target, using the lse
// saved by the forward pass (no second reduction). Every element of dlogits is written.
// Element type: {{ elem }} (f32 or f16 logits and dlogits, the `enable f16;` directive then put
// first by src/kernels/common.rs; arithmetic in f32).
//
// Bindings (group 0):
//   0 logits  {{ elem }} [N * V]  read
//   1 targets i32        [N]      read
//   2 lse     f32        [N]      read
//   3 grad    f32        [N]      read
//   4 dlogits {{ elem }} [N * V]  write
//   5 info    u32        [2]      read: N, V
// Dispatch: workgroups (x, y, 1) with x * y ≥ N, one row per workgroup; 256 invocations.

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> logits: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<{{ elem }}>;
@group(0) @binding(5) var<storage, read_write> info: array<u32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n = info[0];
    let v = info[1];
    let row = wid.x + wid.y * groups.x;
    if (row >= n) {
        return;
    }
    let base = row * v;
    let l = lse[row];
    let g = grad[row];
    let t = targets[row];
    for (var i = lid; i < v; i += WG) {
        var d = -g * exp(f32(logits[base + i]) - l);
        if (i32(i) == t) {
            d += g;
        }
        dlogits[base + i] = {{ elem }}(d);
    }
}

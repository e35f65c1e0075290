// token_logprobs_fwd.wgsl — log-probability of one target token per row of logits.
//
// Computes, for logits [N, V] (row-major, contiguous) and targets [N]:
//   lse[n]  = log Σ_v exp(logits[n, v])
//   logp[n] = logits[n, targets[n]] − lse[n]
// Algorithm: one workgroup per row, one pass over V. Each invocation keeps an online (max, sum)
// pair over a strided slice of the row (`online_add`: sum rescaled whenever the max grows),
// reading four elements 256 apart per iteration so their loads overlap, then the workgroup
// merges the pairs by a tree reduction in shared memory (`reduce_max_sum`). Logits are read
// exactly once. Uses prelude.wgsl (online_add, reduce_max_sum, LOWEST).
// −inf entries (masked vocabulary) contribute 0; a target outside [0, V) gives logp = 0.
// Element type: {{ elem }} (f32 or f16, the `enable f16;` directive then put first by
// src/kernels/common.rs; accumulation is always f32).
//
// Bindings (group 0):
//   0 logits  {{ elem }} [N * V]  read
//   1 targets i32        [N]      read
//   2 logp    f32        [N]      write
//   3 lse     f32        [N]      write
//   4 info    u32        [2]      read: N, V
// Dispatch: workgroups (x, y, 1) with x * y ≥ N (row = x + y * num_workgroups.x); 256 invocations.

// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> logits: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> logp: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const WG: u32 = 256u;

var<workgroup> shape_n: u32;
var<workgroup> shape_v: u32;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        shape_n = info[0];
        shape_v = info[1];
    }
    // Loaded through workgroupUniformLoad so the early return below stays in uniform control flow.
    let n = workgroupUniformLoad(&shape_n);
    let v = workgroupUniformLoad(&shape_v);
    let row = wid.x + wid.y * groups.x;
    if (row >= n) {
        return;
    }
    let base = row * v;

    var m = LOWEST;
    var s = 0.0;
    // Four loads issued before any arithmetic uses them keep more bytes in flight per invocation
    // (memory-level parallelism is what a bandwidth-bound kernel runs on); then the tail.
    var i = lid;
    for (; i + 3u * WG < v; i += 4u * WG) {
        let x0 = f32(logits[base + i]);
        let x1 = f32(logits[base + i + WG]);
        let x2 = f32(logits[base + i + 2u * WG]);
        let x3 = f32(logits[base + i + 3u * WG]);
        online_add(&m, &s, x0);
        online_add(&m, &s, x1);
        online_add(&m, &s, x2);
        online_add(&m, &s, x3);
    }
    for (; i < v; i += WG) {
        online_add(&m, &s, f32(logits[base + i]));
    }
    let ms = reduce_max_sum(m, s, lid);

    if (lid == 0u) {
        let l = ms.x + log(ms.y);
        lse[row] = l;
        let t = targets[row];
        if (t >= 0 && u32(t) < v) {
            logp[row] = f32(logits[base + u32(t)]) - l;
        } else {
            logp[row] = 0.0;
        }
    }
}

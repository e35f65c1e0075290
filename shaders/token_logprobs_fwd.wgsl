// token_logprobs_fwd.wgsl — log-probability of one target token per row of logits.
//
// Computes, for logits [N, V] (row-major, contiguous) and targets [N]:
//   lse[n]  = log Σ_v exp(logits[n, v])
//   logp[n] = logits[n, targets[n]] − lse[n]
// Algorithm: one workgroup per row, one pass over V. Each invocation keeps an online (max, sum)
// pair over a strided slice of the row (sum rescaled whenever the max grows), reading four
// elements 256 apart per iteration so their loads overlap, then the workgroup
// merges the pairs by a tree reduction in shared memory. Logits are read exactly once.
// −inf entries (masked vocabulary) contribute 0; a target outside [0, V) gives logp = 0.
// Element type: {{ elem }} (f32 or f16; accumulation is always f32).
//
// Bindings (group 0):
//   0 logits  {{ elem }} [N * V]  read
//   1 targets i32        [N]      read
//   2 logp    f32        [N]      write
//   3 lse     f32        [N]      write
//   4 info    u32        [2]      read: N, V
// Dispatch: workgroups (x, y, 1) with x * y ≥ N (row = x + y * num_workgroups.x); 256 invocations.
{{ enable }}
// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// binding one buffer both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> logits: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> logp: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const WG: u32 = 256u;
// Stand-in for −inf that keeps exp() arguments finite.
const LOWEST: f32 = -3.4028235e38;

var<workgroup> part_max: array<f32, 256>;
var<workgroup> part_sum: array<f32, 256>;
var<workgroup> shape_n: u32;
var<workgroup> shape_v: u32;

// Adds x to a running (max m, Σ exp(· − m)) pair; the sum is rescaled only when the max grows,
// which on random data happens O(log n) times, so it costs one exp per element.
fn online_add(m: ptr<function, f32>, s: ptr<function, f32>, x: f32) {
    if (x > *m) {
        *s = *s * exp(*m - x) + 1.0;
        *m = x;
    } else {
        *s += exp(x - *m);
    }
}

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
    part_max[lid] = m;
    part_sum[lid] = s;
    workgroupBarrier();

    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if (lid < k) {
            let m1 = part_max[lid];
            let m2 = part_max[lid + k];
            let mm = max(m1, m2);
            part_sum[lid] = part_sum[lid] * exp(m1 - mm) + part_sum[lid + k] * exp(m2 - mm);
            part_max[lid] = mm;
        }
        workgroupBarrier();
    }

    if (lid == 0u) {
        let l = part_max[0] + log(part_sum[0]);
        lse[row] = l;
        let t = targets[row];
        if (t >= 0 && u32(t) < v) {
            logp[row] = f32(logits[base + u32(t)]) - l;
        } else {
            logp[row] = 0.0;
        }
    }
}

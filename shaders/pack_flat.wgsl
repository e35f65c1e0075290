// pack_flat.wgsl — up to K source tensors copied into one flat f32 buffer at given offsets, zero
// everywhere else: the optimizer's gradient groups packed in one launch per K members instead of
// a zero fill, one slice-assign per member and a contiguous copy per transposed gradient.
//
// A launch owns the output range [LO, HI): element i there is
//   source k's element j = i − OFF_k in row-major order of its logical shape [ROWS_k, COLS_k],
//     read at j / COLS_k · SROW_k + j % COLS_k · SCOL_k of its binding, when OFF_k ≤ i < OFF_k + N_k
//   0 otherwise (padding between members and after the last).
// Strided reads: a transposed view (SROW 1, SCOL ROWS), a narrowed one (SROW > COLS) and a
// contiguous one are read in place, without a copy first. A source's binding starts at its first
// element (cubecl binds a view's handle from its offset; a view whose offset is not aligned is a
// copy already), so no start offset is needed. The caller gives the launches of a group disjoint
// ranges that cover [0, len): every element is written exactly once. Sources of one launch must
// not overlap in [LO, HI); the first whose range holds i wins.
// One invocation per output element: it scans the (≤ K) sources' ranges, then reads one element.
//
// Compile-time constants: K {{ k }} (source bindings; a launch with fewer sources binds the first
// again in the unused slots and says how many count in COUNT).
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0     flat  f32 [len]        write: elements [LO, HI) only
//   1     info  u32 [4 + 5·K]    read: LO, HI, COUNT, 0, then per source k (k < COUNT) at 4 + 5k:
//                                OFF_k, N_k (= ROWS_k · COLS_k), COLS_k, SROW_k, SCOL_k (elements)
//   2 + k src_k f32 [...]        read: source k's storage from its first element, k < K
// Dispatch: workgroups (x, y, 1) with x · y · 256 ≥ HI − LO (group = x + y * num_workgroups.x).

@group(0) @binding(0) var<storage, read_write> flat: array<f32>;
@group(0) @binding(1) var<storage, read_write> info: array<u32>;
{{ sources }}

const K: u32 = {{ k }}u;
const WG: u32 = 256u;

// Element `i` of source `k`'s binding.
fn load(k: u32, i: u32) -> f32 {
    var v = 0.0;
    switch k {
{{ cases }}
        default: {}
    }
    return v;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lo = info[0];
    let hi = info[1];
    let count = min(info[2], K);
    let i = lo + (wid.x + wid.y * groups.x) * WG + lid;
    if (i >= hi) {
        return;
    }
    var v = 0.0;
    for (var k = 0u; k < count; k = k + 1u) {
        let base = 4u + 5u * k;
        let off = info[base];
        if (i >= off && i - off < info[base + 1u]) {
            let j = i - off;
            let cols = info[base + 2u];
            let r = j / cols;
            let c = j - r * cols;
            v = load(k, r * info[base + 3u] + c * info[base + 4u]);
            break;
        }
    }
    flat[i] = v;
}

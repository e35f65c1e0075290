// prelude.wgsl — the workgroup reductions and the online (max, Σ exp) step the row kernels share.
//
// WGSL has no #include: src/kernels/common.rs (`Shader::template`) puts this text before every
// shader whose `Shader` constant sets `prelude` (token_logprobs_fwd, sample, rms_norm,
// rope_cache_write, rms_norm_train_fwd, rms_norm_train_bwd), after the `enable f16;` directive where there is one. So a shader's line n is
// line n + (this file's lines) in a compiler's message.
//
// Provides:
//   LOWEST                         −f32::MAX, the stand-in for −inf that keeps exp() arguments finite
//   online_add(&m, &s, x)          adds x to a running (max m, Σ exp(· − m)) pair
//   reduce_sum(x, lid)             Σ x over the workgroup
//   reduce_min(x, lid)             min x over the workgroup
//   reduce_max_sum(m, s, lid)      (max, Σ exp(· − max)) of every invocation's pair → vec2(max, sum)
//   red_a, red_b: array<f32, WG>, res_f, res_g: f32   the reductions' workgroup scratch
//
// Contract (the shader's side):
//   - it declares `const WG: u32`, its workgroup size, a power of two (the trees halve it), and
//     launches with @workgroup_size(WG) (the scratch arrays are WG long);
//   - it calls reduce_* from uniform control flow, every invocation of the workgroup with its
//     local_invocation_index as `lid` (they hold barriers); each returns the same (uniform) value
//     to all of them, and the scratch is free again when it returns (a shader may use red_a,
//     red_b, res_f and res_g itself between calls, as sample.wgsl's prefix scan does);
//   - it declares none of the names above itself.
// Order of the sums (the kernel tests hold the kernels to their twins on it): a tree, element
// lid taking lid + k for k = WG / 2, WG / 4, …, 1; element 0 is the result.

const LOWEST: f32 = -3.4028235e38;

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;
var<workgroup> res_f: f32;
var<workgroup> res_g: f32;

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

fn reduce_sum(x: f32, lid: u32) -> f32 {
    red_a[lid] = x;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if (lid < k) { red_a[lid] += red_a[lid + k]; }
        workgroupBarrier();
    }
    if (lid == 0u) { res_f = red_a[0]; }
    return workgroupUniformLoad(&res_f);
}

fn reduce_min(x: f32, lid: u32) -> f32 {
    red_a[lid] = x;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if (lid < k) { red_a[lid] = min(red_a[lid], red_a[lid + k]); }
        workgroupBarrier();
    }
    if (lid == 0u) { res_f = red_a[0]; }
    return workgroupUniformLoad(&res_f);
}

// Online (max, Σ exp(x − max)) pairs merged across the workgroup → vec2(max, sum): each merge
// rescales both sums to the larger max.
fn reduce_max_sum(m: f32, s: f32, lid: u32) -> vec2<f32> {
    red_a[lid] = m;
    red_b[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if (lid < k) {
            let m1 = red_a[lid];
            let m2 = red_a[lid + k];
            let mm = max(m1, m2);
            red_b[lid] = red_b[lid] * exp(m1 - mm) + red_b[lid + k] * exp(m2 - mm);
            red_a[lid] = mm;
        }
        workgroupBarrier();
    }
    if (lid == 0u) { res_f = red_a[0]; res_g = red_b[0]; }
    let mx = workgroupUniformLoad(&res_f);
    return vec2<f32>(mx, workgroupUniformLoad(&res_g));
}

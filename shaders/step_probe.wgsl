// step_probe.wgsl — the value an optimizer step is decided on, from the squared gradient norm
// and the step's summed loss, on the device: one launch where burn's ops took four (is_nan,
// is_inf, or, mask_fill), and a custom op, so burn's fusion never groups it with the first step's
// one-off work (packing the weights, zeroing the state) into a kernel later steps do not run.
//
//   probe = norm2 where total is finite, NaN where it is not (inf or NaN)
// norm2 passes through as it is (itself not finite when the gradient is not); optim_step.wgsl
// skips the update when probe is not finite and the host reads probe back as the norm².
// Finiteness by the exponent bits, as optim_step.wgsl: no arithmetic a compiler may fold.
//
// Bindings (group 0), all read_write (cubecl sub-allocates tensors from shared buffers, and
// wgpu forbids binding one buffer both read-only and read-write in a dispatch):
//   0 norm2 f32 [1] read
//   1 total f32 [1] read
//   2 probe f32 [1] write
// Dispatch: one workgroup of one invocation.

@group(0) @binding(0) var<storage, read_write> norm2: array<f32>;
@group(0) @binding(1) var<storage, read_write> total: array<f32>;
@group(0) @binding(2) var<storage, read_write> probe: array<f32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(1)
fn main() {
    if (is_finite(total[0])) {
        probe[0] = norm2[0];
    } else {
        probe[0] = bitcast<f32>(0x7fc00000u);
    }
}

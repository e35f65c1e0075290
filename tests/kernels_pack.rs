//! `pack_flat` (the optimizer's gradient groups packed in a few launches) against a reference
//! built on the host from the sources' values by index, on every device: transposed views (as
//! burn gives a weight's gradient), narrowed ones (rows, and columns of a wider tensor: strided),
//! a transposed narrowed view, vectors as `[1, n]`, more sources than one launch binds, padding
//! between and after them. A copy, so equality is exact: every member's elements in place, the
//! padding exactly 0, including over an output that starts as NaN (every element written). The
//! kernel agrees with its twin exactly; on wgpu it takes one launch per [`MAX_SOURCES`] sources
//! (views read in place, no copy launched first), and f16 sources take the twin there.

mod common;

use std::sync::Mutex;

use burn::tensor::{DType, Tensor, TensorData};
use common::{Rng, devices, floats};
use wgspin::device::traffic::LaunchCount;
use wgspin::kernels::pack_flat::{
    MAX_SOURCES, pack_flat, pack_flat_into, pack_flat_twin, sources_per_launch,
};

/// Held by every test: the launch count is process-wide, so nothing else may launch meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

/// A source: the tensor handed to `pack_flat` and its logical values in row-major order.
struct Case {
    tensor: Tensor<2>,
    values: Vec<f32>,
}

/// `[rows, cols]` of distinct values (so a misplaced element shows) from `rng`.
fn matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|_| rng.normal()).collect()
}

fn upload(v: &[f32], shape: [usize; 2], device: &burn::tensor::Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// The sources of every kind, `extra` contiguous ones appended so that there are more than one
/// launch binds.
fn cases(rng: &mut Rng, device: &burn::tensor::Device, extra: usize) -> Vec<Case> {
    let mut out = vec![];
    // Transposed: [5, 7] seen as [7, 5]; element (i, j) is base (j, i).
    let base = matrix(rng, 5, 7);
    out.push(Case {
        tensor: upload(&base, [5, 7], device).transpose(),
        values: (0..7)
            .flat_map(|i| (0..5).map(move |j| (i, j)))
            .map(|(i, j)| base[j * 7 + i])
            .collect(),
    });
    // Rows 1..4 of [6, 128] (an aligned start: a view with an offset on wgpu).
    let base = matrix(rng, 6, 128);
    out.push(Case {
        tensor: upload(&base, [6, 128], device).narrow(0, 1, 3),
        values: base[128..4 * 128].to_vec(),
    });
    // A vector as [1, n].
    let base = matrix(rng, 1, 13);
    out.push(Case {
        tensor: Tensor::<1>::from_data(TensorData::new(base.clone(), [13]), device).unsqueeze(),
        values: base,
    });
    // Columns 64..128 of [4, 192]: rows 192 apart, 64 read from each.
    let base = matrix(rng, 4, 192);
    out.push(Case {
        tensor: upload(&base, [4, 192], device).narrow(1, 64, 64),
        values: (0..4)
            .flat_map(|r| base[r * 192 + 64..r * 192 + 128].to_vec())
            .collect(),
    });
    // Rows 2..6 of [8, 128], transposed: [128, 4], element (i, j) is base (2 + j, i).
    let base = matrix(rng, 8, 128);
    out.push(Case {
        tensor: upload(&base, [8, 128], device).narrow(0, 2, 4).transpose(),
        values: (0..128)
            .flat_map(|i| (0..4).map(move |j| (i, j)))
            .map(|(i, j)| base[(2 + j) * 128 + i])
            .collect(),
    });
    for _ in 0..extra {
        let (r, c) = (1 + rng.below(9), 1 + rng.below(70));
        let base = matrix(rng, r, c);
        // About half transposed views, as most of a layer's gradients are.
        let tensor = if rng.below(2) == 0 {
            upload(&transpose(&base, r, c), [c, r], device).transpose()
        } else {
            upload(&base, [r, c], device)
        };
        out.push(Case {
            tensor,
            values: base,
        });
    }
    out
}

/// `[r, c]` row-major → `[c, r]` row-major.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    (0..c)
        .flat_map(|j| (0..r).map(move |i| v[i * c + j]))
        .collect()
}

/// Offsets with 0..100 elements of padding before each source (some aligned to 64 as the
/// layout's are, some not), and the buffer's length with padding after the last.
fn layout(rng: &mut Rng, sizes: &[usize]) -> (Vec<usize>, usize) {
    let mut at = 0usize;
    let offsets = sizes
        .iter()
        .map(|&n| {
            at += if rng.below(2) == 0 {
                rng.below(100)
            } else {
                at.next_multiple_of(64) - at
            };
            let off = at;
            at += n;
            off
        })
        .collect();
    (offsets, at + rng.below(100))
}

/// The host reference: zeros with each source's values at its offset.
fn reference(cases: &[Case], offsets: &[usize], len: usize) -> Vec<f32> {
    let mut flat = vec![0f32; len];
    for (c, &off) in cases.iter().zip(offsets) {
        flat[off..off + c.values.len()].copy_from_slice(&c.values);
    }
    flat
}

fn sources(cases: &[Case]) -> Vec<Tensor<2>> {
    cases.iter().map(|c| c.tensor.clone()).collect()
}

#[test]
fn pack_flat_places_every_source_and_zeros_the_padding() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(34);
    for dev in devices() {
        let per_launch = sources_per_launch(&dev.device);
        eprintln!("{}: {per_launch} sources per launch", dev.description);
        // A few sources (one op), more than one op holds, and more than two.
        for extra in [0, MAX_SOURCES, 2 * MAX_SOURCES + 3] {
            let cases = cases(&mut rng, &dev.device, extra);
            let sizes: Vec<usize> = cases.iter().map(|c| c.values.len()).collect();
            let (offsets, len) = layout(&mut rng, &sizes);
            let want = reference(&cases, &offsets, len);
            let label = format!("{} {} sources", dev.description, cases.len());

            let twin = floats(pack_flat_twin(sources(&cases), &offsets, len));
            assert_eq!(twin, want, "{label}: twin");

            let count = LaunchCount::start();
            let got = floats(pack_flat(sources(&cases), &offsets, len));
            let launches = count.now();
            drop(count);
            assert_eq!(got, want, "{label}: pack_flat");
            if dev.is_gpu {
                // The views reach the kernel as they are: no copy launches before it.
                // One op per MAX_SOURCES sources, one launch per `per_launch` of an op's.
                let want_launches: usize = (0..cases.len())
                    .step_by(MAX_SOURCES)
                    .map(|at| (cases.len() - at).min(MAX_SOURCES).div_ceil(per_launch))
                    .sum();
                assert_eq!(launches, want_launches, "{label}: launches");
            }

            // Over a buffer of NaN: every element is written.
            let nan =
                Tensor::<1>::from_data(TensorData::new(vec![f32::NAN; len], [len]), &dev.device);
            let got = floats(pack_flat_into(nan, sources(&cases), &offsets));
            assert_eq!(got, want, "{label}: pack_flat_into over NaN");
        }
    }
}

#[test]
fn pack_flat_into_keeps_a_buffer_held_elsewhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(35);
    for dev in devices() {
        let cases = cases(&mut rng, &dev.device, 3);
        let sizes: Vec<usize> = cases.iter().map(|c| c.values.len()).collect();
        let (offsets, len) = layout(&mut rng, &sizes);
        let before = vec![7f32; len];
        let held = Tensor::<1>::from_data(TensorData::new(before.clone(), [len]), &dev.device);
        let got = floats(pack_flat_into(held.clone(), sources(&cases), &offsets));
        assert_eq!(got, reference(&cases, &offsets, len), "{}", dev.description);
        assert_eq!(
            floats(held),
            before,
            "{}: the held buffer was written",
            dev.description
        );
    }
}

#[test]
fn pack_flat_of_f16_sources_takes_the_twin() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for dev in devices() {
        // Halves up to 64: exact in f16.
        let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..5).map(|i| 64.0 - i as f32).collect();
        let ta = upload(&a, [3, 4], &dev.device).cast(DType::F16).transpose();
        let tb = upload(&b, [1, 5], &dev.device).cast(DType::F16);
        let got = pack_flat(vec![ta, tb], &[2, 20], 30);
        assert_eq!(got.dtype(), DType::F16, "{}", dev.description);
        let mut want = vec![0f32; 30];
        want[2..14].copy_from_slice(&transpose(&a, 3, 4));
        want[20..25].copy_from_slice(&b);
        assert_eq!(floats(got), want, "{}", dev.description);
    }
}

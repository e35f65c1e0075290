//! The trainable parameters packed into a few flat buffers ("groups": one dtype each, at most
//! [`MAX_GROUP`] elements unless one parameter alone is larger), so that the optimizer's gradient
//! norm is one reduction and its update one launch per group instead of one of each per parameter.
//!
//! Each parameter starts at an offset aligned to [`ALIGN`] elements: cubecl makes a slice of a
//! buffer a view (no copy, no launch) when both its ends fall on the device's offset alignment
//! (256 bytes under wgpu's default limits), so the parameters set from an updated group are views
//! of it wherever their length allows. The padding between members is zero in gradients and
//! weights, so it adds nothing to the norm and stays zero through every update.

use burn::tensor::{DType, Tensor};

use crate::kernels::pack_flat::pack_flat;

/// Member offsets are multiples of this many elements (256 bytes of f32).
pub const ALIGN: usize = 64;

/// Elements a group holds at most (64 MiB of f32: under the 128 MiB a single buffer may take on
/// some adapters, lavapipe's among them).
pub const MAX_GROUP: usize = 1 << 24;

/// One parameter's place in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its position in [`crate::model::named::trainable_mut`]'s order.
    pub index: usize,
    pub offset: usize,
    pub numel: usize,
}

/// A flat buffer of parameters of one dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub dtype: DType,
    /// Elements, padding included.
    pub len: usize,
    pub members: Vec<Member>,
}

/// Where every trainable parameter lives in the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub groups: Vec<Group>,
    /// Parameters laid out.
    pub count: usize,
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Layout {
    /// The layout of parameters of `(numel, dtype)`, in trainable order: each joins the last group
    /// of its dtype while that stays within [`MAX_GROUP`].
    pub fn new(params: &[(usize, DType)]) -> Self {
        let mut groups: Vec<Group> = vec![];
        for (index, &(numel, dtype)) in params.iter().enumerate() {
            let open = groups
                .iter()
                .rposition(|g| g.dtype == dtype)
                .filter(|&i| groups[i].len + numel <= MAX_GROUP);
            let gi = open.unwrap_or_else(|| {
                groups.push(Group {
                    dtype,
                    len: 0,
                    members: vec![],
                });
                groups.len() - 1
            });
            let g = &mut groups[gi];
            g.members.push(Member {
                index,
                offset: g.len,
                numel,
            });
            g.len = round_up(g.len + numel);
        }
        Self {
            groups,
            count: params.len(),
        }
    }

    /// Per group, its members' `tensors` (`[numel]` each, in trainable order) packed into one
    /// `[len]` buffer, zero in the padding. A group of one unpadded member is that tensor itself.
    pub fn flatten(&self, tensors: Vec<Tensor<1>>) -> Vec<Tensor<1>> {
        self.flatten_2d(tensors.into_iter().map(Tensor::unsqueeze).collect())
    }

    /// [`Layout::flatten`] of `[rows, cols]` tensors with `rows · cols = numel` in row-major
    /// order, whatever their strides: the gradients as burn gives them (a weight's is a
    /// transposed view), which the device packs without copying them contiguous first
    /// ([`pack_flat`]: one launch per 16 members on wgpu; zeros and a `slice_assign` per member
    /// on the CPU backend, as before).
    pub fn flatten_2d(&self, tensors: Vec<Tensor<2>>) -> Vec<Tensor<1>> {
        let mut slots: Vec<Option<Tensor<2>>> = tensors.into_iter().map(Some).collect();
        self.groups
            .iter()
            .map(|g| {
                let (offsets, mut sources): (Vec<usize>, Vec<Tensor<2>>) = g
                    .members
                    .iter()
                    .map(|m| {
                        let t = slots[m.index].take().unwrap_or_else(|| {
                            unreachable!("parameter {} laid out twice", m.index)
                        });
                        (m.offset, t)
                    })
                    .unzip();
                let whole = matches!(g.members.as_slice(), [m] if m.numel == g.len);
                match sources.pop() {
                    // Reshaping a contiguous tensor is free; a strided one costs the copy
                    // packing would.
                    Some(t) if whole => t.reshape([g.len]),
                    last => pack_flat(sources.into_iter().chain(last).collect(), &offsets, g.len),
                }
            })
            .collect()
    }

    /// Each parameter's `[numel]` slice of the groups' `flats`, in trainable order.
    pub fn split(&self, flats: &[Tensor<1>]) -> Vec<Tensor<1>> {
        let mut out: Vec<Option<Tensor<1>>> = vec![None; self.count];
        for (g, flat) in self.groups.iter().zip(flats) {
            for m in &g.members {
                out[m.index] = Some(if m.numel == g.len {
                    flat.clone()
                } else {
                    flat.clone().narrow(0, m.offset, m.numel)
                });
            }
        }
        out.into_iter()
            .map(|t| t.unwrap_or_else(|| unreachable!("every parameter is in a group")))
            .collect()
    }

    /// Per group, its members' host `values` (`None`: zeros) packed like [`Layout::flatten`].
    pub fn pack_host(&self, values: &[Option<Vec<f32>>]) -> Vec<Vec<f32>> {
        self.groups
            .iter()
            .map(|g| {
                let mut flat = vec![0f32; g.len];
                for m in &g.members {
                    if let Some(v) = &values[m.index] {
                        flat[m.offset..m.offset + m.numel].copy_from_slice(v);
                    }
                }
                flat
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_aligned_in_order_and_groups_stay_bounded() {
        let big = MAX_GROUP - 100;
        let l = Layout::new(&[
            (10, DType::F32),
            (64, DType::F32),
            (3, DType::F16),
            (big, DType::F32),
            (MAX_GROUP + 5, DType::F32),
            (7, DType::F32),
        ]);
        let at = |i: usize| {
            l.groups
                .iter()
                .enumerate()
                .find_map(|(gi, g)| {
                    g.members
                        .iter()
                        .find(|m| m.index == i)
                        .map(|m| (gi, m.offset))
                })
                .unwrap()
        };
        assert_eq!(at(0), (0, 0));
        assert_eq!(
            at(1),
            (0, 64),
            "the second starts at the next multiple of 64"
        );
        assert_eq!(at(2), (1, 0), "another dtype, another group");
        assert_eq!(at(3), (2, 0), "would overflow group 0: a new group");
        assert_eq!(at(4), (3, 0), "larger than a group: its own");
        assert_eq!(at(5).0, 4, "the oversized group takes nothing more");
        for g in &l.groups {
            assert_eq!(g.len % ALIGN, 0);
            assert!(g.len <= MAX_GROUP || g.members.len() == 1);
            for m in &g.members {
                assert_eq!(m.offset % ALIGN, 0);
                assert!(m.offset + m.numel <= g.len);
            }
        }
        let host = l.pack_host(&[
            Some(vec![1.0; 10]),
            None,
            Some(vec![2.0; 3]),
            None,
            None,
            None,
        ]);
        assert_eq!(host[0][..10], [1.0; 10]);
        assert!(host[0][10..].iter().all(|&x| x == 0.0));
        assert_eq!(host[1], [vec![2.0; 3], vec![0.0; 61]].concat());
    }

    #[test]
    fn flatten_then_split_gives_the_tensors_back() {
        let device = crate::device::cpu_device().device;
        let sizes = [5usize, 64, 1, 130];
        let l = Layout::new(&sizes.map(|n| (n, DType::F32)));
        let values: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 1000 + j) as f32).collect())
            .collect();
        let tensors: Vec<Tensor<1>> = values
            .iter()
            .map(|v| {
                Tensor::from_data(burn::tensor::TensorData::new(v.clone(), [v.len()]), &device)
            })
            .collect();
        let flats = l.flatten(tensors);
        assert_eq!(flats.len(), 1);
        let back: Vec<f32> = flats[0].clone().into_data().try_to_vec().unwrap();
        let want = l.pack_host(&values.iter().cloned().map(Some).collect::<Vec<_>>());
        assert_eq!(back, want[0], "padding zero, members in place");
        for (t, v) in l.split(&flats).into_iter().zip(&values) {
            assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), *v);
        }
    }

    #[test]
    fn flatten_2d_reads_strided_views_in_row_major_order() {
        let device = crate::device::cpu_device().device;
        let l = Layout::new(&[(15, DType::F32), (7, DType::F32)]);
        // [3, 5] seen transposed as [5, 3]: element (i, j) is base (j, i).
        let base: Vec<f32> = (0..15).map(|x| x as f32).collect();
        let t =
            Tensor::<2>::from_data(burn::tensor::TensorData::new(base.clone(), [3, 5]), &device);
        let row: Vec<f32> = (0..7).map(|x| 100.0 + x as f32).collect();
        let v = Tensor::<2>::from_data(burn::tensor::TensorData::new(row.clone(), [1, 7]), &device);
        let flats = l.flatten_2d(vec![t.transpose(), v]);
        let transposed: Vec<f32> = (0..5)
            .flat_map(|i| (0..3).map(move |j| (j * 5 + i) as f32))
            .collect();
        let want = l.pack_host(&[Some(transposed), Some(row)]);
        let got: Vec<f32> = flats[0].clone().into_data().try_to_vec().unwrap();
        assert_eq!(got, want[0]);
    }
}

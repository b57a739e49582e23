//! A convolution joined to the max pool that alone reads its output:
//! the 7x7 stride-2 stems of ResNet, DenseNet and GoogLeNet, and
//! GoogLeNet's 3x3 layer before its second pool.
//!
//! Why: the stem's output (64 channels at 112x112, 3.2 MB) is past L2:
//! the convolution writes it out to memory and the pool reads it back, to
//! keep a quarter of it. The same stem ran at 81% of the FMA peak on a
//! 96x96 input, whose output stays in L2, and at 64-71% on 224x224.
//!
//! How: the output rows are computed a band at a time into a scratch of
//! about 256 KB (`maxpool::Bands`; the tiles of `Conv`'s row-by-row
//! path, writing the band's rows), and each band is pooled from there
//! into the output rows whose windows it holds. Rows two bands' windows share (one, for
//! a 3x3 stride-2 pool) move to the top of the scratch rather than being
//! computed twice.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use super::{rows_beat_grid, scratch, split_phases, Conv, Geometry, Layout, Run};
use crate::ops::maxpool::{self, join_pools, Bands};
use crate::ops::pointwise::{strips, Isa};
use crate::ops::Level;

/// Pooled rows a band computes (`maxpool::band_rows`).
pub(super) fn band_rows(s: &super::Shape, pool: &Geometry) -> usize {
    maxpool::band_rows(s.c_out * s.out_hw.1, pool)
}

impl Conv {
    /// This convolution with `pool` (over its output) after it: its
    /// output becomes the pool's, of `out_shape`.
    fn with_pool(&self, pool: Geometry, out_shape: &[usize]) -> Conv {
        Conv {
            pool: Some(pool),
            out_shape: out_shape.into(),
            ..self.clone()
        }
    }

    /// [`Conv::compute_with`] with the max pool: `band` pooled rows at a
    /// time (see the module docs).
    pub(super) fn compute_pooled(
        &self,
        input: &[f32],
        output: &mut [f32],
        level: Level,
        (pool, band): (Geometry, usize),
    ) -> TractResult<()> {
        let s = self.shape;
        let (h, w) = s.in_hw;
        let wo = s.out_hw.1;
        let (po, pw) = pool.out_hw;
        ensure!(self.layout == Layout::Grid && !self.epilogue.residual);
        ensure!(pool.in_hw == s.out_hw && band > 0, "conv pool geometry");
        ensure!(input.len() == s.images * s.c_in * h * w, "conv input size");
        ensure!(
            output.len() == s.images * s.c_out * po * pw,
            "conv output size"
        );
        let isa = Isa::of(level)?;
        let cap = Bands::new(pool, band).cap();
        let mut x = scratch(s.groups * s.group_len(Layout::Grid))?;
        let mut x = x.try_as_plain_ram_mut()?;
        let x = x.as_slice_mut::<f32>()?;
        // Every row a band's pool reads is written first, by the tiles or
        // by the move of the previous band's last rows.
        let mut rows = scratch(s.c_out * cap * wo)?;
        let mut rows = rows.try_as_plain_ram_mut()?;
        let rows = rows.as_slice_mut::<f32>()?;
        for image in 0..s.images {
            let planes = &input[image * s.c_in * h * w..][..s.c_in * h * w];
            let out = &mut output[image * s.c_out * po * pw..][..s.c_out * po * pw];
            split_phases(&s, planes, x);
            for b in Bands::new(pool, band) {
                b.keep(rows, cap * wo, wo);
                let first = b.rows.start;
                let runs: Vec<Run> = (b.fresh..b.rows.end)
                    .flat_map(|y| {
                        strips(wo, isa)
                            .map(move |r| (y * s.wp() + r.first, (y - first) * wo + r.first, r))
                    })
                    .collect();
                self.tiles(isa, x, (&mut *rows, cap * wo, None), &runs);
                // Each channel's band pooled, the channels over the pool.
                let rows = &*rows;
                let cost = s.c_out * b.pooled.len() * pw * 2 * pool.kernel;
                let _ = par_chunks_mut(out, po * pw, cost, |c0, chunk| {
                    let mut scratch = Vec::new();
                    for (c, plane) in chunk.chunks_exact_mut(po * pw).enumerate() {
                        b.pool(&rows[(c0 + c) * cap * wo..], plane, &mut scratch, level);
                    }
                    Ok(())
                });
            }
        }
        Ok(())
    }
}

/// Joins each of the project's convolutions on the grid, without a
/// residual, to the project's max pool when that pool alone reads it.
/// Runs after `maxpool::install`. Returns how many it joined.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let Ok(isa) = Isa::of(Level::detect()) else {
        return Ok(0);
    };
    join_pools(
        model,
        "onnx-lambda conv and max pool",
        |conv: &Conv, pool, shape| {
            // The bands are computed row by row: where whole grid rows beat
            // that (GoogLeNet's 64 -> 192 layer at 56x56 with AVX-512: 6.7 ->
            // 7.6 ms joined), the layer and its pool stay apart.
            let (s, g) = (conv.shape, pool.geometry());
            let joins = conv.layout == Layout::Grid
                && conv.winograd.is_none()
                && !conv.epilogue.residual
                && conv.pool.is_none()
                && rows_beat_grid(&s, isa)
                && g.in_hw == s.out_hw
                && g.channels == s.c_out
                && pool.batched() == (conv.out_shape.len() == 4);
            joins.then(|| conv.with_pool(g, shape))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::available;
    use crate::ops::conv::tests::{epilogues, reference, shape};
    use crate::ops::testing::{levels, max_pool, noise, pool_over, JOINED_POOLS, VECTOR_LEVELS};

    /// A stem-like layer and smaller ones, pools of 3x3 stride 2 (padded
    /// and in ceil mode), 2x2 stride 2 and 3x3 stride 1, bands of one
    /// pooled row up to the whole output, two images: against the
    /// convolution's definition then the pool's, at every vector level.
    #[test]
    fn matches_a_convolution_then_its_max_pool() {
        let convs = [
            shape(
                1,
                1,
                (3, 16),
                (37, 41),
                (7, 7),
                (2, 2),
                (1, 1),
                [3, 3, 3, 3],
            ),
            shape(
                2,
                1,
                (5, 13),
                (15, 12),
                (3, 3),
                (1, 1),
                (1, 1),
                [1, 1, 1, 1],
            ),
            shape(1, 2, (8, 8), (19, 17), (3, 3), (1, 1), (1, 1), [0, 1, 2, 1]),
        ];
        let mut cases = 0;
        for level in levels("conv with max pool", VECTOR_LEVELS) {
            for (n, s) in convs.iter().enumerate() {
                let k = s.c_in_group() * s.kernel.0 * s.kernel.1;
                let w = noise(s.c_out * k, 21 + n as u32);
                let b = noise(s.c_out, 22 + n as u32);
                let x = noise(s.images * s.c_in * s.in_hw.0 * s.in_hw.1, 23 + n as u32);
                for e in epilogues().into_iter().filter(|e| !e.residual) {
                    let conv = reference(s, &w, &b, e, &x, &[]);
                    for &(kernel, stride, pad, ceil) in &JOINED_POOLS {
                        let g = pool_over((s.c_out, s.out_hw), (kernel, stride, pad), ceil);
                        let want = max_pool(&g, s.images * s.c_out, &conv);
                        let op = Conv::with_layout(*s, (&[], &[]), &w, &b, e, Layout::Grid);
                        for band in [1, 2, 3, g.out_hw.0, band_rows(s, &g)] {
                            let mut got = vec![f32::NAN; want.len()];
                            op.compute_pooled(&x, &mut got, level, (g, band)).unwrap();
                            for (i, (a, want)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (a - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "{level:?} {s:?} {e:?} {g:?} band {band} at {i}: {a} vs {want}"
                                );
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        if available() {
            assert!(cases > 100, "{cases}");
        }
    }

    /// Split over two threads (the tiles of each band, then its pool by
    /// channels), every output is written once and equals the one-thread
    /// result bit for bit.
    #[test]
    fn two_threads_give_the_bits_of_one() {
        if !available() {
            return; // tract runs these layers on this CPU.
        }
        let threads = crate::ops::OperatorPool::new(2);
        let s = shape(
            2,
            1,
            (3, 24),
            (41, 64),
            (7, 7),
            (2, 2),
            (1, 1),
            [3, 3, 3, 3],
        );
        let g = pool_over((s.c_out, s.out_hw), (3, 2, 1), false);
        let w = noise(s.c_out * s.c_in * 49, 3);
        let b = noise(s.c_out, 4);
        let x = noise(s.images * s.c_in * s.in_hw.0 * s.in_hw.1, 5);
        let op = Conv::with_layout(s, (&[], &[]), &w, &b, epilogues()[1], Layout::Grid);
        let len = s.images * s.c_out * g.out_hw.0 * g.out_hw.1;
        let level = Level::detect();
        let mut one = vec![f32::NAN; len];
        op.compute_pooled(&x, &mut one, level, (g, 2)).unwrap();
        let mut two = vec![f32::NAN; len];
        threads
            .run(|| op.compute_pooled(&x, &mut two, level, (g, 2)))
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(one.iter().all(|v| v.is_finite()));
        assert_eq!(bits(&one), bits(&two));
    }

    /// An ONNX `Conv`, `Relu` and `MaxPool` (ResNet's stem, on a smaller
    /// input whose output rows, 32 pixels, are whole vectors at every
    /// level) become one operator whose results are tract's; a pool that
    /// is not the convolution's only reader stays apart.
    #[test]
    fn install_joins_a_stem_to_its_pool() {
        use crate::ops::testing::{onnx, run_optimized};
        if !available() {
            return; // tract runs these layers on this CPU.
        }
        let pool = || onnx::max_pool("r", "y", (3, 2), vec![onnx::ints("pads", &[1; 4])]);
        let conv = onnx::node(
            "Conv",
            &["x", "w", "b"],
            "c",
            vec![onnx::ints("strides", &[2, 2]), onnx::ints("pads", &[3; 4])],
        );
        let relu = onnx::node("Relu", &["c"], "r", vec![]);
        let weights = || {
            vec![
                onnx::weights("w", vec![16, 3, 7, 7], 1),
                onnx::weights("b", vec![16], 2),
            ]
        };
        let x = Tensor::from_shape(&[1, 3, 45, 96], &noise(3 * 45 * 96, 7)).unwrap();
        let count =
            |m: &TypedModel, name: &str| m.nodes.iter().filter(|n| n.op.name() == name).count();
        let model = onnx::decluttered(
            vec![conv.clone(), relu.clone(), pool()],
            weights(),
            &[1, 3, 45, 96],
            17,
        );
        let want = run_optimized(model.clone(), &x);
        let mut ours = model;
        crate::ops::install(&mut ours).unwrap();
        assert_eq!(
            count(&ours, "MaxPool(onnx-lambda)"),
            0,
            "the pool is joined"
        );
        let joined = ours
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<Conv>())
            .filter(|c| c.pool.is_some())
            .count();
        assert_eq!(joined, 1);
        let got = run_optimized(ours, &x);
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // The ReLU's output also read by a global pool: the pool stays apart.
        let mut nodes = vec![conv, relu, pool()];
        nodes[2].output = vec!["p".into()];
        nodes.push(onnx::node("GlobalMaxPool", &["r"], "g", vec![]));
        nodes.push(onnx::node("Add", &["p", "g"], "y", vec![]));
        let mut both = onnx::decluttered(nodes, weights(), &[1, 3, 45, 96], 17);
        crate::ops::install(&mut both).unwrap();
        assert_eq!(
            count(&both, "MaxPool(onnx-lambda)"),
            1,
            "a shared output is not joined"
        );
    }
}

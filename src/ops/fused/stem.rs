//! A stem and the depthwise layer after it, as one operator.
//!
//! Why: MobileNetV2's and MnasNet's first block is a 3 -> 32 stem and a
//! 32-channel depthwise layer at 112x112 with nothing between them. Apart,
//! the stem writes 1.6 MB of NCHW planes that the depthwise row loop copies
//! into its padded phase scratch again: at AVX2 the pair took 0.69 ms on
//! AMD EPYC Zen 4 where ONNX Runtime, whose stem writes 8-channel blocks,
//! took 0.51 (docs/operators.md, "Channel-blocked pairs").
//!
//! How: as a channel-blocked expansion pair (`fused/mod.rs`). Two panels
//! of 8 of the stem's channels at a time go straight into the depthwise
//! layer's padded blocked scratch, one vector of a panel's channels per
//! pixel: each stem output row's taps are copied out of the stem's phase
//! scratch and run through the pointwise channel-blocked tile
//! (`Stem::compute_blocked`); the depthwise layer convolves that scratch
//! and transposes into its NCHW output.

use std::cell::RefCell;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{join_depthwise, MIN_BLOCKED_PIXELS};
use crate::ops::depthwise::Depthwise;
use crate::ops::pointwise::{Pointwise, PANEL};
use crate::ops::stem::Stem;
use crate::ops::{par_planes, Level};

/// `depthwise(stem(x))`, without the tensor between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StemDepthwise {
    stem: Stem,
    depthwise: Depthwise,
}

thread_local! {
    /// Per-thread phase scratch of the stem's input, one image's.
    static PHASES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl StemDepthwise {
    /// Computes `output` (the depthwise layer's) from `input` (the
    /// stem's), two panels at a time, across tract's executor when one is
    /// installed.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    /// [`StemDepthwise::compute`] with the given instruction set: an error
    /// unless [`StemDepthwise::blocked`] at `level`.
    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        ensure!(self.blocked(level), "no channel-blocked join at {level:?}");
        let (s, g) = (self.stem.geometry(), self.depthwise.geometry());
        let m = g.channels;
        let in_image = s.channels * s.in_hw.0 * s.in_hw.1;
        let out_plane = g.out_hw.0 * g.out_hw.1;
        ensure!(input.len().is_multiple_of(in_image), "stem input size");
        ensure!(
            output.len() == input.len() / in_image * m * out_plane,
            "depthwise output size"
        );
        let stem_taps = s.channels * s.kernel * s.kernel;
        let per_image = m * (stem_taps * s.out_hw.0 * s.out_hw.1 + g.kernel * g.kernel * out_plane);
        let macs = input.len() / in_image * per_image;
        par_planes(output, (out_plane, m, PANEL), macs, |planes, chunk| {
            PHASES.with_borrow_mut(|phases| {
                let mut filled = None;
                let mut p0 = planes.start;
                while p0 < planes.end {
                    // Up to two panels of planes, within one image.
                    let (image, c0) = (p0 / m, p0 % m);
                    let end = planes.end.min(p0 + 2 * PANEL).min((image + 1) * m);
                    if filled != Some(image) {
                        let x = &input[image * in_image..][..in_image];
                        self.stem.phases(x, phases, level);
                        filled = Some(image);
                    }
                    let panels = c0 / PANEL..(c0 + end - p0) / PANEL;
                    let out = &mut chunk[(p0 - planes.start) * out_plane..];
                    self.depthwise
                        .block_into(level, p0..end, out, |at, padded| {
                            self.stem.compute_blocked(phases, panels, at, padded, level)
                        })?;
                    p0 = end;
                }
                Ok(())
            })
        })
    }

    /// Whether the pair runs joined at `level`: whole panels, planes of at
    /// least [`MIN_BLOCKED_PIXELS`], on both x86 levels (with AVX-512 too,
    /// unlike the expansion pairs at stride 1: MobileNetV2's pair took
    /// 0.58-0.61 ms joined against 0.76-0.80 apart, where the stem's planes
    /// were written and then filled into the row loop's scratch).
    fn blocked(&self, level: Level) -> bool {
        let s = self.stem.geometry();
        self.depthwise.geometry().channels.is_multiple_of(PANEL)
            && s.out_hw.0 * s.out_hw.1 >= MIN_BLOCKED_PIXELS
            && Pointwise::blocks_at(level)
            && self.depthwise.blocks_at(level)
    }

    /// The depthwise layer's output shape for the stem's input shape.
    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        let between = self.stem.output_facts(&[&f32::fact(input)])?.remove(0);
        let fact = self.depthwise.output_facts(&[&between])?.remove(0);
        Ok(fact.shape.as_concrete().context("a fixed shape")?.into())
    }
}

impl Op for StemDepthwise {
    fn name(&self) -> StaticName {
        "StemDepthwise(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.stem.info()?;
        info.extend(self.depthwise.info()?);
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for StemDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1);
        let shape = self.output_shape(inputs[0].shape())?;
        // SAFETY: `compute` writes every plane of the output in full.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let src = inputs[0].try_as_plain_ram()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        self.compute(src.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for StemDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0].shape.as_concrete().context("a fixed shape")?;
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let mut cost = self.stem.cost(inputs)?;
        let between = self.stem.output_facts(inputs)?.remove(0);
        cost.extend(self.depthwise.cost(&[&between])?);
        Ok(cost)
    }

    as_op!();
}

/// Replaces every stem (without a joined pool) whose only reader is a
/// depthwise layer of its channels by the pair as one, where it runs
/// channel-blocked at this CPU's level. Returns how many it joined.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    join_depthwise(
        model,
        "onnx-lambda stem + depthwise",
        |stem: &Stem, depthwise| {
            let (s, g) = (stem.geometry(), depthwise.geometry());
            let fits = !stem.pooled()
                && stem.out_channels() == g.channels
                && s.out_hw == g.in_hw
                && stem.batched() == depthwise.batched();
            let op = StemDepthwise {
                stem: stem.clone(),
                depthwise: depthwise.clone(),
            };
            (fits && op.blocked(Level::detect())).then_some(op)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::depthwise::Geometry;
    use crate::ops::testing::{levels, noise, VECTOR_LEVELS};
    use crate::ops::Simd;

    /// A stem of `c` input channels (`k`x`k`, stride `s`, padding `k / 2`)
    /// on `hw`, with ReLU6, into `m` channels, then a depthwise layer
    /// (`dk`x`dk`, stride `ds`) with ReLU6.
    fn pair(
        c: usize,
        hw: (usize, usize),
        (k, s): (usize, usize),
        m: usize,
        (dk, ds): (usize, usize),
    ) -> StemDepthwise {
        let side = |n: usize, k: usize, s: usize| (n + 2 * (k / 2) - k) / s + 1;
        let geometry = |channels, in_hw: (usize, usize), k, s| Geometry {
            channels,
            in_hw,
            out_hw: (side(in_hw.0, k, s), side(in_hw.1, k, s)),
            kernel: k,
            stride: (s, s),
            pad: (k / 2, k / 2),
        };
        let relu6 = Some((0.0, 6.0));
        let g = geometry(c, hw, k, s);
        let taps = c * k * k;
        let stem = Stem::new(g, m, &noise(m * taps, 1), &noise(m, 2), relu6, true);
        let d = geometry(m, g.out_hw, dk, ds);
        let depthwise = Depthwise::new(d, noise(m * dk * dk, 3), noise(m, 4), relu6, true);
        StemDepthwise { stem, depthwise }
    }

    /// The joined operator writes the same bits as the stem and the
    /// depthwise layer in turn (both sum each output in one FMA chain, in
    /// the same order), at every level that joins, on one thread and on
    /// two, for two images, odd planes, a lone last panel, strided and
    /// 5x5 layers on either side; nowhere else does it run.
    #[test]
    fn matches_the_two_operators_in_turn() {
        let pool = crate::ops::OperatorPool::new(2);
        for level in levels("fused stem", VECTOR_LEVELS) {
            let mut joined = 0;
            for (c, hw, stem, m, depthwise) in [
                (3, (32, 30), (3, 2), 32, (3, 1)),
                (3, (29, 27), (3, 2), 24, (3, 2)),
                (1, (20, 23), (5, 1), 16, (5, 1)),
                (4, (25, 25), (3, 2), 8, (3, 2)),
                (3, (12, 12), (3, 2), 16, (3, 1)),
                (3, (24, 24), (3, 2), 12, (3, 1)),
            ] {
                let op = pair(c, hw, stem, m, depthwise);
                let case = format!("{level:?}: {c} -> {m} on {hw:?}, {stem:?} then {depthwise:?}");
                let images = 2;
                let x = noise(images * c * hw.0 * hw.1, m as u32);
                let s = op.stem.geometry();
                let mut between = vec![f32::NAN; images * m * s.out_hw.0 * s.out_hw.1];
                op.stem.compute(&x, &mut between).unwrap();
                let g = op.depthwise.geometry();
                let mut want = vec![f32::NAN; images * m * g.out_hw.0 * g.out_hw.1];
                op.depthwise.compute(&between, &mut want).unwrap();
                let mut one = vec![f32::NAN; want.len()];
                let ran = op.compute_with(&x, &mut one, level);
                if !op.blocked(level) {
                    assert!(ran.is_err(), "{case}: ran where it does not join");
                    continue;
                }
                ran.unwrap();
                let mut two = vec![f32::NAN; want.len()];
                pool.run(|| op.compute_with(&x, &mut two, level)).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&one), bits(&want), "{case}");
                assert_eq!(bits(&two), bits(&want), "{case}, 2 threads");
                joined += 1;
            }
            let want = match level.simd() {
                Simd::Avx2 | Simd::Avx512 => 4,
                _ => 0,
            };
            assert_eq!(joined, want, "{level:?}: joined");
        }
    }
}

//! An expansion (1x1) and the depthwise layer after it, as one operator.
//!
//! Why: in an inverted residual block the expansion writes a tensor 6
//! times wider than its input, which the depthwise layer reads once and
//! drops: on MobileNetV2's early layers (96 x 112 x 112, 4.8 MB) that trip
//! through memory costs more than the arithmetic on either side
//! (`onnx-lambda profile --by-node`: both layers ran at a fraction of
//! their rate on later, smaller layers).
//!
//! How, channel-blocked (AVX2 code, on both x86 levels): two panels of 8
//! expanded channels at a time are written by the expansion as one vector
//! of a panel's channels per pixel, straight into the depthwise layer's
//! padded blocked scratch, and convolved from there: the expanded planes
//! are never written, copied, transposed or split by stride phase. Every
//! pair on a plane of 10x10 or more is joined so at AVX2, the strided ones
//! with AVX-512 ([`ExpandDepthwise::blocked`]). Otherwise (AVX-512 at
//! stride 1, NEON, small planes), through the row loop: a panel of 8
//! expanded channel planes at a time is computed into a per-thread scratch
//! (at most 8 x 12,544 floats, in L2), and each plane goes straight into
//! the depthwise row loop; only for tensors at least the size of L2
//! ([`MIN_EXPANDED_BYTES`]), below which the two operators apart were
//! faster. Both halves are the project's own operators (`pointwise.rs`,
//! `depthwise.rs`); [`install`] pairs them after they are in, and joins a
//! stem to the depthwise layer it feeds the same way (`stem.rs`).

use std::cell::RefCell;
use std::ops::Range;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

mod stem;

use super::depthwise::Depthwise;
use super::pointwise::{Pointwise, PANEL};
use crate::ops::{par_planes, replace_with, sole_successor, Level, Simd};

/// Smallest expanded tensor (per image) worth joining through the row
/// loop: one at least the size of L2 (1 MiB per core on AMD Zen 4/5, 512
/// KiB on Zen 2, 1.25-2 MiB on recent Xeons). On MobileNetV2 that joins the
/// 4.8 MB 96 x 112 x 112 layer and the two 1.8 MB 144 x 56 x 56 ones;
/// joining the pairs that fit L2 as well was slower (docs/operators.md,
/// "Joined expansion"). Channel-blocked pairs are joined at any size.
const MIN_EXPANDED_BYTES: usize = 1 << 20;

/// Smallest plane joined channel-blocked. MobileNetV2's 7x7 pairs (49
/// pixels, 160 -> 960 channels) ran 0.015-0.02 ms slower each joined than
/// apart, where the row tile streams their 0.6 MB of weights, and MnasNet
/// as a whole 12% slower in `bench` with its 7x7 pairs joined; the 14x14
/// pairs (196 pixels) ran 0.01-0.03 ms faster. The bound sits between.
const MIN_BLOCKED_PIXELS: usize = 100;

/// `depthwise(pointwise(x))`, without the tensor between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpandDepthwise {
    expand: Pointwise,
    depthwise: Depthwise,
}

thread_local! {
    /// Per-thread expanded planes, reused across panels, layers and runs.
    static PLANES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl ExpandDepthwise {
    /// Computes `output` (the depthwise layer's) from `input` (the
    /// expansion's), panel by panel, across tract's executor when one is
    /// installed.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    /// [`ExpandDepthwise::compute`] with the given instruction set.
    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        let dims = self.expand.dims();
        let g = self.depthwise.geometry();
        let (in_plane, out_plane) = (dims.pixels, g.out_hw.0 * g.out_hw.1);
        ensure!(dims.m == g.channels && in_plane == g.in_hw.0 * g.in_hw.1);
        ensure!(
            input.len() == dims.images * dims.k * in_plane,
            "expand input size"
        );
        ensure!(
            output.len() == dims.images * dims.m * out_plane,
            "depthwise output size"
        );
        if output.is_empty() {
            return Ok(());
        }
        let macs = dims.images * dims.m * (dims.k * in_plane + g.kernel * g.kernel * out_plane);
        let blocked = self.blocked(level);
        par_planes(output, (out_plane, dims.m, PANEL), macs, |planes, chunk| {
            let mut p0 = planes.start;
            while p0 < planes.end {
                // Up to a panel of planes (two when channel-blocked), within
                // one image.
                let (image, c0) = (p0 / dims.m, p0 % dims.m);
                let span = if blocked { 2 * PANEL } else { PANEL };
                let end = planes.end.min(p0 + span).min((image + 1) * dims.m);
                let x = &input[image * dims.k * in_plane..][..dims.k * in_plane];
                let out = &mut chunk[(p0 - planes.start) * out_plane..];
                // Whole panels: the chunks are, when the channels are.
                if blocked {
                    let panels = c0 / PANEL..(c0 + end - p0) / PANEL;
                    self.depthwise
                        .block_into(level, p0..end, out, |at, padded| {
                            self.expand
                                .compute_blocked((x, None), panels, at, padded, level)
                        })?;
                } else {
                    self.planes(x, c0..c0 + (end - p0), out, p0 == planes.start)?;
                }
                p0 = end;
            }
            Ok(())
        })
    }

    /// Whether whole panels go channel-blocked at `level`: whole panels,
    /// planes of at least [`MIN_BLOCKED_PIXELS`], and with AVX-512 strided
    /// layers only (its 16-wide row loop beat the blocked AVX2 code at
    /// stride 1, where it needs no column split). Two panels at a time take
    /// each broadcast pixel for two weight vectors: 8 loads for 12 FMAs
    /// where one panel by 12 pixels took 13, and the expansion's input is
    /// read half as often (docs/operators.md, "Joined expansion").
    fn blocked(&self, level: Level) -> bool {
        let dims = self.expand.dims();
        let strided = self.depthwise.geometry().stride != (1, 1);
        dims.m.is_multiple_of(PANEL)
            && dims.pixels >= MIN_BLOCKED_PIXELS
            && (level.simd() == Simd::Avx2 || strided)
            && Pointwise::blocks_at(level)
            && self.depthwise.blocks_at(level)
    }

    /// One image's expanded planes `channels` into this thread's scratch,
    /// then each through the depthwise row loop into `out`. `first`: the
    /// thread's first plane of this run (its row scratch is zeroed).
    fn planes(
        &self,
        x: &[f32],
        channels: Range<usize>,
        out: &mut [f32],
        first: bool,
    ) -> TractResult<()> {
        let g = self.depthwise.geometry();
        let (in_plane, out_plane) = (self.expand.dims().pixels, g.out_hw.0 * g.out_hw.1);
        PLANES.with_borrow_mut(|scratch| {
            scratch.resize(channels.len() * in_plane, 0.0);
            self.expand.compute_channels(x, channels.clone(), scratch)?;
            for (i, c) in channels.enumerate() {
                let src = &scratch[i * in_plane..][..in_plane];
                let dst = &mut out[i * out_plane..][..out_plane];
                self.depthwise.plane_into(c, src, dst, first && i == 0);
            }
            Ok(())
        })
    }
}

impl ExpandDepthwise {
    /// The depthwise layer's output shape for the expansion's output.
    fn output_shape(&self) -> TractResult<TVec<usize>> {
        let expanded = f32::fact(self.expand.out_shape());
        let fact = self.depthwise.output_facts(&[&expanded])?.remove(0);
        Ok(fact.shape.as_concrete().context("a fixed shape")?.into())
    }
}

impl Op for ExpandDepthwise {
    fn name(&self) -> StaticName {
        "ExpandDepthwise(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.expand.info()?;
        info.extend(self.depthwise.info()?);
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for ExpandDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1);
        ensure!(
            inputs[0].shape() == self.expand.in_shape(),
            "expansion input {:?} is not {:?}",
            inputs[0].shape(),
            self.expand.in_shape()
        );
        let shape = self.output_shape()?;
        // SAFETY: `compute` writes every plane of the output in full.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let src = inputs[0].try_as_plain_ram()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        self.compute(src.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ExpandDepthwise {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(self.output_shape()?)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let mut cost = self.expand.cost(inputs)?;
        let expanded = f32::fact(self.expand.out_shape());
        cost.extend(self.depthwise.cost(&[&expanded])?);
        Ok(cost)
    }

    as_op!();
}

/// Replaces every pointwise operator whose only reader is a depthwise
/// operator (and which adds no residual) by the pair as one, where it
/// runs channel-blocked at this CPU's level or the expanded tensor is too
/// big for L2; then the stems (`stem.rs`). Returns how many pairs it
/// joined.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let joined = join_depthwise(
        model,
        "onnx-lambda expand + depthwise",
        |expand: &Pointwise, depthwise| {
            let g = depthwise.geometry();
            let dims = expand.dims();
            if expand.has_residual() || dims.m != g.channels || dims.pixels != g.in_hw.0 * g.in_hw.1
            {
                return None;
            }
            let op = ExpandDepthwise {
                expand: expand.clone(),
                depthwise: depthwise.clone(),
            };
            let expanded_bytes = dims.m * dims.pixels * std::mem::size_of::<f32>();
            (op.blocked(Level::detect()) || expanded_bytes >= MIN_EXPANDED_BYTES).then_some(op)
        },
    )?;
    Ok(joined + stem::install(model)?)
}

/// Replaces each node running an `A` whose only reader is a depthwise
/// operator by the operator `join` makes of the two, where it makes one,
/// named after the depthwise layer. Returns how many it replaced.
fn join_depthwise<A: TypedOp, J: TypedOp>(
    model: &mut TypedModel,
    what: &str,
    join: impl Fn(&A, &Depthwise) -> Option<J>,
) -> TractResult<usize> {
    let mut joined = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(first) = node.op_as::<A>() else {
            continue;
        };
        let Some(next) = sole_successor(model, id) else {
            continue;
        };
        let Some(op) = next.op_as::<Depthwise>().and_then(|d| join(first, d)) else {
            continue;
        };
        let (input, name, last) = (node.inputs[0], next.name.clone(), next.id);
        replace_with(model, what, &[input], (&name, op), last)?;
        joined += 1;
    }
    model.compact()?;
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::depthwise::Geometry;
    use crate::ops::pointwise::{Dims, Epilogue, Weights};
    use crate::ops::testing::{noise, VECTOR_LEVELS};
    use crate::ops::Simd;

    fn pair(m: usize, (h, w): (usize, usize), stride: usize, kernel: usize) -> ExpandDepthwise {
        let (images, k) = (2, 5);
        let dims = Dims {
            images,
            m,
            k,
            pixels: h * w,
        };
        let relu6 = Epilogue {
            pre: Some((0.0, 6.0)),
            ..Epilogue::default()
        };
        let expand = Pointwise::new(
            dims,
            (&[images, k, h, w], &[images, m, h, w]),
            Weights::Rows(&noise(m * k, 1)),
            &noise(m, 2),
            relu6,
        );
        let g = Geometry {
            channels: m,
            in_hw: (h, w),
            out_hw: ((h - 1) / stride + 1, (w - 1) / stride + 1),
            kernel,
            stride: (stride, stride),
            pad: (kernel / 2, kernel / 2),
        };
        let taps = kernel * kernel;
        let depthwise = Depthwise::new(g, noise(m * taps, 3), noise(m, 4), Some((0.0, 6.0)), true);
        ExpandDepthwise { expand, depthwise }
    }

    /// The joined operator writes what the two write in turn, at every
    /// vector level, on one thread and on two, with channels in whole
    /// panels and not. Same bits, except where the pair runs
    /// channel-blocked: there a plane's last pixels short of
    /// a vector are summed in one FMA chain, where the row tile's columns
    /// sum them in 2-8 (`pointwise`), so those agree to rounding.
    #[test]
    fn matches_the_two_operators_in_turn() {
        let pool = crate::ops::OperatorPool::new(2);
        for level in crate::ops::testing::levels("fused", VECTOR_LEVELS) {
            let mut blocked = 0;
            for (m, hw, stride, kernel) in [
                (16, (11, 10), 1, 3),
                (16, (7, 7), 1, 3),
                (16, (12, 9), 2, 3),
                (13, (10, 10), 2, 3),
                (24, (30, 30), 1, 3),
                (24, (16, 16), 2, 3),
                (8, (17, 15), 2, 5),
            ] {
                let op = pair(m, hw, stride, kernel);
                let dims = op.expand.dims();
                let x = noise(dims.images * dims.k * dims.pixels, m as u32);
                let mut expanded = vec![f32::NAN; dims.images * m * dims.pixels];
                op.expand.compute(&x, None, &mut expanded).unwrap();
                let g = op.depthwise.geometry();
                let mut want = vec![f32::NAN; dims.images * m * g.out_hw.0 * g.out_hw.1];
                op.depthwise.compute(&expanded, &mut want).unwrap();
                let mut one = vec![f32::NAN; want.len()];
                op.compute_with(&x, &mut one, level).unwrap();
                let mut two = vec![f32::NAN; want.len()];
                pool.run(|| op.compute_with(&x, &mut two, level)).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let case = format!("{level:?}: m {m} {hw:?} stride {stride}, {kernel}x{kernel}");
                assert_eq!(bits(&two), bits(&one), "{case}, 2 threads");
                let is_blocked = op.blocked(level);
                if is_blocked && !dims.pixels.is_multiple_of(8) {
                    for (i, (a, b)) in one.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{case} at {i}: {a} vs {b}"
                        );
                    }
                } else {
                    assert_eq!(bits(&one), bits(&want), "{case}");
                }
                blocked += usize::from(is_blocked);
            }
            let want = match level.simd() {
                Simd::Avx2 => 5,
                Simd::Avx512 => 3,
                _ => 0,
            };
            assert_eq!(blocked, want, "{level:?}: channel-blocked");
        }
    }
}

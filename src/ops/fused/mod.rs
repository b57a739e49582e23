//! An expansion (1x1) and the depthwise layer after it, as one operator.
//!
//! Why: in an inverted residual block the expansion writes a tensor 6
//! times wider than its input, which the depthwise layer reads once and
//! drops: on MobileNetV2's early layers (96 x 112 x 112, 4.8 MB) that trip
//! through memory costs more than the arithmetic on either side
//! (`onnx-lambda profile --by-node`: both layers ran at a fraction of
//! their rate on later, smaller layers).
//!
//! How: a panel of 8 expanded channel planes at a time is computed into a
//! per-thread scratch (at most 8 x 12,544 floats, in L2), and each plane
//! goes straight into the depthwise convolution. The expanded tensor never
//! exists. Only for tensors at least the size of L2 ([`MIN_EXPANDED_BYTES`]):
//! below that the trip is cheap and the two operators apart were faster.
//! Both halves are the project's own operators (`pointwise.rs`,
//! `depthwise.rs`), unchanged; [`install`] pairs them after they are in.

use std::cell::RefCell;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::depthwise::Depthwise;
use super::pointwise::{Pointwise, PANEL};
use crate::ops::{par_planes, replace_with, sole_successor};

/// Smallest expanded tensor (per image) worth joining: one at least the
/// size of L2 (1 MiB per core on AMD Zen 4/5, 512 KiB on Zen 2, 1.25-2 MiB
/// on recent Xeons). On MobileNetV2 that joins the 4.8 MB 96 x 112 x 112
/// layer and the two 1.8 MB 144 x 56 x 56 ones; joining the pairs that fit
/// L2 as well was slower (docs/operators.md, "Joined expansion").
const MIN_EXPANDED_BYTES: usize = 1 << 20;

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
        par_planes(output, (out_plane, dims.m, PANEL), macs, |planes, chunk| {
            PLANES.with_borrow_mut(|scratch| {
                let mut p0 = planes.start;
                while p0 < planes.end {
                    // Up to a panel of planes, within one image.
                    let (image, c0) = (p0 / dims.m, p0 % dims.m);
                    let end = planes.end.min(p0 + PANEL).min((image + 1) * dims.m);
                    let channels = c0..c0 + (end - p0);
                    scratch.resize(channels.len() * in_plane, 0.0);
                    let x = &input[image * dims.k * in_plane..][..dims.k * in_plane];
                    self.expand.compute_channels(x, channels.clone(), scratch)?;
                    for (i, c) in channels.enumerate() {
                        let at = (p0 + i - planes.start) * out_plane;
                        let src = &scratch[i * in_plane..][..in_plane];
                        let first = p0 + i == planes.start;
                        self.depthwise
                            .plane_into(c, src, &mut chunk[at..at + out_plane], first);
                    }
                    p0 = end;
                }
                Ok(())
            })
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
/// operator (and which adds no residual) by the pair as one, where the
/// expanded tensor is too big for L2. Returns how many pairs it joined.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut joined = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(expand) = node.op_as::<Pointwise>() else {
            continue;
        };
        let Some(next) = sole_successor(model, id) else {
            continue;
        };
        let Some(depthwise) = next.op_as::<Depthwise>() else {
            continue;
        };
        let g = depthwise.geometry();
        let dims = expand.dims();
        let expanded_bytes = dims.m * dims.pixels * std::mem::size_of::<f32>();
        if expand.has_residual()
            || dims.m != g.channels
            || dims.pixels != g.in_hw.0 * g.in_hw.1
            || expanded_bytes < MIN_EXPANDED_BYTES
        {
            continue;
        }
        let op = ExpandDepthwise {
            expand: expand.clone(),
            depthwise: depthwise.clone(),
        };
        let (input, name, last) = (node.inputs[0], next.name.clone(), next.id);
        replace_with(
            model,
            "onnx-lambda expand + depthwise",
            &[input],
            (&name, op),
            last,
        )?;
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

    fn pair(m: usize, (h, w): (usize, usize), stride: usize) -> ExpandDepthwise {
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
            kernel: 3,
            stride: (stride, stride),
            pad: (1, 1),
        };
        let depthwise = Depthwise::new(g, noise(m * 9, 3), noise(m, 4), Some((0.0, 6.0)), true);
        ExpandDepthwise { expand, depthwise }
    }

    /// The joined operator writes what the two write in turn, on one thread
    /// and on two, with channels in whole panels and not.
    #[test]
    fn matches_the_two_operators_in_turn() {
        // The joined operator runs the pointwise kernels: vector levels only.
        if crate::ops::testing::levels("fused", VECTOR_LEVELS).is_empty() {
            return;
        }
        let pool = crate::ops::OperatorPool::new(2);
        for (m, hw, stride) in [
            (16, (9, 11), 1),
            (16, (12, 7), 2),
            (13, (10, 10), 2),
            (24, (30, 30), 1),
        ] {
            let op = pair(m, hw, stride);
            let dims = op.expand.dims();
            let x = noise(dims.images * dims.k * dims.pixels, m as u32);
            let mut expanded = vec![f32::NAN; dims.images * m * dims.pixels];
            op.expand.compute(&x, None, &mut expanded).unwrap();
            let g = op.depthwise.geometry();
            let mut want = vec![f32::NAN; dims.images * m * g.out_hw.0 * g.out_hw.1];
            op.depthwise.compute(&expanded, &mut want).unwrap();
            let mut one = vec![f32::NAN; want.len()];
            op.compute(&x, &mut one).unwrap();
            let mut two = vec![f32::NAN; want.len()];
            pool.run(|| op.compute(&x, &mut two)).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&want), "m {m} {hw:?} stride {stride}");
            assert_eq!(
                bits(&two),
                bits(&want),
                "m {m} {hw:?} stride {stride}, 2 threads"
            );
        }
    }
}

//! Our own strided subsampling, one pass for every axis: what tract's
//! `Downsample` nodes do one axis at a time.
//!
//! Why: tract turns a strided 1x1 convolution (ResNet's and RegNet's
//! shortcut projections) into a 1x1 convolution on a `Downsample` of each
//! spatial axis, and each `Downsample` is an ndarray slice copied element
//! by element: 8% of RegNetY-400MF's inference, 3% of ResNet-50's
//! (`onnx-lambda profile`, docs/operators.md).
//!
//! How: a chain of `Downsample` nodes, each feeding only the next, becomes
//! one operator that keeps, on each axis, every `stride`-th position from
//! `modulo`; rows along the last axis are copied (stride 1) or gathered,
//! split over the pool by rows. It reads each kept input row once and
//! writes the output once.
//!
//! [`install`] replaces every chain of f32 `Downsample` nodes with
//! forward strides; others stay in tract.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::{replace_with, sole_successor};

/// Keeps positions `modulo, modulo + stride, ...` of every axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Subsample {
    /// `(stride, modulo)` per axis; `(1, 0)` keeps an axis whole.
    steps: Vec<(usize, usize)>,
}

impl Subsample {
    /// The kept length of an axis of `len` positions.
    fn kept(len: usize, (stride, modulo): (usize, usize)) -> usize {
        len.saturating_sub(modulo).div_ceil(stride)
    }

    /// The output's shape for an input of `shape`.
    fn out_shape(&self, shape: &[usize]) -> Vec<usize> {
        shape
            .iter()
            .zip(&self.steps)
            .map(|(&len, &step)| Subsample::kept(len, step))
            .collect()
    }

    /// `output` (row-major, [`Subsample::out_shape`]) from `input`
    /// (row-major, `shape`).
    pub(crate) fn compute(&self, input: &[f32], shape: &[usize], output: &mut [f32]) {
        let out_shape = self.out_shape(shape);
        let rank = shape.len();
        debug_assert_eq!(rank, self.steps.len());
        debug_assert_eq!(input.len(), shape.iter().product::<usize>());
        debug_assert_eq!(output.len(), out_shape.iter().product::<usize>());
        let width = out_shape.last().copied().unwrap_or(1);
        if output.is_empty() {
            return;
        }
        // Values between two positions of each input axis.
        let mut strides = vec![1; rank];
        for a in (0..rank.saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * shape[a + 1];
        }
        let (step, first) = self.steps.last().copied().unwrap_or((1, 0));
        let row_from = |row: usize| {
            // The input offset of output row `row`'s first value.
            let (mut at, mut rest) = (first * strides.last().copied().unwrap_or(1), row);
            for a in (0..rank.saturating_sub(1)).rev() {
                let (stride, modulo) = self.steps[a];
                let i = rest % out_shape[a];
                rest /= out_shape[a];
                at += (i * stride + modulo) * strides[a];
            }
            at
        };
        let _ = par_chunks_mut(output, width, output.len(), |first_row, chunk| {
            for (n, out) in chunk.chunks_exact_mut(width).enumerate() {
                let src = &input[row_from(first_row + n)..];
                if step == 1 {
                    out.copy_from_slice(&src[..width]);
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = src[j * step];
                    }
                }
            }
            Ok(())
        });
    }
}

impl Op for Subsample {
    fn name(&self) -> StaticName {
        "Subsample(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("(stride, modulo) per axis: {:?}", self.steps)])
    }

    op_as_typed_op!();
}

impl EvalOp for Subsample {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(input.rank() == self.steps.len(), "subsample rank");
        let shape = input.shape().to_vec();
        // SAFETY: `compute` writes every output row in full.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.out_shape(&shape))? };
        {
            let plain = input.try_as_plain_ram()?;
            let mut view = out.try_as_plain_ram_mut()?;
            self.compute(
                plain.as_slice::<f32>()?,
                &shape,
                view.as_slice_mut::<f32>()?,
            );
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Subsample {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        ensure!(input.datum_type == f32::datum_type() && input.rank() == self.steps.len());
        let shape: TVec<TDim> = input
            .shape
            .iter()
            .zip(&self.steps)
            .map(|(len, &(stride, modulo))| match (stride, modulo) {
                (1, 0) => len.clone(),
                _ => (len.clone() - modulo).div_ceil(stride as u64),
            })
            .collect();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// The `(axis, stride, modulo)` of a `Downsample` this operator can take.
fn step_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(usize, usize, usize)>> {
    let Some(down) = node.op_as::<Downsample>() else {
        return Ok(None);
    };
    let f32_in = model.outlet_fact(node.inputs[0])?.datum_type == f32::datum_type();
    Ok((f32_in && down.stride > 0).then_some((down.axis, down.stride as usize, down.modulo)))
}

/// Replaces every chain of f32 `Downsample` nodes (each feeding only the
/// next) with one [`Subsample`]. Returns how many chains it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if step_of(model, node)?.is_none() {
            continue;
        }
        // Not a chain's head: the Downsample before takes this one in.
        let before = model.node(node.inputs[0].node);
        let follows = step_of(model, before)?.is_some()
            && sole_successor(model, before.id).is_some_and(|n| n.id == id);
        if follows {
            continue;
        }
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let mut steps = vec![(1, 0); rank];
        let mut last = id;
        loop {
            let Some((axis, stride, modulo)) = step_of(model, model.node(last))? else {
                break;
            };
            // Two steps on one axis compose: keep every `s2`-th of what
            // `s1` kept, from the `m2`-th.
            let (s1, m1) = steps[axis];
            steps[axis] = (s1 * stride, m1 + s1 * modulo);
            match sole_successor(model, last) {
                Some(next) if step_of(model, next)?.is_some() => last = next.id,
                _ => break,
            }
        }
        let (input, name) = (node.inputs[0], node.name.clone());
        let op = Subsample { steps };
        replace_with(model, "onnx-lambda subsample", &[input], (&name, op), last)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{noise, run_plain, run_plain_all};

    /// Chains of tract's `Downsample` over `shape`: taken as one operator
    /// each, with tract's values, on odd lengths, a modulo, a stride
    /// longer than the axis, two steps on one axis and batch > 1.
    #[test]
    fn install_takes_downsample_chains_and_keeps_the_results() {
        type Chain<'a> = &'a [(usize, isize, usize)];
        let cases: [(&[usize], Chain); 5] = [
            (&[2, 3, 9, 7], &[(2, 2, 0), (3, 2, 0)]),
            (&[1, 5, 8, 11], &[(3, 3, 1), (2, 2, 1)]),
            (&[2, 4, 6], &[(1, 4, 0), (2, 5, 0)]),
            (&[3, 2, 13, 5], &[(2, 2, 1), (2, 3, 0), (3, 9, 0)]),
            (&[1, 2, 3, 4], &[(1, 7, 0)]),
        ];
        for (shape, chain) in cases {
            let mut model = TypedModel::default();
            let mut wire = model.add_source("x", f32::fact(shape)).unwrap();
            for (n, &(axis, stride, modulo)) in chain.iter().enumerate() {
                let op = Downsample::new(axis, stride, modulo);
                wire = model.wire_node(format!("down{n}"), op, &[wire]).unwrap()[0];
            }
            model.select_output_outlets(&[wire]).unwrap();
            let len = shape.iter().product();
            let input = Tensor::from_shape(shape, &noise(len, 7)).unwrap();
            let want = run_plain(&model, &[&input]);
            let want_shape = model.outlet_fact(wire).unwrap().shape.clone();
            let mut ours = model;
            assert_eq!(install(&mut ours).unwrap(), 1, "{shape:?} {chain:?}");
            assert_eq!(ours.nodes.len(), 2, "{shape:?} {chain:?}");
            let out = ours.outputs[0];
            assert_eq!(ours.outlet_fact(out).unwrap().shape, want_shape);
            assert_eq!(run_plain(&ours, &[&input]), want, "{shape:?} {chain:?}");
        }
    }

    /// A `Downsample` whose output another node also reads ends its chain:
    /// both outputs keep their values.
    #[test]
    fn a_shared_step_ends_the_chain() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 2, 8, 8])).unwrap();
        let a = model
            .wire_node("a", Downsample::new(2, 2, 0), &[x])
            .unwrap()[0];
        let b = model
            .wire_node("b", Downsample::new(3, 2, 1), &[a])
            .unwrap()[0];
        model.select_output_outlets(&[b, a]).unwrap();
        let input = Tensor::from_shape(&[1, 2, 8, 8], &noise(128, 3)).unwrap();
        let run = |m: &TypedModel| run_plain_all(m, &[&input]);
        let want = run(&model);
        let mut ours = model;
        assert_eq!(install(&mut ours).unwrap(), 2);
        assert_eq!(run(&ours), want);
    }
}

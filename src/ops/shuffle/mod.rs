//! Our own axis move for f32 tensors whose trailing axes stay in place:
//! a channel shuffle's transpose (ShuffleNet's `[2, C/2, H, W]` to
//! `[C/2, 2, H, W]`), as whole-plane copies.
//!
//! Why: tract's `MoveAxis` copies through a permuted view, value by value:
//! 15 nodes, 7-8% of ShuffleNetV2's inference (`onnx-lambda profile`,
//! docs/operators.md) for a copy of planes that are contiguous on both
//! sides.
//!
//! How: the axes after both ends of the move form blocks that are
//! contiguous in the input and in the output; each output block is one
//! copy of its input block, found by undoing the move on the block's
//! index. Split over the pool by blocks.
//!
//! [`install`] replaces every f32 `MoveAxis` with fixed shape whose blocks
//! hold at least [`MIN_BLOCK`] values; others stay in tract.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::replace_with;

/// Fewest values a block (the axes after the move) worth a copy each:
/// below that the copies' overhead outweighs tract's walk.
const MIN_BLOCK: usize = 16;

/// Moves axis `from` of an input of `shape` to position `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Shuffle {
    shape: TVec<usize>,
    from: usize,
    to: usize,
}

impl Shuffle {
    /// Values in a block: the axes after both ends of the move.
    fn block(&self) -> usize {
        self.shape[self.from.max(self.to) + 1..].iter().product()
    }

    fn out_shape(&self) -> TVec<usize> {
        let mut shape = self.shape.clone();
        let axis = shape.remove(self.from);
        shape.insert(self.to, axis);
        shape
    }

    /// `output` (row-major, the moved shape) from `input` (row-major,
    /// `shape`).
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) {
        let block = self.block();
        debug_assert_eq!(input.len(), self.shape.iter().product::<usize>());
        debug_assert_eq!(output.len(), input.len());
        if output.is_empty() {
            return;
        }
        let lead = self.from.max(self.to) + 1;
        let out_shape = self.out_shape();
        // Blocks between two positions of each leading input axis.
        let mut strides = vec![1; lead];
        for a in (0..lead - 1).rev() {
            strides[a] = strides[a + 1] * self.shape[a + 1];
        }
        // Which input axis each leading output axis is.
        let mut axes: Vec<usize> = (0..lead).collect();
        let axis = axes.remove(self.from);
        axes.insert(self.to, axis);
        let block_from = |index: usize| {
            let (mut at, mut rest) = (0, index);
            for a in (0..lead).rev() {
                at += rest % out_shape[a] * strides[axes[a]];
                rest /= out_shape[a];
            }
            at * block
        };
        let _ = par_chunks_mut(output, block, output.len(), |first, chunk| {
            for (n, out) in chunk.chunks_exact_mut(block).enumerate() {
                out.copy_from_slice(&input[block_from(first + n)..][..block]);
            }
            Ok(())
        });
    }
}

impl Op for Shuffle {
    fn name(&self) -> StaticName {
        "Shuffle(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis {} of {:?} to {}",
            self.from, self.shape, self.to
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Shuffle {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(input.shape() == &*self.shape, "shuffle input shape");
        // SAFETY: `compute` writes every block in full.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.out_shape())? };
        {
            let plain = input.try_as_plain_ram()?;
            let mut view = out.try_as_plain_ram_mut()?;
            self.compute(plain.as_slice::<f32>()?, view.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Shuffle {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.out_shape())))
    }

    as_op!();
}

/// Replaces every `MoveAxis` this module handles (see the module docs).
/// Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(&AxisOp::Move(from, to)) = node.op_as::<AxisOp>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        let Some(shape) = fact.shape.as_concrete() else {
            continue;
        };
        let op = Shuffle {
            shape: shape.into(),
            from,
            to,
        };
        if fact.datum_type != f32::datum_type() || from == to || op.block() < MIN_BLOCK {
            continue;
        }
        let (input, name) = (node.inputs[0], node.name.clone());
        replace_with(model, "onnx-lambda shuffle", &[input], (&name, op), id)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{noise, run_plain};

    /// Moves forward and back, across several axes and to the front, on
    /// blocks of one axis and of two: tract's values, bit for bit; a move
    /// whose blocks are too small, or of the last axis, is left to tract.
    #[test]
    fn install_takes_moves_of_leading_axes_and_keeps_the_results() {
        let cases: [(&[usize], usize, usize, bool); 7] = [
            (&[2, 58, 7, 9], 0, 1, true),
            (&[58, 2, 7, 9], 1, 0, true),
            (&[3, 4, 5, 6, 7], 0, 2, true),
            (&[3, 4, 5, 6, 7], 2, 0, true),
            (&[3, 4, 5, 6, 17], 3, 1, true),
            (&[2, 3, 4, 5], 0, 2, false),
            (&[4, 5, 6], 2, 0, false),
        ];
        for (shape, from, to, taken) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape)).unwrap();
            let y = model
                .wire_node("move", AxisOp::Move(from, to), &[x])
                .unwrap();
            model.select_output_outlets(&y).unwrap();
            let len = shape.iter().product();
            let input = Tensor::from_shape(shape, &noise(len, 3)).unwrap();
            let want = run_plain(&model, &[&input]);
            let mut ours = model;
            let count = install(&mut ours).unwrap();
            assert_eq!(count, usize::from(taken), "{shape:?} {from} -> {to}");
            let got = run_plain(&ours, &[&input]);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{shape:?} {from} -> {to}");
        }
    }

    /// Two threads write every block once, as one thread does.
    #[test]
    fn two_threads_give_the_blocks_of_one() {
        let op = Shuffle {
            shape: tvec![2, 58, 14, 14],
            from: 0,
            to: 1,
        };
        let input = noise(2 * 58 * 196, 4);
        let mut one = vec![f32::NAN; input.len()];
        op.compute(&input, &mut one);
        let mut two = vec![f32::NAN; input.len()];
        crate::ops::OperatorPool::new(2).run(|| op.compute(&input, &mut two));
        assert!(one.iter().all(|v| v.is_finite()));
        assert_eq!(one, two);
    }
}

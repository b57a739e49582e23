//! tract's declutter, without the pass that costs most and changes least.
//!
//! `ChangeAxes` was 16 of the 24 ms tract spent decluttering the bundled
//! MobileNetV2 (`Optimizer::declutter` pass by pass, AMD EPYC Zen 5), over
//! a third of the cold start. What it did there was take the batch axis of
//! size 1 out of each 1x1 convolution (32 more nodes); after our operators
//! and tract's optimiser, the plan is the same with or without it (same
//! operators, same per-operator times in `onnx-lambda profile`), and the
//! load 66-71 -> 44-47 ms.
//!
//! The pass exists to remove axis permutations: a graph that still moves
//! axes after the other passes (an NHWC model's transposes, say) gets the
//! full declutter, so no model runs slower for it.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::optim::Optimizer;

/// The pass left out unless the graph moves axes.
const CHANGE_AXES: &str = "ChangeAxes";

/// Declutters `model` in place (see the module docs).
pub(crate) fn declutter(model: &mut TypedModel) -> TractResult<()> {
    without_change_axes().optimize(model)?;
    if moves_axes(model) {
        model.declutter()?;
    }
    Ok(())
}

/// tract's declutter passes but `ChangeAxes`.
fn without_change_axes() -> Optimizer {
    let mut optimizer = Optimizer::declutter();
    optimizer
        .passes
        .retain(|p| !format!("{p:?}").starts_with(CHANGE_AXES));
    optimizer
}

/// Whether any node permutes axes (a transpose `ChangeAxes` may remove).
fn moves_axes(model: &TypedModel) -> bool {
    model
        .nodes
        .iter()
        .any(|n| matches!(n.op_as::<AxisOp>(), Some(AxisOp::Move(..))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::max;

    #[test]
    fn exactly_change_axes_is_left_out() {
        // A tract upgrade that renames the pass would otherwise silently
        // bring the 16 ms back.
        let full = Optimizer::declutter().passes.len();
        let lite = without_change_axes();
        assert_eq!(lite.passes.len(), full - 1);
        assert!(lite
            .passes
            .iter()
            .all(|p| !format!("{p:?}").starts_with(CHANGE_AXES)));
    }

    #[test]
    fn the_bundled_model_is_decluttered_without_change_axes() {
        let model = crate::ops::testing::bundled_decluttered();
        assert!(!moves_axes(&model));
    }

    /// NHWC input, moved to NCHW, a ReLU (`max` with 0), moved back:
    /// only `ChangeAxes` cancels the two moves across the ReLU.
    fn transposed_relu() -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 4, 5, 3])).unwrap();
        let x = model
            .wire_node("to_nchw", AxisOp::Move(3, 1), &[x])
            .unwrap();
        let zero = model.add_const("zero", rctensor4(&[[[[0f32]]]])).unwrap();
        let y = model.wire_node("relu", max(), &[x[0], zero]).unwrap();
        let y = model.wire_node("to_nhwc", AxisOp::Move(1, 3), &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    #[test]
    fn a_graph_that_moves_axes_still_gets_them_removed() {
        let mut lite = transposed_relu();
        without_change_axes().optimize(&mut lite).unwrap();
        assert!(moves_axes(&lite), "the test graph needs ChangeAxes");
        let mut ours = transposed_relu();
        declutter(&mut ours).unwrap();
        assert!(!moves_axes(&ours));
        let input = Tensor::from_shape(
            &[1, 4, 5, 3],
            &(0..60).map(|i| i as f32 - 30.0).collect::<Vec<_>>(),
        )
        .unwrap();
        let run = |m: TypedModel| {
            m.into_runnable()
                .unwrap()
                .run(tvec![input.clone().into()])
                .unwrap()
        };
        assert_eq!(run(ours), run(transposed_relu()));
    }
}

//! The operator library: the project's own tract operators, installed in
//! place of tract's where they apply, and what they share. It knows tract's
//! graph and nothing of the service: it imports neither `model` nor
//! `config` (`tests/library/architecture.rs` checks this).
//!
//! One directory per operator, each laid out the same way: `mod.rs` holds
//! the tract operator, its `install` (the graph patch), the driver that
//! splits the work, the portable kernel that defines the result, and the
//! tests against that definition and against tract; `x86_64/avx2.rs` and
//! `x86_64/avx512.rs` hold that operator's kernels for each instruction set.
//!
//! | operator | replaces |
//! | --- | --- |
//! | `stem` | the first 3x3 stride-2 convolution (3 input channels) |
//! | `pointwise` | 1x1 convolutions, with the clamp after them |
//! | `depthwise` | depthwise convolutions, with the clamps before and after |
//! | `fused` | an expansion joined to the depthwise layer it feeds |
//! | `dense` | the classifier's matrix product with constant weights |
//!
//! Beside them: `x86_64/avx2.rs` and `x86_64/avx512.rs` (the building
//! blocks every kernel of that instruction set shares: the closing clamp,
//! tail masks, register transposes), `simd` (the instruction set, detected
//! once, and the `Level` every kernel table is chosen from), `graph`
//! (what the graph patches match), `pool` (the threads the operators
//! split over), `peak` (this core's FMA peak, the yardstick of
//! `profile`). Why each operator exists, and the measurements behind its
//! thresholds, are in docs/operators.md.

pub(crate) mod dense;
pub(crate) mod depthwise;
pub(crate) mod fused;
pub(crate) mod graph;
mod peak;
pub(crate) mod pointwise;
mod pool;
mod simd;
pub(crate) mod stem;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use tract_onnx::prelude::{TractResult, TypedModel};

pub(crate) use graph::{following_clamp, preceding_clamp, same_bits, same_clamp, sole_successor};
pub use peak::{fma_peak, Peak};
pub(crate) use pool::par_planes;
pub use pool::OperatorPool;
pub(crate) use simd::Level;
pub use simd::Simd;

/// Deterministic values in [-1, 1) (xorshift), one stream per seed: the
/// operators' test inputs, and `profile`'s example image.
pub(crate) fn noise(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Puts the project's own operators in place of tract's. The stem and
/// pointwise first: they take the ReLU6 after them into their stores, and
/// the depthwise layers then take what clamps are left before them; last,
/// each expansion is joined with the depthwise layer it feeds.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<()> {
    stem::install(model)?;
    pointwise::install(model)?;
    depthwise::install(model)?;
    fused::install(model)?;
    dense::install(model)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::bundled_decluttered;

    /// On the bundled MobileNetV2, every ReLU6 ends up inside one of the
    /// project's operators: after the first convolution in the stem's
    /// store, after each expansion in its pointwise store (where the CPU
    /// runs `pointwise`, else in the next depthwise layer's input), after
    /// every depthwise layer in its store.
    #[test]
    fn own_operators_take_every_relu6_of_the_bundled_model() {
        use tract_onnx::tract_core::ops::binary::TypedBinOp;
        let mut model = bundled_decluttered();
        install(&mut model).unwrap();
        let ours = |name: &str| model.nodes.iter().filter(|n| n.op.name() == name).count();
        // 16 of the 17 depthwise layers follow an expansion; three of those
        // (96 x 112 x 112 and the two 144 x 56 x 56, 1.8-4.8 MB) do not fit
        // a 1 MiB L2 and are joined to it.
        let joined = ours("ExpandDepthwise(onnx-lambda)");
        let pointwise = ours("Pointwise(onnx-lambda)") + joined;
        assert!(
            (pointwise, joined) == (34, 3) || pointwise == 0,
            "{pointwise} {joined}"
        );
        assert_eq!(ours("Depthwise(onnx-lambda)") + joined, 17);
        assert_eq!(ours("Stem(onnx-lambda)"), 1);
        assert_eq!(ours("Dense(onnx-lambda)"), 1);
        let inputs_clamped = model
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<depthwise::Depthwise>())
            .filter(|op| op.input_clamp().is_some())
            .count();
        let clamps_left = model
            .nodes
            .iter()
            .filter(|n| n.op_as::<TypedBinOp>().is_some_and(|b| b.0.name() == "Max"))
            .count();
        if pointwise == 34 {
            assert_eq!((inputs_clamped, clamps_left), (0, 0));
        } else {
            assert_eq!((inputs_clamped, clamps_left), (16, 0));
        }
    }
}

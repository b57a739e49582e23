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
//! | `stem` | the first 3x3 stride-2 convolution (3 input channels), and the max pool that alone reads it |
//! | `pointwise` | 1x1 convolutions, with the clamp after them |
//! | `depthwise` | depthwise convolutions, with the clamps before and after |
//! | `fused` | an expansion, or a stem, joined to the depthwise layer it feeds |
//! | `conv` | every other convolution with 4+ output channels a group, and the max pool that alone reads one (`conv/pooled.rs`) |
//! | `dense` | the classifier's matrix product with constant weights |
//! | `maxpool` | max pooling (NCHW, square kernels) |
//! | `layernorm` | a normalisation over channels (ConvNeXt's) |
//! | `gelu` | exact GELU |
//! | `subsample` | chains of `Downsample` (strided 1x1 convolutions' inputs) |
//! | `affine` | a batch norm and clamp no convolution took, with the `Concat` before it |
//! | `planesum` | the sums over H and W of global average pools |
//! | `shuffle` | axis moves of whole planes (channel shuffles' transposes) |
//!
//! Beside them: `x86_64/avx2.rs` and `x86_64/avx512.rs` (the building
//! blocks every kernel of that instruction set shares: the closing clamp,
//! tail masks, register transposes), `simd` (the instruction set, detected
//! once, and the `Level` every kernel table is chosen from), `graph`
//! (what the graph patches match), `pool` (the threads the operators
//! split over), `peak` (this core's FMA peak, the yardstick of
//! `profile`). Why each operator exists, and the measurements behind its
//! thresholds, are in docs/operators.md.

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub(crate) mod affine;
pub(crate) mod conv;
pub(crate) mod dense;
pub(crate) mod depthwise;
pub(crate) mod fused;
pub(crate) mod gelu;
pub(crate) mod graph;
pub(crate) mod hardswish;
pub(crate) mod layernorm;
pub(crate) mod maxpool;
mod peak;
pub(crate) mod planesum;
pub(crate) mod pointwise;
mod pool;
pub(crate) mod shuffle;
mod simd;
pub(crate) mod stem;
pub(crate) mod subsample;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use tract_onnx::prelude::{TractResult, TypedModel};

pub(crate) use graph::{
    following_affine, following_clamp, following_per_axis, following_residual, per_axis,
    preceding_clamp, replace_with, same_bits, same_clamp, sole_successor, weights_oihw,
};
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
/// the depthwise layers then take what clamps are left before them; then
/// each expansion is joined with the depthwise layer it feeds, and the
/// general convolution takes the convolutions none of them took (and,
/// once max pools are the project's, the pool that alone reads one).
pub(crate) fn install(model: &mut TypedModel) -> TractResult<()> {
    stem::install(model)?;
    pointwise::install(model)?;
    depthwise::install(model)?;
    fused::install(model)?;
    conv::install(model)?;
    dense::install(model)?;
    maxpool::install(model)?;
    conv::install_pools(model)?;
    stem::install_pools(model)?;
    layernorm::install(model)?;
    gelu::install(model)?;
    subsample::install(model)?;
    affine::install(model)?;
    planesum::install(model)?;
    shuffle::install(model)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::bundled_decluttered;
    use tract_onnx::prelude::Tensor;

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
        // 16 of the 17 depthwise layers follow an expansion and are joined
        // to it (fused.rs): with AVX2 the 13 on planes of 10x10 or more;
        // with AVX-512 the three that do not fit a 1 MiB L2 (96 x 112 x 112
        // and the two 144 x 56 x 56, 1.8-4.8 MB) and the two other strided
        // ones; with NEON those three. On x86 the first depthwise layer
        // is joined to the stem (fused/stem.rs).
        let joined = ours("ExpandDepthwise(onnx-lambda)");
        let stem_joined = ours("StemDepthwise(onnx-lambda)");
        let pointwise = ours("Pointwise(onnx-lambda)") + joined;
        let want = match Level::detect().simd() {
            Simd::Avx2 => 13,
            Simd::Avx512 => 5,
            _ => 3,
        };
        assert!(
            (pointwise, joined) == (34, want) || pointwise == 0,
            "{pointwise} {joined}"
        );
        let x86 = matches!(Level::detect().simd(), Simd::Avx2 | Simd::Avx512);
        assert_eq!(stem_joined, usize::from(x86));
        assert_eq!(ours("Depthwise(onnx-lambda)") + joined + stem_joined, 17);
        assert_eq!(ours("Stem(onnx-lambda)") + stem_joined, 1);
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
            // The last 1x1 layer's ReLU6 feeds the pooling: tract runs it.
            assert_eq!((inputs_clamped, clamps_left), (16, 1));
        }
    }

    /// One ONNX `Conv` (3x3 kernel, NCHW) on a `[1, c, h, w]` input, as
    /// the loader parses and declutters it.
    fn conv_model(
        c: usize,
        out: usize,
        group: usize,
        hw: (usize, usize),
        pads: [i64; 4],
        strides: [i64; 2],
        dilations: [i64; 2],
    ) -> TypedModel {
        use crate::ops::testing::onnx;
        let attributes = vec![
            onnx::ints("kernel_shape", &[3, 3]),
            onnx::ints("pads", &pads),
            onnx::ints("strides", &strides),
            onnx::ints("dilations", &dilations),
            onnx::int("group", group as i64),
        ];
        let (c, out) = (c as i64, out as i64);
        let initializer = vec![
            onnx::weights("w", vec![out, c / group as i64, 3, 3], 5),
            onnx::weights("b", vec![out], 6),
        ];
        let nodes = vec![onnx::node("Conv", &["x", "w", "b"], "y", attributes)];
        onnx::decluttered(nodes, initializer, &[1, c, hw.0 as i64, hw.1 as i64], 13)
    }

    /// Asymmetric padding (as TensorFlow's "SAME" exports it) is taken by
    /// the project's operators; dilation and groups go to the general
    /// convolution (where AVX2 runs it) when a group has 4 output channels
    /// or more, and are left to tract below that. Either way the result is
    /// tract's.
    #[test]
    fn convolutions_are_taken_or_left_to_tract_and_match_tract() {
        use crate::ops::testing::run_optimized;
        // What, channels, output channels, groups, pads (top, left, bottom,
        // right), strides, dilations, the operator that takes it.
        struct Case(
            &'static str,
            usize,
            usize,
            usize,
            [i64; 4],
            [i64; 2],
            [i64; 2],
            Option<&'static str>,
        );
        let cases = [
            Case(
                "depthwise, pads 0/1, stride 2",
                8,
                8,
                8,
                [0, 0, 1, 1],
                [2, 2],
                [1, 1],
                Some("Depthwise"),
            ),
            Case(
                "depthwise, pads 1/2 by 0/1",
                8,
                8,
                8,
                [1, 0, 2, 1],
                [1, 1],
                [1, 1],
                Some("Depthwise"),
            ),
            Case(
                "depthwise, dilation 2",
                8,
                8,
                8,
                [2, 2, 2, 2],
                [1, 1],
                [2, 2],
                None,
            ),
            Case(
                "depthwise, channel multiplier 2",
                8,
                16,
                8,
                [1, 1, 1, 1],
                [1, 1],
                [1, 1],
                None,
            ),
            Case(
                "groups of 2 channels",
                8,
                8,
                4,
                [1, 1, 1, 1],
                [1, 1],
                [1, 1],
                None,
            ),
            Case(
                "stem, pads 0/1, stride 2",
                3,
                16,
                1,
                [0, 0, 1, 1],
                [2, 2],
                [1, 1],
                Some("Stem"),
            ),
            Case(
                "stem, dilation 2",
                3,
                16,
                1,
                [2, 2, 2, 2],
                [1, 1],
                [2, 2],
                Some("Conv"),
            ),
            Case(
                "groups of 4 output channels, stride 2, dilation 2, pads 2/0 by 1/3",
                8,
                8,
                2,
                [2, 1, 0, 3],
                [2, 2],
                [2, 2],
                Some("Conv"),
            ),
            Case(
                "stem, 3 groups",
                3,
                6,
                3,
                [1, 1, 1, 1],
                [1, 1],
                [1, 1],
                None,
            ),
        ];
        let hw = (17, 19);
        for Case(what, c, out, group, pads, strides, dilations, taken_by) in cases {
            let taken_by = taken_by.filter(|&op| op != "Conv" || conv::available());
            let model = conv_model(c, out, group, hw, pads, strides, dilations);
            let input =
                Tensor::from_shape(&[1, c, hw.0, hw.1], &noise(c * hw.0 * hw.1, 9)).unwrap();
            let want = run_optimized(model.clone(), &input);
            let mut ours = model;
            install(&mut ours).unwrap();
            let names: Vec<String> = ours.nodes.iter().map(|n| n.op.name().to_string()).collect();
            match taken_by {
                Some(op) => assert!(
                    names.contains(&format!("{op}(onnx-lambda)")),
                    "{what}: {names:?}"
                ),
                None => assert!(
                    !names.iter().any(|n| n.contains("onnx-lambda"))
                        && names.iter().any(|n| n == "Conv"),
                    "{what}: {names:?}"
                ),
            }
            let got = run_optimized(ours, &input);
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-4, "{what} at {i}: {a} vs {b}");
            }
        }
    }

    /// A 1x1 and a 3x3 convolution, with and without a bias, then a batch
    /// norm and ReLU as PyTorch exports them unfolded (DenseNet's): the
    /// norm folds into the weights and bias (tract's declutter does it for
    /// `Conv`, `pointwise` for the 1x1 layers tract makes products of),
    /// the ReLU into the store, nothing but the project's operator is
    /// left, and the results are tract's.
    #[test]
    fn install_folds_a_following_batch_norm() {
        use crate::ops::testing::{onnx, run_optimized};
        if !conv::available() || pointwise::Pointwise::available().is_err() {
            return; // tract runs these layers on this CPU.
        }
        for (kernel, with_bias) in [(1, false), (1, true), (3, false), (3, true)] {
            let what = format!("{kernel}x{kernel}, bias {with_bias}");
            let conv_in: &[&str] = if with_bias {
                &["x", "w", "b"]
            } else {
                &["x", "w"]
            };
            let pad = kernel / 2;
            let nodes = vec![
                onnx::node("Conv", conv_in, "c", vec![onnx::ints("pads", &[pad; 4])]),
                onnx::node(
                    "BatchNormalization",
                    &["c", "gamma", "beta", "mean", "var"],
                    "n",
                    vec![onnx::float("epsilon", 1e-5)],
                ),
                onnx::node("Relu", &["n"], "y", vec![]),
            ];
            let mut var = onnx::weights("var", vec![8], 5);
            var.float_data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
            let initializer = vec![
                onnx::weights("w", vec![8, 6, kernel, kernel], 1),
                onnx::weights("b", vec![8], 2),
                onnx::weights("gamma", vec![8], 3),
                onnx::weights("beta", vec![8], 4),
                onnx::weights("mean", vec![8], 6),
                var,
            ];
            let model = onnx::decluttered(nodes, initializer, &[1, 6, 9, 11], 17);
            let x = Tensor::from_shape(&[1, 6, 9, 11], &noise(6 * 99, 7)).unwrap();
            let want = run_optimized(model.clone(), &x);
            let mut ours = model;
            install(&mut ours).unwrap();
            let left: Vec<String> = ours
                .nodes
                .iter()
                .filter(|n| !["Source", "Const"].contains(&&*n.op.name()))
                .filter(|n| !n.op.name().contains("onnx-lambda"))
                .map(|n| format!("{} {:?}", n.name, n.op))
                .collect();
            assert!(left.is_empty(), "{what}: {left:?}");
            let got = run_optimized(ours, &x);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}: {a} vs {b}"
                );
            }
        }
    }
}

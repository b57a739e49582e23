//! ConvNeXt's channels-last linear layers as two 1x1 layers.
//!
//! Why: torchvision's ConvNeXt block permutes its NCHW activations to
//! NHWC, normalises, runs `Linear(C, 4C)`, GELU and `Linear(4C, C)`, and
//! permutes back. tract folds both permutes into the products' axes
//! (`akbm,kn->bmn`, then `bmk,kn->anbm`), so the `4C`-channel tensor
//! between them is channels-last, and both products ran as tract's packed
//! matrix products (`OptMatMul` 83% of ConvNeXt-Tiny's time, with
//! `OptMatMulPack` repacking each input).
//!
//! How: the pair and the element-wise operator between them are rewired
//! channels-first. The first product writes `[1, 4C, H, W]`, the
//! element-wise operator runs on it unchanged, and the second reads it as
//! a 1x1 layer: both are [`Pointwise`] layers with their bias (and the
//! second with the layer scale folded in and the epilogue after it). That
//! tensor's layout is private to the chain: each of its three nodes has
//! one consumer.

use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;

use super::*;
use crate::ops::sole_successor;

/// Replaces each pair of channels-last products around one element-wise
/// operator (see the module docs). Returns how many pairs it replaced.
pub(super) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        if model.node(id).op_as::<EinSum>().is_none() {
            continue;
        }
        let Some(chain) = describe_chain(model, id)? else {
            continue;
        };
        let (epilogue, residual, last) = following_epilogue(model, chain.after_second)?;
        let mut patch = TypedModelPatch::new("onnx-lambda channels-last pair");
        let x = patch.tap_model(model, model.node(id).inputs[0])?;
        let first = Pointwise::new(
            chain.first.dims,
            (&chain.first.in_shape, &chain.first.out_shape),
            Weights::Columns(&chain.first.weights),
            &chain.bias.0,
            Epilogue::default(),
        );
        let h = patch.wire_node(&model.node(id).name, first, &[x])?[0];
        let mid = model.node(chain.mid);
        let h = patch.wire_node(&mid.name, mid.op.clone(), &[h])?[0];
        let mut inputs = tvec![h];
        if let Some(r) = residual {
            inputs.push(patch.tap_model(model, r)?);
        }
        let second = Pointwise::new(
            chain.second.dims,
            (&chain.second.in_shape, &chain.second.out_shape),
            Weights::Columns(&chain.second.weights),
            &chain.bias.1,
            epilogue,
        );
        let y = patch.wire_node(&model.node(chain.second_id).name, second, &inputs)?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), y)?;
        patch.apply(model)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

/// A pair found from its first product.
struct Chain {
    /// Channels-first: `[1, K, H, W] -> [1, 4C, H, W]`.
    first: Layer,
    /// The element-wise operator between the products.
    mid: usize,
    second_id: usize,
    /// Channels-first: `[1, 4C, H, W] -> [1, C, H, W]`.
    second: Layer,
    /// Both products' biases (zero where none follows).
    bias: (Vec<f32>, Vec<f32>),
    /// The node the second product's chain ends at, after its bias and
    /// its scale.
    after_second: usize,
}

fn describe_chain(model: &TypedModel, id: usize) -> TractResult<Option<Chain>> {
    let Some(first) = product(model, model.node(id), Side::ChannelsLastOut)? else {
        return Ok(None);
    };
    let (bias1, after_first) = following_bias(model, id, &first)?;
    let Some(mid) = sole_successor(model, after_first) else {
        return Ok(None);
    };
    let Some(next) = mid
        .op_as::<ElementWiseOp>()
        .and_then(|_| sole_successor(model, mid.id))
    else {
        return Ok(None);
    };
    let Some(second) = product(model, next, Side::ChannelsLastIn)? else {
        return Ok(None);
    };
    if second.dims.k != first.dims.m || second.dims.pixels != first.dims.pixels {
        return Ok(None);
    }
    let (bias2, after_bias) = following_bias(model, next.id, &second)?;
    let (m1, m2) = (first.dims.m, second.dims.m);
    let mut bias2 = bias2.unwrap_or_else(|| vec![0.0; m2]);
    // ConvNeXt's layer scale, a per-channel `Mul` after the bias, folds
    // into the second layer's weights and bias.
    let (scale, after_second) = following_per_channel(model, after_bias, &second, "Mul")?;
    let mut second = second;
    if let Some(scale) = scale {
        for row in second.weights.chunks_exact_mut(m2) {
            row.iter_mut().zip(&scale).for_each(|(w, g)| *w *= g);
        }
        bias2.iter_mut().zip(&scale).for_each(|(b, g)| *b *= g);
    }
    // The first product's output becomes channels-first: `[1, 4C, S...]`,
    // the pixels its input's (`weight_axes`: one leading axis, the channel,
    // the pixels).
    let mut first = first;
    first.out_shape = [1, m1]
        .into_iter()
        .chain(first.in_shape[2..].iter().copied())
        .collect();
    second.in_shape = first.out_shape.clone();
    Ok(Some(Chain {
        first,
        mid: mid.id,
        second_id: next.id,
        second,
        bias: (bias1.unwrap_or_else(|| vec![0.0; m1]), bias2),
        after_second,
    }))
}

/// Which side of the pair a product is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `[1, K, S...] x [K, M] -> [S..., M]` (the first product).
    ChannelsLastOut,
    /// `[S..., K] x [K, M] -> [1, M, S...]` (the second).
    ChannelsLastIn,
}

/// The 1x1 layer a product computes, with its weights as columns
/// (`W[k][m]`), its shapes as tract has them (the channels-last side still
/// channels-last) and `channel_axis` where its bias reads, if it is the
/// `side` of a pair with constant f32 weights.
fn product(model: &TypedModel, node: &TypedNode, side: Side) -> TractResult<Option<Layer>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let Some(Product {
        konst,
        in_shape,
        out_shape,
        letters: [a, b, o],
    }) = f32_product(model, node, einsum)?
    else {
        return Ok(None);
    };
    if konst.rank() != 2 {
        return Ok(None);
    }
    let (in_shape, out_shape) = (&in_shape[..], &out_shape[..]);
    let cf_shape = match side {
        Side::ChannelsLastOut => in_shape,
        Side::ChannelsLastIn => out_shape,
    };
    let Some((ki, mi)) = weight_axes(&a, &b, &o, side).filter(|_| cf_shape[0] == 1) else {
        return Ok(None);
    };
    let (k, m) = (konst.shape()[ki], konst.shape()[mi]);
    let pixels: usize = cf_shape[2..].iter().product();
    if pixels < MIN_PIXELS || m == 0 || k == 0 {
        return Ok(None);
    }
    // `W[k][m]` (see [`Weights::Columns`]): a copy, as linear layers
    // store their weights.
    let view = konst.to_plain_array_view::<f32>()?;
    let weights = row_major(view.permuted_axes(tract_ndarray::IxDyn(&[ki, mi])))?;
    Ok(Some(Layer {
        dims: Dims {
            images: 1,
            m,
            k,
            pixels,
        },
        in_shape: in_shape.into(),
        out_shape: out_shape.into(),
        channel_axis: match side {
            Side::ChannelsLastOut => out_shape.len() - 1,
            Side::ChannelsLastIn => 1,
        },
        weights,
    }))
}

/// Where `K` and `M` are in the weights `b`, if the activations `a` and
/// the output `o` are the `side` of a pair: channels-first is one leading
/// axis, the channel, then the pixels; channels-last is the same pixels,
/// then the other channel.
fn weight_axes(a: &[char], b: &[char], o: &[char], side: Side) -> Option<(usize, usize)> {
    // `b` is `K` and `M` in either order; `K` is in `a`, `M` in `o`.
    let ki = b.iter().position(|c| a.contains(c) && !o.contains(c))?;
    let mi = b.iter().position(|c| o.contains(c) && !a.contains(c))?;
    let (kc, mc) = (b[ki], b[mi]);
    let (channels_first, channels_last, channel, other) = match side {
        Side::ChannelsLastOut => (a, o, kc, mc),
        Side::ChannelsLastIn => (o, a, mc, kc),
    };
    let c_at = channels_first.iter().position(|&c| c == channel)?;
    let pixels = &channels_first[c_at + 1..];
    let fits = c_at == 1
        && channels_last.len() == pixels.len() + 1
        && channels_last[..pixels.len()] == *pixels
        && channels_last.last() == Some(&other);
    fits.then_some((ki, mi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{noise, onnx, run_optimized};
    use tract_onnx::tract_core::ops::binary::TypedBinOp;

    /// ConvNeXt's block as PyTorch exports it, with `Tanh` for its GELU
    /// (both element-wise): NCHW to NHWC, `Linear(c, 4c)`, the activation,
    /// `Linear(4c, c)`, back to NCHW, the layer scale and the residual.
    fn block(c: i64, (h, w): (i64, i64)) -> TypedModel {
        let nodes = vec![
            onnx::node(
                "Transpose",
                &["x"],
                "t",
                vec![onnx::ints("perm", &[0, 2, 3, 1])],
            ),
            onnx::node("MatMul", &["t", "w1"], "m1", vec![]),
            onnx::node("Add", &["m1", "b1"], "a1", vec![]),
            onnx::node("Tanh", &["a1"], "g", vec![]),
            onnx::node("MatMul", &["g", "w2"], "m2", vec![]),
            onnx::node("Add", &["m2", "b2"], "a2", vec![]),
            onnx::node(
                "Transpose",
                &["a2"],
                "back",
                vec![onnx::ints("perm", &[0, 3, 1, 2])],
            ),
            onnx::node("Mul", &["back", "gamma"], "s", vec![]),
            onnx::node("Add", &["s", "x"], "y", vec![]),
        ];
        let initializer = vec![
            onnx::weights("w1", vec![c, 4 * c], 1),
            onnx::weights("b1", vec![4 * c], 2),
            onnx::weights("w2", vec![4 * c, c], 3),
            onnx::weights("b2", vec![c], 4),
            onnx::weights("gamma", vec![c, 1, 1], 6),
        ];
        onnx::decluttered(nodes, initializer, &[1, c, h, w], 17)
    }

    /// The pair is taken, no product is left to tract, the scale folds
    /// into the second layer and the residual joins its epilogue, and the
    /// results are tract's.
    #[test]
    fn install_takes_the_pair_and_keeps_the_results() {
        if Pointwise::available().is_err() {
            return; // tract runs these products on this CPU.
        }
        for (c, hw) in [(8, (6, 7)), (12, (5, 9))] {
            let model = block(c, hw);
            let len = (c * hw.0 * hw.1) as usize;
            let shape = [1, c as usize, hw.0 as usize, hw.1 as usize];
            let x = Tensor::from_shape(&shape, &noise(len, 5)).unwrap();
            let want = run_optimized(model.clone(), &x);
            let mut ours = model;
            assert_eq!(install(&mut ours).unwrap(), 1, "{c} {hw:?}");
            let left: Vec<String> = ours
                .nodes
                .iter()
                .filter(|n| n.op_as::<EinSum>().is_some() || n.op_as::<TypedBinOp>().is_some())
                .map(|n| format!("{} {:?}", n.name, n.op))
                .collect();
            assert!(left.is_empty(), "{c} {hw:?}: {left:?}");
            let got = run_optimized(ours, &x);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{c} {hw:?}: {a} vs {b}"
                );
            }
        }
    }
}

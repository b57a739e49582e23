//! Our own per-channel scale, shift and clamp, reading its channels from
//! several tensors when a `Concat` feeds it: a batch norm and its ReLU
//! where no convolution takes them, with the concatenation before them.
//!
//! Why: DenseNet normalises the concatenation of every earlier layer's
//! output before each layer (pre-activation). tract ran it as a `Concat`
//! copy, then `OptBinChain(Mul+Add+Max)` over the copy: 62 of each, 9% of
//! DenseNet-121's inference (`onnx-lambda profile`, docs/operators.md).
//!
//! How: one pass, a channel plane at a time, from the plane of whichever
//! input holds that channel straight into the output: `clamp(x * scale +
//! shift)`. The concatenation is never written on its own. Planes split
//! over the pool; the loop is compiled for each instruction set.
//!
//! [`install`] takes every chain of per-channel constant `Mul`s and `Add`s
//! (and the clamp after it) on an f32 tensor whose channels are axis 1,
//! with the `Concat` on that axis before it when the chain is its only
//! reader; not after a product or a convolution, whose operators (ours or
//! tract's) take them into their own stores.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::Conv as TractConv;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::{following_affine, following_clamp, replace_with, same_bits, same_clamp};
use crate::ops::{Level, Simd};

/// `clamp(x * scale[c] + shift[c])` over channel axis 1 of the
/// concatenation of its inputs on that axis (one input: no concatenation).
#[derive(Debug, Clone)]
pub(crate) struct ChannelAffine {
    /// Channels of each input, in order.
    parts: Vec<usize>,
    /// The output's shape: `[images, channels, plane axes...]`.
    out_shape: TVec<usize>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    clamp: Option<(f32, f32)>,
}

/// One plane's loop at one instruction set.
type PlaneFn = unsafe fn(&[f32], &mut [f32], (f32, f32), (f32, f32));

impl ChannelAffine {
    fn plane(&self) -> usize {
        self.out_shape[2..].iter().product()
    }

    /// The output from `inputs`, each `[images, parts[i], plane axes...]`,
    /// at the best level this CPU has.
    pub(crate) fn compute(&self, inputs: &[&[f32]], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(inputs, output, Level::detect())
    }

    fn compute_with(&self, inputs: &[&[f32]], output: &mut [f32], level: Level) -> TractResult<()> {
        let (images, plane) = (self.out_shape[0], self.plane());
        let channels = self.out_shape[1];
        ensure!(inputs.len() == self.parts.len(), "channel affine inputs");
        for (x, &c) in inputs.iter().zip(&self.parts) {
            ensure!(x.len() == images * c * plane, "channel affine input size");
        }
        ensure!(
            output.len() == images * channels * plane,
            "channel affine output size"
        );
        if output.is_empty() {
            return Ok(());
        }
        // Each output channel's input and its channel there.
        let mut source = Vec::with_capacity(channels);
        for (i, &c) in self.parts.iter().enumerate() {
            source.extend((0..c).map(|local| (i, local)));
        }
        let run = kernel(level);
        let clamp = self.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        par_chunks_mut(output, plane, output.len(), |first, chunk| {
            for (n, out) in chunk.chunks_exact_mut(plane).enumerate() {
                let (image, c) = ((first + n) / channels, (first + n) % channels);
                let (i, local) = source[c];
                let x = &inputs[i][(image * self.parts[i] + local) * plane..][..plane];
                // SAFETY: the kernel was chosen for a level this CPU has.
                unsafe { run(x, out, (self.scale[c], self.shift[c]), clamp) };
            }
            Ok(())
        })
    }
}

fn kernel(level: Level) -> PlaneFn {
    match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => plane_avx512,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => plane_avx2,
        // NEON is the aarch64 target's baseline: the portable loop
        // compiles to it.
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => plane_portable,
        _ => plane_portable,
    }
}

unsafe fn plane_portable(x: &[f32], y: &mut [f32], affine: (f32, f32), clamp: (f32, f32)) {
    affine_plane(x, y, affine, clamp);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(x: &[f32], y: &mut [f32], affine: (f32, f32), clamp: (f32, f32)) {
    affine_plane(x, y, affine, clamp);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn plane_avx512(x: &[f32], y: &mut [f32], affine: (f32, f32), clamp: (f32, f32)) {
    affine_plane(x, y, affine, clamp);
}

/// The one body every level compiles. `mul_add` would round once where
/// tract's `Mul` then `Add` round twice; the two operations keep its bits.
#[inline(always)]
fn affine_plane(x: &[f32], y: &mut [f32], (scale, shift): (f32, f32), (lo, hi): (f32, f32)) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x * scale + shift).max(lo).min(hi);
    }
}

impl PartialEq for ChannelAffine {
    fn eq(&self, other: &ChannelAffine) -> bool {
        self.parts == other.parts
            && self.out_shape == other.out_shape
            && same_bits(&self.scale, &other.scale)
            && same_bits(&self.shift, &other.shift)
            && same_clamp(self.clamp, other.clamp)
    }
}

impl Eq for ChannelAffine {}

impl Op for ChannelAffine {
    fn name(&self) -> StaticName {
        "ChannelAffine(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "channels from {} input(s): {:?}, clamp {:?}",
            self.parts.len(),
            self.parts,
            self.clamp
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelAffine {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let plains = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<Vec<_>>>()?;
        let slices = plains
            .iter()
            .map(|p| p.as_slice::<f32>())
            .collect::<TractResult<Vec<_>>>()?;
        // SAFETY: `compute` writes every plane of the output in full.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.out_shape)? };
        {
            let mut out = output.try_as_plain_ram_mut()?;
            self.compute(&slices, out.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ChannelAffine {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.parts.len());
        for (fact, &c) in inputs.iter().zip(&self.parts) {
            let mut want = self.out_shape.clone();
            want[1] = c;
            ensure!(fact.datum_type == f32::datum_type());
            ensure!(fact.shape.as_concrete() == Some(&want[..]));
        }
        Ok(tvec!(f32::fact(self.out_shape.clone())))
    }

    as_op!();
}

/// The inputs whose channels node `id`'s output holds: a `Concat`'s on
/// axis 1 of f32 tensors of known shapes, else that output itself.
fn parts_of(
    model: &TypedModel,
    id: usize,
    out_shape: &[usize],
) -> TractResult<(TVec<OutletId>, Vec<usize>)> {
    let node = model.node(id);
    if node.op_as::<TypedConcat>().is_some_and(|c| c.axis == 1) {
        let mut channels = vec![];
        for &input in &node.inputs {
            let fact = model.outlet_fact(input)?;
            let Some(shape) = fact.shape.as_concrete() else {
                break;
            };
            let fits = shape.len() == out_shape.len()
                && shape[0] == out_shape[0]
                && shape[2..] == out_shape[2..];
            if !fits || fact.datum_type != f32::datum_type() {
                break;
            }
            channels.push(shape[1]);
        }
        if channels.len() == node.inputs.len() {
            return Ok((node.inputs.iter().copied().collect(), channels));
        }
    }
    Ok((tvec![OutletId::new(id, 0)], vec![out_shape[1]]))
}

/// Whether node `id`'s output may start a chain this operator takes: an
/// f32 tensor of known shape with a channel axis 1, computed by anything
/// but a product or a convolution (their operators take what follows
/// them) or a link of another chain (a binary operator with a constant).
fn may_lead(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TVec<usize>>> {
    if node.outputs.len() != 1
        || node.op_as::<EinSum>().is_some()
        || node.op_as::<TractConv>().is_some()
    {
        return Ok(None);
    }
    if node.op_as::<TypedBinOp>().is_some() {
        for &input in &node.inputs {
            if model.outlet_fact(input)?.konst.is_some() {
                return Ok(None);
            }
        }
    }
    let fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let shape = fact.shape.as_concrete().map(TVec::from);
    let usable = fact.datum_type == f32::datum_type() && fact.konst.is_none();
    Ok(shape.filter(|s| usable && s.len() >= 3))
}

/// Replaces every chain of per-channel constant `Mul`s and `Add`s, with
/// the clamp after it and the `Concat` before it (see the module docs).
/// Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(out_shape) = may_lead(model, model.node(id))? else {
            continue;
        };
        let (affine, after) = following_affine(model, id, (&out_shape, 1))?;
        let Some((scale, shift)) = affine else {
            continue;
        };
        let (clamp, last) = following_clamp(model, after)?;
        let (inputs, parts) = parts_of(model, id, &out_shape)?;
        // Named after the `Concat` it takes in, else the chain's first node.
        let named = match inputs[0].node == id && inputs.len() == 1 {
            true => model.node(id).outputs[0].successors[0].node,
            false => id,
        };
        let name = model.node(named).name.clone();
        let op = ChannelAffine {
            parts,
            out_shape,
            scale,
            shift,
            clamp,
        };
        replace_with(
            model,
            "onnx-lambda channel affine",
            &inputs,
            (&name, op),
            last,
        )?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{levels, noise, onnx, run_optimized, ALL_LEVELS};

    /// The definition: the concatenation, then each value scaled, shifted
    /// and clamped by its channel's constants.
    fn reference(op: &ChannelAffine, inputs: &[Vec<f32>]) -> Vec<f32> {
        let (images, plane) = (op.out_shape[0], op.plane());
        let (lo, hi) = op.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let mut out = vec![];
        for n in 0..images {
            let mut c = 0;
            for (x, &part) in inputs.iter().zip(&op.parts) {
                for local in 0..part {
                    for &v in &x[(n * part + local) * plane..][..plane] {
                        out.push((v * op.scale[c] + op.shift[c]).max(lo).min(hi));
                    }
                    c += 1;
                }
            }
        }
        out
    }

    /// Odd planes, batch > 1, one input or several, with and without a
    /// clamp, at every level: the definition's bits, every value written.
    #[test]
    fn matches_the_definition_at_every_level() {
        // Channels of each input, images, the plane's axes, the clamp.
        type Case<'a> = (&'a [usize], usize, &'a [usize], Option<(f32, f32)>);
        let cases: [Case; 4] = [
            (&[3], 2, &[5, 7], Some((0.0, f32::INFINITY))),
            (&[4, 1, 6], 1, &[9, 13], None),
            (&[2, 2], 3, &[1, 1], Some((-0.25, 0.5))),
            (&[7], 1, &[37], Some((0.0, 6.0))),
        ];
        for (parts, images, plane_axes, clamp) in cases {
            let channels: usize = parts.iter().sum();
            let plane: usize = plane_axes.iter().product();
            let mut out_shape: TVec<usize> = tvec![images, channels];
            out_shape.extend(plane_axes.iter().copied());
            let op = ChannelAffine {
                parts: parts.to_vec(),
                out_shape,
                scale: noise(channels, 1).iter().map(|v| 2.0 * v).collect(),
                shift: noise(channels, 2),
                clamp,
            };
            let inputs: Vec<Vec<f32>> = parts
                .iter()
                .enumerate()
                .map(|(i, &c)| noise(images * c * plane, 3 + i as u32))
                .collect();
            let want = reference(&op, &inputs);
            let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            for level in levels("channel affine", ALL_LEVELS) {
                let mut got = vec![f32::NAN; want.len()];
                op.compute_with(&slices, &mut got, level).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{level:?} {parts:?} {plane_axes:?}"
                );
            }
        }
    }

    /// DenseNet's pre-activation as PyTorch exports it: a `Concat` of
    /// three tensors, `BatchNormalization`, `Relu`; and the same on one
    /// tensor (a transition's input). Taken whole, nothing else is left,
    /// and the results are tract's.
    #[test]
    fn install_takes_the_concat_norm_and_relu() {
        for inputs in [&["x", "a", "b"][..], &["x"][..]] {
            let mut nodes = vec![
                onnx::node("Sigmoid", &["x"], "a", vec![]),
                onnx::node("Tanh", &["x"], "b", vec![]),
            ];
            let first = if inputs.len() > 1 {
                nodes.push(onnx::node(
                    "Concat",
                    inputs,
                    "cat",
                    vec![onnx::int("axis", 1)],
                ));
                "cat"
            } else {
                "x"
            };
            let c = 5 * inputs.len() as i64;
            nodes.push(onnx::node(
                "BatchNormalization",
                &[first, "gamma", "beta", "mean", "var"],
                "n",
                vec![onnx::float("epsilon", 1e-5)],
            ));
            nodes.push(onnx::node("Relu", &["n"], "y", vec![]));
            let mut var = onnx::weights("var", vec![c], 5);
            var.float_data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
            let initializer = vec![
                onnx::weights("gamma", vec![c], 3),
                onnx::weights("beta", vec![c], 4),
                onnx::weights("mean", vec![c], 6),
                var,
            ];
            let model = onnx::decluttered(nodes, initializer, &[2, 5, 7, 9], 17);
            let x = Tensor::from_shape(&[2, 5, 7, 9], &noise(2 * 5 * 63, 7)).unwrap();
            let want = run_optimized(model.clone(), &x);
            let mut ours = model;
            assert_eq!(install(&mut ours).unwrap(), 1, "{inputs:?}");
            let left: Vec<String> = ours
                .nodes
                .iter()
                .filter(|n| n.op_as::<TypedBinOp>().is_some() || n.op_as::<TypedConcat>().is_some())
                .map(|n| format!("{} {:?}", n.name, n.op))
                .collect();
            assert!(left.is_empty(), "{inputs:?}: {left:?}");
            let got = run_optimized(ours, &x);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{inputs:?}: {a} vs {b}"
                );
            }
        }
    }

    /// A per-channel `Add` after a product is its bias, for the product's
    /// own operator: left alone.
    #[test]
    fn leaves_a_products_bias() {
        use tract_onnx::tract_core::ops::math;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 4, 3, 3])).unwrap();
        let w = model
            .add_const("w", Tensor::from_shape(&[6, 4], &noise(24, 1)).unwrap())
            .unwrap();
        let axes = tract_onnx::tract_core::axes::AxesMapping::from_strs(&["NIHW", "OI"], &["NOHW"])
            .unwrap();
        let mm = model
            .wire_node("mm", EinSum::new(axes, f32::datum_type()), &[x, w])
            .unwrap()[0];
        let b = model
            .add_const(
                "b",
                Tensor::from_shape(&[1, 6, 1, 1], &noise(6, 2)).unwrap(),
            )
            .unwrap();
        let y = model.wire_node("bias", math::add(), &[mm, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        assert_eq!(install(&mut model).unwrap(), 0);
    }
}

//! Our own layer normalisation over one axis of an f32 tensor: ConvNeXt's
//! LayerNorm over channels (PyTorch permutes to channels-last around it;
//! tract's declutter moves the permutations away and normalises axis 1 of
//! the NCHW tensor).
//!
//! Why: tract-onnx expands `LayerNormalization` into five nodes, `Reduce<Sum>`
//! for the mean, a scale by `1 / n`, `Sub`, `RmsNorm` and the scale-and-bias
//! chain, each a pass over the tensor, and the reductions run across the
//! channel axis with a stride of a whole plane: 13% of ConvNeXt-Tiny's
//! inference for no multiply-add worth counting (`onnx-lambda profile`,
//! docs/operators.md).
//!
//! How: per block of up to [`BLOCK`] positions along the axes after the
//! normalised one (pixels, contiguous in NCHW), the mean and then the
//! variance are accumulated over the axis in small arrays, and the output
//! written in one more pass: every loop runs along contiguous pixels, so
//! the compiler vectorises it. The same body is compiled for each
//! instruction set (`#[target_feature]`), as max pooling's is.
//!
//! [`install`] takes each `RmsNorm` fed by `x - mean(x)` over the same
//! single axis (the shape tract-onnx's expansion leaves), with the
//! per-axis scale and bias after it when they are constants.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use crate::ops::{per_axis, replace_with, same_bits, sole_successor, Level, Simd};

/// Positions normalised together: their means and variances live in
/// three arrays of this many floats (768 bytes each, in L1).
const BLOCK: usize = 192;

/// `y = (x - mean) / sqrt(var + eps) * scale + bias` over the middle axis
/// of `[outer, len, inner]`, on f32 tensors of one fixed shape.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    /// Positions before the axis, along it, and after it.
    dims: (usize, usize, usize),
    shape: TVec<usize>,
    eps: f32,
    scale: Arc<[f32]>,
    bias: Arc<[f32]>,
}

impl LayerNorm {
    pub(crate) fn new(
        shape: &[usize],
        axis: usize,
        eps: f32,
        scale: Vec<f32>,
        bias: Vec<f32>,
    ) -> LayerNorm {
        let dims = (
            shape[..axis].iter().product(),
            shape[axis],
            shape[axis + 1..].iter().product(),
        );
        assert_eq!((scale.len(), bias.len()), (dims.1, dims.1), "scale, bias");
        LayerNorm {
            dims,
            shape: shape.into(),
            eps,
            scale: scale.into(),
            bias: bias.into(),
        }
    }

    /// Normalises `input` into `output`, at the best level this CPU has.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        let (outer, len, inner) = self.dims;
        ensure!(input.len() == outer * len * inner && output.len() == input.len());
        let kernel = kernel(level);
        let group = len * inner;
        for (x, y) in input
            .chunks_exact(group)
            .zip(output.chunks_exact_mut(group))
        {
            // SAFETY: `kernel` chose a function for a `Level` this CPU has.
            unsafe { kernel(self, x, y) };
        }
        Ok(())
    }
}

/// One `[len, inner]` group's normalisation, for a level.
type GroupFn = unsafe fn(&LayerNorm, &[f32], &mut [f32]);

fn kernel(level: Level) -> GroupFn {
    match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => group_avx512,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => group_avx2,
        // NEON is the aarch64 target's baseline: the portable loop
        // compiles to it.
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => group_portable,
        _ => group_portable,
    }
}

unsafe fn group_portable(op: &LayerNorm, x: &[f32], y: &mut [f32]) {
    normalise(op, x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_avx2(op: &LayerNorm, x: &[f32], y: &mut [f32]) {
    normalise(op, x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn group_avx512(op: &LayerNorm, x: &[f32], y: &mut [f32]) {
    normalise(op, x, y);
}

/// Two passes for the statistics (the mean, then the squares about it, as
/// the definition and tract's expansion compute them: no cancellation
/// from a running sum of squares) and one for the output, each along
/// contiguous positions of one row of the axis.
#[inline(always)]
fn normalise(op: &LayerNorm, x: &[f32], y: &mut [f32]) {
    let (_, len, inner) = op.dims;
    let n = len as f32;
    let (mut mean, mut var) = ([0f32; BLOCK], [0f32; BLOCK]);
    for start in (0..inner).step_by(BLOCK) {
        let width = BLOCK.min(inner - start);
        let (mean, var) = (&mut mean[..width], &mut var[..width]);
        mean.fill(0.0);
        for row in x.chunks_exact(inner) {
            for (m, v) in mean.iter_mut().zip(&row[start..start + width]) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        var.fill(0.0);
        for row in x.chunks_exact(inner) {
            for ((s, v), m) in var.iter_mut().zip(&row[start..start + width]).zip(&*mean) {
                let d = v - m;
                *s += d * d;
            }
        }
        // From here `var` holds 1 / sqrt(var + eps).
        var.iter_mut()
            .for_each(|s| *s = 1.0 / (*s / n + op.eps).sqrt());
        let rows = x.chunks_exact(inner).zip(y.chunks_exact_mut(inner));
        for ((row, out), (&scale, &bias)) in rows.zip(op.scale.iter().zip(op.bias.iter())) {
            let out = &mut out[start..start + width];
            for (((o, v), m), r) in out
                .iter_mut()
                .zip(&row[start..start + width])
                .zip(&*mean)
                .zip(&*var)
            {
                *o = (v - m) * r * scale + bias;
            }
        }
    }
}

/// Bitwise, so an operator equals itself even with NaN in its constants
/// (tract compares operators when it deduplicates nodes).
impl PartialEq for LayerNorm {
    fn eq(&self, other: &LayerNorm) -> bool {
        self.dims == other.dims
            && self.shape == other.shape
            && self.eps.to_bits() == other.eps.to_bits()
            && same_bits(&self.scale, &other.scale)
            && same_bits(&self.bias, &other.bias)
    }
}

impl Eq for LayerNorm {}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} eps {}", self.dims, self.eps)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(
            input.shape() == &*self.shape,
            "layer norm input {:?} is not {:?}",
            input.shape(),
            self.shape
        );
        // SAFETY: `compute` writes every element of each group it is given.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.shape)? };
        let src = input.try_as_plain_ram()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        self.compute(src.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.shape)))
    }

    as_op!();
}

/// What [`install`] found around an `RmsNorm`.
struct Found {
    /// The tensor normalised.
    x: OutletId,
    op: LayerNorm,
    /// The last node the operator replaces.
    last: usize,
}

/// The binary operator `name` (`Add`, `Sub`, `Mul`, `Div`) of `node`, if
/// it is one.
fn is_bin(node: &TypedNode, name: &str) -> bool {
    node.inputs.len() == 2
        && node
            .op_as::<TypedBinOp>()
            .is_some_and(|bin| bin.0.name() == name)
}

/// The constant operand of the binary `node` whose other operand is
/// `from`'s output, as f32 values with its shape.
fn constant_operand(model: &TypedModel, node: &TypedNode, from: usize) -> Option<Arc<Tensor>> {
    let other = node.inputs.iter().find(|i| i.node != from)?;
    let konst = model.outlet_fact(*other).ok()?.konst.clone()?;
    (konst.datum_type() == f32::datum_type()).then_some(konst)
}

/// `Mul` by a per-axis constant (`what` = "Mul"), or `Add` of one, right
/// after node `id`, keeping its shape: its values and the node.
fn following_per_axis(
    model: &TypedModel,
    id: usize,
    what: &str,
    shape: &[usize],
    axis: usize,
) -> Option<(Vec<f32>, usize)> {
    let next = sole_successor(model, id)?;
    let out = model.outlet_fact(OutletId::new(next.id, 0)).ok()?;
    if !is_bin(next, what) || out.shape.as_concrete() != Some(shape) {
        return None;
    }
    let values = per_axis(
        &*constant_operand(model, next, id)?,
        shape.len(),
        axis,
        shape[axis],
    )?;
    Some((values, next.id))
}

/// The layer normalisation ending at `rms`, as tract-onnx's expansion of
/// `LayerNormalization` leaves it once decluttered:
/// `RmsNorm(x - Reduce<Sum>(x) * (1 / n))`, then `* scale`, then `+ bias`.
fn describe(model: &TypedModel, rms_node: &TypedNode, rms: &RmsNorm) -> TractResult<Option<Found>> {
    let axis = rms.axis;
    let sub = model.node(rms_node.inputs[0].node);
    if !is_bin(sub, "Sub") || sole_successor(model, sub.id).map(|n| n.id) != Some(rms_node.id) {
        return Ok(None);
    }
    let (x, mean) = (sub.inputs[0], model.node(sub.inputs[1].node));
    let fact = model.outlet_fact(x)?;
    let (Some(shape), Some(eps)) = (
        fact.shape.as_concrete().map(|s| s.to_vec()),
        rms.eps
            .try_as_plain_ram()
            .ok()
            .and_then(|t| t.to_scalar::<f32>().ok().copied()),
    ) else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type() || axis >= shape.len() || shape[axis] == 0 {
        return Ok(None);
    }
    // mean = sum * (1 / n), the sum over `axis` alone, of `x` itself.
    let n = shape[axis] as f32;
    let sum = model.node(mean.inputs[0].node);
    let inverse = is_bin(mean, "Mul")
        .then(|| constant_operand(model, mean, sum.id))
        .flatten()
        .and_then(|k| k.as_uniform())
        .and_then(|k| k.try_as_plain_ram().ok()?.to_scalar::<f32>().ok().copied());
    let sums_x = sum.op_as::<Reduce>().is_some_and(|r| {
        matches!(r.reducer, Reducer::Sum) && r.axes[..] == [axis] && sum.inputs[0] == x
    });
    let single =
        |a: &TypedNode, b: &TypedNode| sole_successor(model, a.id).map(|s| s.id) == Some(b.id);
    if !sums_x
        || !single(sum, mean)
        || !single(mean, sub)
        || inverse.is_none_or(|v| (v * n - 1.0).abs() > 1e-6)
    {
        return Ok(None);
    }
    let mut last = rms_node.id;
    let mut scale = vec![1.0; shape[axis]];
    if let Some((values, id)) = following_per_axis(model, last, "Mul", &shape, axis) {
        (scale, last) = (values, id);
    }
    let mut bias = vec![0.0; shape[axis]];
    if let Some((values, id)) = following_per_axis(model, last, "Add", &shape, axis) {
        (bias, last) = (values, id);
    }
    let op = LayerNorm::new(&shape, axis, eps, scale, bias);
    Ok(Some(Found { x, op, last }))
}

/// Replaces every layer normalisation this module handles (see the module
/// docs) in a decluttered graph. Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(rms) = node.op_as::<RmsNorm>() else {
            continue;
        };
        let Some(found) = describe(model, node, rms)? else {
            continue;
        };
        let name = node.name.clone();
        replace_with(
            model,
            "onnx-lambda layer norm",
            &[found.x],
            (&name, found.op),
            found.last,
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

    /// The definition, in f64: mean and variance over the axis.
    fn reference(op: &LayerNorm, x: &[f32]) -> Vec<f32> {
        let (outer, len, inner) = op.dims;
        let mut y = vec![0f32; x.len()];
        for o in 0..outer {
            for p in 0..inner {
                let at = |c: usize| (o * len + c) * inner + p;
                let mean = (0..len).map(|c| x[at(c)] as f64).sum::<f64>() / len as f64;
                let var = (0..len)
                    .map(|c| (x[at(c)] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / len as f64;
                for c in 0..len {
                    let norm = (x[at(c)] as f64 - mean) / (var + op.eps as f64).sqrt();
                    y[at(c)] = (norm * op.scale[c] as f64 + op.bias[c] as f64) as f32;
                }
            }
        }
        y
    }

    /// Shapes with the axis first, last and in the middle, positions
    /// after it fewer than, equal to and more than a block (and not a
    /// whole number of vectors), at every level.
    #[test]
    fn matches_the_definition_on_any_axis_and_block_edge() {
        for (cases, (shape, axis)) in [
            (vec![2, 7, 3, 5], 1),
            (vec![1, 96, 14, 14], 1),
            (vec![3, 10], 1),
            (vec![5, 4, 1], 0),
            (vec![1, 4, 2 * BLOCK + 3], 1),
            (vec![2, 1, 9], 1),
        ]
        .into_iter()
        .enumerate()
        {
            let cases = cases as u32;
            let len = shape[axis];
            let x: Vec<f32> = noise(shape.iter().product(), cases + 1)
                .iter()
                .map(|v| 3.0 * v + 1.5)
                .collect();
            let op = LayerNorm::new(
                &shape,
                axis,
                1e-5,
                noise(len, cases + 2),
                noise(len, cases + 3),
            );
            let want = reference(&op, &x);
            for level in levels("layernorm", ALL_LEVELS) {
                let mut got = vec![f32::NAN; x.len()];
                op.compute_with(&x, &mut got, level).unwrap();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5,
                        "{shape:?} axis {axis} {level:?} at {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// An ONNX `LayerNormalization` (opset 17) over the last axis of `x`,
    /// with `perm` transposes around it as PyTorch's ConvNeXt exports it,
    /// as the loader parses and declutters it.
    fn layer_norm_model(shape: [i64; 4], around: Option<([i64; 4], [i64; 4])>) -> TypedModel {
        let normalised = around.map_or(shape[3], |(perm, _)| shape[perm[3] as usize]);
        let norm = |input, output| {
            let eps = vec![onnx::float("epsilon", 1e-6)];
            onnx::node("LayerNormalization", &[input, "s", "b"], output, eps)
        };
        let nodes = match around {
            Some((before, after)) => vec![
                onnx::node("Transpose", &["x"], "t", vec![onnx::ints("perm", &before)]),
                norm("t", "n"),
                onnx::node("Transpose", &["n"], "y", vec![onnx::ints("perm", &after)]),
            ],
            None => vec![norm("x", "y")],
        };
        let initializer = vec![
            onnx::weights("s", vec![normalised], 5),
            onnx::weights("b", vec![normalised], 6),
        ];
        onnx::decluttered(nodes, initializer, &shape, 17)
    }

    /// ConvNeXt's channels-last LayerNorm between transposes, and a plain
    /// one over the last axis: taken, nothing of tract's expansion left,
    /// and the results are tract's.
    #[test]
    fn install_takes_onnx_layer_normalization_and_keeps_the_results() {
        let shape = [2, 6, 3, 5];
        for around in [Some(([0, 2, 3, 1], [0, 3, 1, 2])), None] {
            let model = layer_norm_model(shape, around);
            let x = Tensor::from_shape(&shape.map(|d| d as usize), &noise(180, 4)).unwrap();
            let want = run_optimized(model.clone(), &x);
            let mut ours = model;
            assert_eq!(install(&mut ours).unwrap(), 1, "{around:?}");
            let left: Vec<String> = ours
                .nodes
                .iter()
                .filter(|n| n.op_as::<RmsNorm>().is_some() || n.op_as::<Reduce>().is_some())
                .map(|n| n.name.clone())
                .collect();
            assert!(left.is_empty(), "{around:?}: {left:?}");
            let got = run_optimized(ours, &x);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5, "{around:?}: {a} vs {b}");
            }
        }
    }
}

//! Our own matrix product with constant weights: a CNN's classifier
//! (`Gemm` or `MatMul` with a weight initializer), bias fused.
//!
//! Why: tract packs constant weights for its matrix kernels when it
//! optimises the model. For MobileNetV2's classifier (1000 x 1280) that is
//! a second 5 MB copy, made at the end of the load, when the load's memory
//! peaks, and time spent packing on the cold-start path (docs/operators.md
//! has the figures). With one image at a time the product is a matrix-vector
//! product bound by reading the weights once, and rows stored as the model
//! stores them (`[n][k]`, contiguous in k) stream through a dot product as
//! fast as any packed layout; this operator keeps the model's own tensor
//! and copies nothing (a `[k][n]` matrix is transposed once at install).
//!
//! How: one weight row at a time against each image's row (in L1), four
//! accumulators for independent FMA chains, so the weights are read in
//! one sequential stream (four rows at a time, four streams, measured no
//! faster: docs/operators.md); one image's outputs are split by rows over tract's executor, a batch's by
//! images.
//!
//! [`install`] takes every f32 `EinSum` of the form `mk,nk->mn` or
//! `mk,kn->mn` whose second input is a constant, and the `Add` of a
//! constant bias after it; anything else stays with tract.

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::{per_axis, replace_with, same_bits, sole_successor, Level, Simd};

/// `x · Wᵀ + bias` for `x` of `[m][k]` and constant `W` of `[n][k]`.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    k: usize,
    n: usize,
    /// `[n][k]` f32: the model's own tensor when it is stored that way.
    weights: Arc<Tensor>,
    /// `n` values.
    bias: Option<Arc<[f32]>>,
}

impl Dense {
    /// `weights` is an f32 tensor of `n * k` values, row `j` holding
    /// output `j`'s weights.
    pub(crate) fn new(k: usize, n: usize, weights: Arc<Tensor>, bias: Option<Vec<f32>>) -> Dense {
        assert_eq!(weights.len(), n * k, "weights");
        assert_eq!(weights.datum_type(), f32::datum_type(), "weights");
        assert!(bias.as_ref().is_none_or(|b| b.len() == n), "bias");
        Dense {
            k,
            n,
            weights,
            bias: bias.map(Into::into),
        }
    }

    /// Computes `output` (`[m][n]`) from `input` (`[m][k]`), splitting the
    /// work over tract's executor when one is installed.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        let kernels = Kernels::of(level);
        let (k, n) = (self.k, self.n);
        ensure!(k > 0 && n > 0, "empty matrix product");
        ensure!(
            input.len().is_multiple_of(k) && output.len() == input.len() / k * n,
            "matrix product sizes"
        );
        let weights = self.weights.try_as_plain_ram()?;
        let w = weights.as_slice::<f32>()?;
        let cost = output.len() * k;
        if input.len() == k {
            // One image: its outputs, split by rows of W.
            par_chunks_mut(output, 1, cost, |first, chunk| {
                self.block(kernels, w, input, first..first + chunk.len(), chunk);
                Ok(())
            })
        } else {
            // A batch: whole images per thread, each reading W once.
            par_chunks_mut(output, n, cost, |first, chunk| {
                let images = &input[first * k..][..chunk.len() / n * k];
                self.block(kernels, w, images, 0..n, chunk);
                Ok(())
            })
        }
    }

    /// Outputs `rows` of every image in `x` into `out`, `[images][rows]`.
    fn block(&self, kernels: Kernels, w: &[f32], x: &[f32], rows: Range<usize>, out: &mut [f32]) {
        let (k, width) = (self.k, rows.len());
        for (i, row) in rows.clone().enumerate() {
            let weights = &w[row * k..][..k];
            let bias = self.bias.as_ref().map_or(0.0, |b| b[row]);
            for (image, x) in x.chunks_exact(k).enumerate() {
                out[image * width + i] = kernels.dot(x, weights) + bias;
            }
        }
    }
}

/// The kernels of one level, chosen once per run from a [`Level`].
#[derive(Clone, Copy)]
struct Kernels {
    dot: unsafe fn(&[f32], &[f32]) -> f32,
}

impl Kernels {
    fn of(level: Level) -> Kernels {
        let dot = match level.simd() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => avx512::dot,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => avx2::dot,
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => neon::dot,
            _ => portable_dot,
        };
        Kernels { dot }
    }

    /// `x` dotted with `w`, of the same length.
    fn dot(&self, x: &[f32], w: &[f32]) -> f32 {
        assert_eq!(x.len(), w.len(), "dot lengths");
        // SAFETY: `of` chose the kernel for a `Level` this CPU has; both
        // slices have the same length, which the kernels read up to and
        // not past.
        unsafe { (self.dot)(x, w) }
    }
}

/// Eight partial sums, which the compiler keeps in one vector register.
fn portable_dot(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(wc) {
        for ((acc, a), b) in acc.iter_mut().zip(a).zip(b) {
            *acc += a * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx512.rs"]
mod avx512;

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx2.rs"]
mod avx2;

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/neon.rs"]
mod neon;

impl PartialEq for Dense {
    fn eq(&self, other: &Dense) -> bool {
        let slice = |t: &Tensor| {
            t.try_as_plain_ram()
                .ok()
                .and_then(|r| r.as_slice::<f32>().ok().map(<[f32]>::to_vec))
        };
        self.k == other.k
            && self.n == other.n
            && (Arc::ptr_eq(&self.weights, &other.weights)
                || slice(&self.weights)
                    .zip(slice(&other.weights))
                    .is_some_and(|(a, b)| same_bits(&a, &b)))
            && match (&self.bias, &other.bias) {
                (Some(a), Some(b)) => same_bits(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl Eq for Dense {}

impl Op for Dense {
    fn name(&self) -> StaticName {
        "Dense(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {}, bias {}",
            self.k,
            self.n,
            self.bias.is_some()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Dense {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape();
        ensure!(
            shape.len() == 2 && shape[1] == self.k,
            "matrix product input {shape:?} does not have {} columns",
            self.k
        );
        // SAFETY: `compute` writes every element (each output once, in
        // `block`; the tests fill the output with NaN first to prove it).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[shape[0], self.n])? };
        let src = inputs[0].try_as_plain_ram()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        self.compute(src.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Dense {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(
            shape.len() == 2 && shape[1] == self.k.to_dim(),
            "matrix product input {shape:?} does not have {} columns",
            self.k
        );
        Ok(tvec!(f32::fact([shape[0].clone(), self.n.to_dim()])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            inputs[0].shape[0].clone() * (self.k * self.n)
        )))
    }

    as_op!();
}

/// How the constant matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// `[n][k]`, what this operator reads (ONNX `Gemm` with `transB`).
    RowPerOutput,
    /// `[k][n]` (`MatMul`, `Gemm` without `transB`): transposed at install.
    ColumnPerOutput,
}

/// `(k, n, stored)` if `node` is an f32 `EinSum` `mk,nk->mn` or
/// `mk,kn->mn` of a fixed `[m][k]` input and a constant matrix.
fn dense_layer(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
) -> TractResult<Option<(usize, usize, Stored)>> {
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (input, matrix) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    );
    let Some(konst) = matrix.konst.as_ref() else {
        return Ok(None);
    };
    let (Some(a), Some(b)) = (input.shape.as_concrete(), matrix.shape.as_concrete()) else {
        return Ok(None);
    };
    if input.datum_type != f32::datum_type() || konst.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let (ins, outs) = op.axes.to_strs();
    let letters = |s: &str| s.chars().collect::<Vec<char>>();
    let (x, w) = (letters(&ins[0]), letters(&ins[1]));
    let out = outs.first().map(|s| letters(s)).unwrap_or_default();
    if x.len() != 2 || w.len() != 2 || out.len() != 2 || a.len() != 2 || b.len() != 2 {
        return Ok(None);
    }
    let (m, k, n) = (x[0], x[1], out[1]);
    if m == k || k == n || m == n || out[0] != m {
        return Ok(None);
    }
    let stored = match (w[0], w[1]) {
        (wn, wk) if wn == n && wk == k => Stored::RowPerOutput,
        (wk, wn) if wk == k && wn == n => Stored::ColumnPerOutput,
        _ => return Ok(None),
    };
    let (k_len, n_len) = match stored {
        Stored::RowPerOutput => (b[1], b[0]),
        Stored::ColumnPerOutput => (b[0], b[1]),
    };
    Ok((a[1] == k_len && k_len > 0 && n_len > 0).then_some((k_len, n_len, stored)))
}

/// One vector times a constant matrix, in a tensor whose other axes all
/// have size 1: a squeeze-and-excite block's 1x1 convolutions on its pooled
/// `[1, C, 1, 1]`, a classifier after a pooling that kept its axes. Returns
/// `k`, `n`, how the matrix is stored and the axis of `n` in the output.
fn vector_layer(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
) -> TractResult<Option<(usize, usize, Stored, usize)>> {
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (input, matrix, output) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
        model.outlet_fact(OutletId::new(node.id, 0))?,
    );
    let (Some(a), Some(b), Some(o)) = (
        input.shape.as_concrete(),
        matrix.shape.as_concrete(),
        output.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let f32_konst = matrix
        .konst
        .as_ref()
        .is_some_and(|k| k.datum_type() == f32::datum_type());
    if input.datum_type != f32::datum_type() || !f32_konst || b.len() != 2 {
        return Ok(None);
    }
    let (ins, outs) = op.axes.to_strs();
    let letters = |s: &str| s.chars().collect::<Vec<char>>();
    let (x, w) = (letters(&ins[0]), letters(&ins[1]));
    let out = outs.first().map(|s| letters(s)).unwrap_or_default();
    if x.len() != a.len() || out.len() != o.len() || w.len() != 2 {
        return Ok(None);
    }
    let (Some(&kc), Some(&nc)) = (
        w.iter().find(|c| x.contains(c) && !out.contains(c)),
        w.iter().find(|c| out.contains(c) && !x.contains(c)),
    ) else {
        return Ok(None);
    };
    let (k_at, n_at) = (
        x.iter().position(|&c| c == kc).unwrap(),
        out.iter().position(|&c| c == nc).unwrap(),
    );
    let ones = |shape: &[usize], except: usize| {
        shape
            .iter()
            .enumerate()
            .all(|(i, &d)| i == except || d == 1)
    };
    let (k, n) = (a[k_at], o[n_at]);
    let stored = if w == [nc, kc] && b == [n, k] {
        Stored::RowPerOutput
    } else if w == [kc, nc] && b == [k, n] {
        Stored::ColumnPerOutput
    } else {
        return Ok(None);
    };
    let vector = ones(a, k_at) && ones(o, n_at) && k > 0 && n > 0;
    Ok(vector.then_some((k, n, stored, n_at)))
}

/// The constant bias an `Add` right after node `id` puts on its `[m][n]`
/// output (one value per output, or one for all), and that `Add`.
fn following_bias(
    model: &TypedModel,
    id: usize,
    n: usize,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let rank = model.outlet_fact(OutletId::new(id, 0))?.rank();
    following_bias_at(model, id, n, rank.saturating_sub(1))
}

/// [`following_bias`] for an output whose `n` values lie along axis
/// `n_axis` (the others of size 1).
fn following_bias_at(
    model: &TypedModel,
    id: usize,
    n: usize,
    n_axis: usize,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let Some(next) = sole_successor(model, id) else {
        return Ok(None);
    };
    if next
        .op_as::<TypedBinOp>()
        .is_none_or(|b| b.0.name() != "Add")
        || next.inputs.len() != 2
    {
        return Ok(None);
    }
    let other = next.inputs[usize::from(next.inputs[0].node == id)];
    let out = model.outlet_fact(OutletId::new(id, 0))?;
    let same_shape = out.shape == model.outlet_fact(OutletId::new(next.id, 0))?.shape;
    let Some(konst) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    let bias = per_axis(&konst, out.rank(), n_axis, n).filter(|_| same_shape);
    let Some(bias) = bias else {
        return Ok(None);
    };
    Ok(Some((bias, next.id)))
}

/// Puts a [`Dense`] in place of every matrix product [`dense_layer`]
/// accepts and every vector product [`vector_layer`] does (and the bias
/// `Add` after it); returns how many.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<EinSum>() else {
            continue;
        };
        let Some((k, n, stored)) = dense_layer(model, node, op)? else {
            if let Some(layer) = vector_layer(model, node, op)? {
                install_vector(model, id, layer)?;
                replaced += 1;
            }
            continue;
        };
        let konst = model.outlet_fact(node.inputs[1])?.konst.clone();
        let Some(konst) = konst else { continue };
        let weights = match stored {
            Stored::RowPerOutput => konst,
            Stored::ColumnPerOutput => Arc::new(konst.as_ref().clone().permute_axes(&[1, 0])?),
        };
        let (bias, last) = match following_bias(model, id, n)? {
            Some((bias, add)) => (Some(bias), add),
            None => (None, id),
        };
        let op = Dense::new(k, n, weights, bias);
        let (input, name) = (node.inputs[0], node.name.clone());
        replace_with(model, "onnx-lambda dense", &[input], (&name, op), last)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

/// [`Dense`] on a vector product: the vector reshaped to `[1, k]` before
/// it (a shape change, no copy) and the result back to the output's shape
/// after. tract ran these at 3-6 GMAC/s (its packed kernels on one row:
/// 5% of MobileNetV3-Large's inference, `onnx-lambda profile`).
fn install_vector(
    model: &mut TypedModel,
    id: usize,
    (k, n, stored, n_axis): (usize, usize, Stored, usize),
) -> TractResult<()> {
    let node = model.node(id);
    let Some(konst) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        bail!("vector_layer accepted a product without constant weights");
    };
    let weights = match stored {
        Stored::RowPerOutput => konst,
        Stored::ColumnPerOutput => Arc::new(konst.as_ref().clone().permute_axes(&[1, 0])?),
    };
    let (bias, last) = match following_bias_at(model, id, n, n_axis)? {
        Some((bias, add)) => (Some(bias), add),
        None => (None, id),
    };
    let dims = |shape: &ShapeFact| shape.iter().cloned().collect::<TVec<TDim>>();
    let in_shape = dims(&model.outlet_fact(node.inputs[0])?.shape);
    let out_shape = dims(&model.outlet_fact(OutletId::new(id, 0))?.shape);
    let row = tvec![1.to_dim(), k.to_dim()];
    let result = tvec![1.to_dim(), n.to_dim()];
    let name = node.name.clone();
    let mut patch = TypedModelPatch::new("onnx-lambda dense vector");
    let x = patch.tap_model(model, node.inputs[0])?;
    let x = patch.wire_node(
        format!("{name}.row"),
        AxisOp::Reshape(0, in_shape, row),
        &[x],
    )?;
    let y = patch.wire_node(&name, Dense::new(k, n, weights, bias), &x)?;
    let y = patch.wire_node(
        format!("{name}.shape"),
        AxisOp::Reshape(0, result, out_shape),
        &y,
    )?;
    patch.shunt_outside(model, OutletId::new(last, 0), y[0])?;
    patch.apply(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{
        bundled_decluttered, levels, noise, run_optimized as run, ALL_LEVELS,
    };

    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, n: usize) -> Vec<f32> {
        x.chunks_exact(k)
            .flat_map(|x| {
                (0..n).map(move |j| {
                    let dot: f64 = x
                        .iter()
                        .zip(&w[j * k..][..k])
                        .map(|(a, b)| f64::from(a * b))
                        .sum();
                    dot as f32 + bias.map_or(0.0, |b| b[j])
                })
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    fn dense(k: usize, n: usize, seed: u32, bias: bool) -> (Dense, Vec<f32>, Option<Vec<f32>>) {
        let w = noise(n * k, seed);
        let b = bias.then(|| noise(n, seed + 1));
        let t = Tensor::from_shape(&[n, k], &w).unwrap();
        (Dense::new(k, n, Arc::new(t), b.clone()), w, b)
    }

    #[test]
    fn matches_the_definition_at_every_level_and_odd_shape() {
        for (case, (m, k, n)) in (0u32..).zip([
            (1, 1280, 1000),
            (1, 1, 1),
            (3, 17, 5),
            (2, 33, 7),
            (4, 64, 13),
            (1, 47, 9),
        ]) {
            let (op, w, b) = dense(k, n, 10 + case, case % 2 == 0);
            let x = noise(m * k, 50 + case);
            let want = reference(&x, &w, b.as_deref(), k, n);
            for simd in levels("dense", ALL_LEVELS) {
                let mut got = vec![f32::NAN; m * n];
                op.compute_with(&x, &mut got, simd).unwrap();
                close(&got, &want);
            }
        }
    }

    #[test]
    fn refuses_sizes_that_do_not_fit() {
        let (op, _, _) = dense(8, 3, 1, true);
        let mut out = vec![0.0; 3];
        assert!(op.compute(&[0.0; 7], &mut out).is_err());
        assert!(op.compute(&[0.0; 16], &mut out).is_err());
    }

    #[test]
    fn two_threads_give_the_same_bits_as_one() {
        for m in [1, 5] {
            let (op, _, _) = dense(1280, 1000, 3, true);
            let x = noise(m * 1280, 4);
            let mut one = vec![f32::NAN; m * 1000];
            op.compute(&x, &mut one).unwrap();
            let mut two = vec![f32::NAN; one.len()];
            crate::ops::OperatorPool::new(2)
                .run(|| op.compute(&x, &mut two))
                .unwrap();
            assert!(same_bits(&one, &two), "m = {m}");
        }
    }

    #[test]
    fn takes_the_classifier_of_the_bundled_model_and_matches_tract() {
        let model = bundled_decluttered();
        let mut ours = model.clone();
        assert_eq!(install(&mut ours).unwrap(), 1);
        // The bias `Add` went into the operator with the product. (The 1x1
        // convolutions are `EinSum`s too, and the residual sums `Add`s.)
        let count =
            |m: &TypedModel, name: &str| m.nodes.iter().filter(|n| n.op.name() == name).count();
        assert_eq!(count(&model, "EinSum") - count(&ours, "EinSum"), 1);
        assert_eq!(count(&model, "Add") - count(&ours, "Add"), 1);
        let input = Tensor::from_shape(&[1, 3, 224, 224], &noise(3 * 224 * 224, 7)).unwrap();
        close(&run(ours, &input), &run(model, &input));
    }

    /// A `[m][k]` source times a constant, plus a constant bias, as tract's
    /// `EinSum` and `Add` (what `MatMul`/`Gemm` declutter to).
    fn product(expr: &str, m: usize, w: Tensor, bias: Option<Tensor>) -> TypedModel {
        let k = if expr.contains("nk") {
            w.shape()[1]
        } else {
            w.shape()[0]
        };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([m, k])).unwrap();
        let w = model.add_const("w", w).unwrap();
        let op = EinSum::new(expr.parse().unwrap(), f32::datum_type());
        let mut y = model.wire_node("mm", op, &[x, w]).unwrap()[0];
        if let Some(bias) = bias {
            let b = model.add_const("b", bias).unwrap();
            y = model
                .wire_node("add", tract_onnx::tract_core::ops::math::add(), &[y, b])
                .unwrap()[0];
        }
        model.select_output_outlets(&[y]).unwrap();
        model
    }

    #[test]
    fn takes_both_weight_layouts_and_every_bias_shape() {
        let (m, k, n) = (3, 21, 6);
        let input = Tensor::from_shape(&[m, k], &noise(m * k, 21)).unwrap();
        let w_nk = Tensor::from_shape(&[n, k], &noise(n * k, 22)).unwrap();
        let w_kn = w_nk.clone().permute_axes(&[1, 0]).unwrap();
        // (bias, whether it is fused): one per output, one for all, and
        // one per image and output, which stays an `Add`.
        let biases = [
            (None, true),
            (
                Some(Tensor::from_shape(&[1, n], &noise(n, 23)).unwrap()),
                true,
            ),
            (Some(Tensor::from_shape(&[1, 1], &[0.5f32]).unwrap()), true),
            (
                Some(Tensor::from_shape(&[m, n], &noise(m * n, 24)).unwrap()),
                false,
            ),
        ];
        for (expr, w) in [("mk,nk->mn", &w_nk), ("mk,kn->mn", &w_kn)] {
            for (bias, fused) in &biases {
                let model = product(expr, m, w.clone(), bias.clone());
                let mut ours = model.clone();
                assert_eq!(install(&mut ours).unwrap(), 1, "{expr} {bias:?}");
                let adds = ours.nodes.iter().filter(|n| n.op.name() == "Add").count();
                let want = usize::from(bias.is_some() && !fused);
                assert_eq!(adds, want, "{expr} {bias:?}");
                close(&run(ours, &input), &run(model, &input));
            }
        }
    }

    /// Squeeze-and-excite's 1x1 convolutions on a pooled `[1, C, 1, 1]`
    /// (both weight layouts, the bias per channel), and ShuffleNet's
    /// classifier on a `[k, 1, 1]` pooling: taken, bias fused, the output
    /// in its own shape, the results tract's. A batch of two is not a
    /// vector and stays with tract.
    #[test]
    fn takes_vector_products_in_any_shape_of_ones() {
        use tract_onnx::tract_core::ops::math::add;
        let (k, n) = (24, 7);
        // The product, input and weight shapes, the bias's shape, and how
        // many products the installer takes.
        type Case<'a> = (
            &'a str,
            &'a [usize],
            &'a [usize],
            Option<&'a [usize]>,
            usize,
        );
        let cases: [Case; 4] = [
            (
                "NIHW,OI->NOHW",
                &[1, k, 1, 1],
                &[n, k],
                Some(&[1, n, 1, 1]),
                1,
            ),
            (
                "NIHW,IO->NOHW",
                &[1, k, 1, 1],
                &[k, n],
                Some(&[1, n, 1, 1]),
                1,
            ),
            ("kba,nk->mn", &[k, 1, 1], &[n, k], None, 1),
            ("NIHW,OI->NOHW", &[2, k, 1, 1], &[n, k], None, 0),
        ];
        for (expr, x_shape, w_shape, bias, taken) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(x_shape)).unwrap();
            let w = Tensor::from_shape(w_shape, &noise(n * k, 3)).unwrap();
            let w = model.add_const("w", w).unwrap();
            let op = EinSum::new(expr.parse().unwrap(), f32::datum_type());
            let mut y = model.wire_node("mm", op, &[x, w]).unwrap()[0];
            if let Some(b_shape) = bias {
                let b = Tensor::from_shape(b_shape, &noise(n, 4)).unwrap();
                let b = model.add_const("b", b).unwrap();
                y = model.wire_node("add", add(), &[y, b]).unwrap()[0];
            }
            model.select_output_outlets(&[y]).unwrap();
            let want_shape = model.outlet_fact(y).unwrap().shape.clone();
            let input = Tensor::from_shape(x_shape, &noise(x_shape.iter().product(), 5)).unwrap();
            let mut ours = model.clone();
            assert_eq!(install(&mut ours).unwrap(), taken, "{expr} {x_shape:?}");
            if taken == 0 {
                continue;
            }
            let out = ours.output_outlets().unwrap()[0];
            assert_eq!(ours.outlet_fact(out).unwrap().shape, want_shape, "{expr}");
            assert_eq!(
                ours.nodes.iter().filter(|n| n.op.name() == "Add").count(),
                0
            );
            close(&run(ours, &input), &run(model, &input));
        }
    }

    #[test]
    fn leaves_products_of_two_inputs_and_other_shapes_to_tract() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 4])).unwrap();
        let w = model.add_source("w", f32::fact([3, 4])).unwrap();
        let op = EinSum::new("mk,nk->mn".parse().unwrap(), f32::datum_type());
        let y = model.wire_node("mm", op, &[x, w]).unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        assert_eq!(install(&mut model).unwrap(), 0);
        // A batched product (rank 3) is not a classifier's.
        let w = Tensor::from_shape(&[2, 3, 4], &noise(24, 1)).unwrap();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 5, 4])).unwrap();
        let w = model.add_const("w", w).unwrap();
        let op = EinSum::new("bmk,bnk->bmn".parse().unwrap(), f32::datum_type());
        let y = model.wire_node("mm", op, &[x, w]).unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        assert_eq!(install(&mut model).unwrap(), 0);
    }
}

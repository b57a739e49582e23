//! How the operators find what they fuse in: the clamps (ReLU6, Clip)
//! before and after a node, a node's sole successor, scalar operands, a
//! convolution's kernel in one layout, and the bitwise equality tract's
//! deduplication needs.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::KernelFormat;

/// A `Max` and/or `Min` with a constant scalar right after node `id` (how
/// ReLU6 / Clip reads once decluttered), as a clamp, and the last node of
/// that chain.
pub(crate) fn following_clamp(
    model: &TypedModel,
    id: usize,
) -> TractResult<(Option<(f32, f32)>, usize)> {
    let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
    let mut last = id;
    for _ in 0..2 {
        let Some(next) = sole_successor(model, last) else {
            break;
        };
        let Some(bin) = next.op_as::<TypedBinOp>() else {
            break;
        };
        let Some(value) = scalar_operand(model, next, last)? else {
            break;
        };
        if !tighten(bin, value, (&mut lo, &mut hi)) {
            break;
        }
        last = next.id;
    }
    let clamp = (last != id).then_some((lo, hi));
    Ok((
        clamp.filter(|(lo, hi)| lo <= hi),
        if lo <= hi { last } else { id },
    ))
}

/// The `Max` and/or `Min` with a constant scalar that produce `outlet`
/// and feed nothing else (a ReLU6 before a layer), as a clamp, and the
/// outlet they read: what `outlet` is without them.
pub(crate) fn preceding_clamp(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<(Option<(f32, f32)>, OutletId)> {
    let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
    let mut source = outlet;
    for _ in 0..2 {
        let node = model.node(source.node);
        let Some(bin) = node.op_as::<TypedBinOp>() else {
            break;
        };
        if node.inputs.len() != 2 || sole_successor(model, node.id).is_none() {
            break;
        }
        let from = node.inputs[usize::from(model.outlet_fact(node.inputs[0])?.konst.is_some())];
        if from.slot != 0 {
            break;
        }
        let Some(value) = scalar_operand(model, node, from.node)? else {
            break;
        };
        if !tighten(bin, value, (&mut lo, &mut hi)) {
            break;
        }
        source = from;
    }
    let clamp = (source != outlet && lo <= hi).then_some((lo, hi));
    Ok((clamp, if clamp.is_some() { source } else { outlet }))
}

/// Takes a `Max` (the lower bound) or a `Min` (the upper bound) into the
/// clamp being built; false when it is neither or that bound is taken.
fn tighten(bin: &TypedBinOp, value: f32, (lo, hi): (&mut f32, &mut f32)) -> bool {
    match bin.0.name() {
        "Max" if *lo == f32::NEG_INFINITY => *lo = value,
        "Min" if *hi == f32::INFINITY => *hi = value,
        _ => return false,
    }
    true
}

/// The one node reading node `id`'s only output, unless that output is
/// also a model output.
pub(crate) fn sole_successor(model: &TypedModel, id: usize) -> Option<&TypedNode> {
    let node = model.node(id);
    let outlet = OutletId::new(id, 0);
    if node.outputs.len() != 1
        || node.outputs[0].successors.len() != 1
        || model.outputs.contains(&outlet)
    {
        return None;
    }
    Some(model.node(node.outputs[0].successors[0].node))
}

/// The constant scalar `node` combines with the output of `from`, if its
/// other input is one and the output keeps `from`'s shape.
fn scalar_operand(model: &TypedModel, node: &TypedNode, from: usize) -> TractResult<Option<f32>> {
    if node.inputs.len() != 2 {
        return Ok(None);
    }
    let other = if node.inputs[0].node == from {
        node.inputs[1]
    } else {
        node.inputs[0]
    };
    let same_shape = model.outlet_fact(OutletId::new(from, 0))?.shape
        == model.outlet_fact(OutletId::new(node.id, 0))?.shape;
    let Some(konst) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    if !same_shape || konst.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    Ok(konst
        .as_uniform()
        .and_then(|t| t.try_as_plain_ram().ok()?.to_scalar::<f32>().ok().copied()))
}

/// Bitwise equality, so an operator equals itself even with NaN in its
/// constants (tract compares operators when it deduplicates nodes).
pub(crate) fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// [`same_bits`] for an optional clamp.
pub(crate) fn same_clamp(a: Option<(f32, f32)>, b: Option<(f32, f32)>) -> bool {
    a.map(|(lo, hi)| (lo.to_bits(), hi.to_bits())) == b.map(|(lo, hi)| (lo.to_bits(), hi.to_bits()))
}

/// Puts `op`, fed by `inputs`, in place of the nodes up to `last`'s first
/// output (one node, or a node and the clamps and residual `Add` it took
/// in): the one graph patch every operator's installer applies.
pub(crate) fn replace_with(
    model: &mut TypedModel,
    what: &str,
    inputs: &[OutletId],
    (name, op): (&str, impl Into<Box<dyn TypedOp>>),
    last: usize,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::new(what);
    let taps = inputs
        .iter()
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let wire = patch.wire_node(name, op, &taps)?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
    patch.apply(model)
}

/// The kernel as `[out][in][ky][kx]`, whatever its stored format, if it
/// has `shape`.
pub(crate) fn weights_oihw(
    kernel: &Tensor,
    format: KernelFormat,
    shape: [usize; 4],
) -> TractResult<Option<Vec<f32>>> {
    let kernel = kernel.cast_to::<f32>()?;
    let view = kernel.to_plain_array_view::<f32>()?;
    if view.ndim() != 4 {
        return Ok(None);
    }
    let oihw = match format {
        KernelFormat::OIHW => view,
        KernelFormat::HWIO => view.permuted_axes(&[3, 2, 0, 1][..]),
        KernelFormat::OHWI => view.permuted_axes(&[0, 3, 1, 2][..]),
    };
    if oihw.shape() != shape {
        return Ok(None);
    }
    Ok(Some(oihw.iter().copied().collect()))
}

/// The `Add` right after node `id` whose other operand is a computed tensor
/// of the same shape (a residual connection): that operand and the `Add`.
pub(crate) fn following_residual(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(OutletId, usize)>> {
    let Some(next) = sole_successor(model, id) else {
        return Ok(None);
    };
    let is_add = next
        .op_as::<TypedBinOp>()
        .is_some_and(|bin| bin.0.name() == "Add");
    if !is_add || next.inputs.len() != 2 || next.inputs[0] == next.inputs[1] {
        return Ok(None);
    }
    let other = next.inputs[usize::from(next.inputs[0].node == id)];
    let (mine, theirs, out) = (
        model.outlet_fact(OutletId::new(id, 0))?,
        model.outlet_fact(other)?,
        model.outlet_fact(OutletId::new(next.id, 0))?,
    );
    let same = theirs.konst.is_none()
        && theirs.datum_type == f32::datum_type()
        && theirs.shape == mine.shape
        && out.shape == mine.shape;
    Ok(same.then_some((other, next.id)))
}

/// A constant's f32 values as one per position along `axis` of a tensor of
/// `rank` axes and `len` positions there: every other axis of size 1,
/// aligned from the right as broadcasting aligns it, or a single value for
/// all. How a bias, a scale or a normalisation's parameters read once
/// decluttered; `None` for any other constant.
pub(crate) fn per_axis(konst: &Tensor, rank: usize, axis: usize, len: usize) -> Option<Vec<f32>> {
    let offset = rank.checked_sub(konst.rank())?;
    let fits = konst
        .shape()
        .iter()
        .enumerate()
        .all(|(i, &d)| d == 1 || (i + offset == axis && d == len));
    if konst.datum_type() != f32::datum_type() || !fits {
        return None;
    }
    let values = konst
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()?
        .to_vec();
    match values.len() {
        1 => Some(vec![values[0]; len]),
        n if n == len => Some(values),
        _ => None,
    }
}

/// The constant operand of a binary `op` (`"Add"`, `"Mul"`) right after
/// node `id`, whose output has `shape`, as one value per position of
/// `axis` (a bias, or a batch norm's scale or shift once decluttered), and
/// the node the chain now ends at.
pub(crate) fn following_per_axis(
    model: &TypedModel,
    id: usize,
    op: &str,
    (shape, axis): (&[usize], usize),
) -> TractResult<(Option<Vec<f32>>, usize)> {
    let none = (None, id);
    let Some(next) = sole_successor(model, id) else {
        return Ok(none);
    };
    let is_op = next
        .op_as::<TypedBinOp>()
        .is_some_and(|bin| bin.0.name() == op);
    if !is_op || next.inputs.len() != 2 {
        return Ok(none);
    }
    let other = next.inputs[usize::from(next.inputs[0].node == id)];
    let konst = model.outlet_fact(other)?.konst.clone();
    let out = model.outlet_fact(OutletId::new(next.id, 0))?;
    let Some(konst) = konst else {
        return Ok(none);
    };
    let values = per_axis(&konst, shape.len(), axis, shape[axis]);
    let Some(values) = values.filter(|_| out.shape.as_concrete() == Some(shape)) else {
        return Ok(none);
    };
    Ok((Some(values), next.id))
}

/// `x * scale + shift`, one scale and one shift per channel.
pub(crate) type Affine = (Vec<f32>, Vec<f32>);

/// The per-channel constant `Mul`s and `Add`s right after node `id`, in
/// any order (a bias, then a batch norm's scale and shift once
/// decluttered), composed into one `x * scale + shift`, and the node the
/// chain now ends at.
pub(crate) fn following_affine(
    model: &TypedModel,
    id: usize,
    channels: (&[usize], usize),
) -> TractResult<(Option<Affine>, usize)> {
    let len = channels.0[channels.1];
    let (mut scale, mut shift) = (vec![1f32; len], vec![0f32; len]);
    let mut last = id;
    loop {
        if let (Some(c), next) = following_per_axis(model, last, "Mul", channels)? {
            scale.iter_mut().zip(&c).for_each(|(s, c)| *s *= c);
            shift.iter_mut().zip(&c).for_each(|(t, c)| *t *= c);
            last = next;
        } else if let (Some(c), next) = following_per_axis(model, last, "Add", channels)? {
            shift.iter_mut().zip(&c).for_each(|(t, c)| *t += c);
            last = next;
        } else {
            break;
        }
    }
    Ok(((last != id).then_some((scale, shift)), last))
}

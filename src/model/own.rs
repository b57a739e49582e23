//! What the project's own operators (`depthwise.rs`, `pointwise.rs`,
//! `stem.rs`, `fused.rs`, `dense.rs`) share: the instruction set they run
//! with, and how they find the operations after a node that they fuse in.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

/// The instruction set an operator runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Plain Rust, vectorised by the compiler (SSE2, NEON).
    Portable,
    /// AVX2 + FMA: 8 outputs a step.
    Avx2,
    /// AVX-512F (with AVX2 + FMA for the rest): 16 outputs a step, masked
    /// tails, so a 7- or 14-wide row is one step.
    Avx512,
}

/// The highest level [`Simd::detect`] returns, as `Simd as u8`: lowered
/// by [`Simd::limit`] only.
static LIMIT: AtomicU8 = AtomicU8::new(Simd::Avx512 as u8);

impl Simd {
    /// Every level, lowest first: each one's CPU has all below it.
    const ALL: [Simd; 3] = [Simd::Portable, Simd::Avx2, Simd::Avx512];

    /// The best level this CPU has, up to the process's [`Simd::limit`].
    /// Operators ask on every run, so the CPU is asked once.
    pub(crate) fn detect() -> Simd {
        static BEST: OnceLock<Simd> = OnceLock::new();
        let best = *BEST.get_or_init(|| *Simd::available().last().unwrap_or(&Simd::Portable));
        let limit = LIMIT.load(Ordering::Relaxed);
        Simd::ALL
            .into_iter()
            .rev()
            .find(|&l| l <= best && l as u8 <= limit)
            .unwrap_or(Simd::Portable)
    }

    /// Runs the project's operators at most at `level` from now on, for the
    /// whole process: so that `bench --simd avx2` and `profile --simd avx2`
    /// measure on an AVX-512 machine the path an AVX2-only one runs (the
    /// session machines change between the two kinds).
    pub fn limit(level: Simd) {
        LIMIT.store(level as u8, Ordering::Relaxed);
    }

    /// The level named `name` (`portable`, `avx2`, `avx512`), for `--simd`.
    pub fn parse(name: &str) -> Result<Simd, String> {
        Simd::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| format!("{name:?}: expected portable, avx2 or avx512"))
    }

    /// The level's name, as `--simd` takes it and reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    /// Every level this CPU can run, portable first.
    pub(crate) fn available() -> Vec<Simd> {
        let mut levels = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                levels.push(Simd::Avx2);
                if has!("avx512f") {
                    levels.push(Simd::Avx512);
                }
            }
        }
        levels
    }
}

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

/// Splits `output` (planes of `plane` values, `channels` of them per image)
/// over tract's executor: whole panels of `panel` planes when the channels
/// come in panels, so no tile is computed twice, else single planes. `f`
/// gets the chunk's planes (counted across images) and its values.
pub(crate) fn par_planes(
    output: &mut [f32],
    (plane, channels, panel): (usize, usize, usize),
    cost: usize,
    f: impl Fn(Range<usize>, &mut [f32]) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let unit = if channels.is_multiple_of(panel) {
        panel
    } else {
        1
    };
    par_chunks_mut(output, unit * plane, cost, |first, chunk| {
        f(first * unit..first * unit + chunk.len() / plane, chunk)
    })
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
pub(crate) fn scalar_operand(
    model: &TypedModel,
    node: &TypedNode,
    from: usize,
) -> TractResult<Option<f32>> {
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

/// What the operators' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use tract_onnx::prelude::*;

    /// Deterministic values in [-1, 1) (xorshift), one stream per seed.
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

    /// `model` optimised and run once on `input`: its first output's values.
    pub(crate) fn run_optimized(model: TypedModel, input: &Tensor) -> Vec<f32> {
        let out = model
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec![input.clone().into()])
            .unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    /// The bundled MobileNetV2 at batch 1, as the loader's declutter leaves
    /// it (where the operators are installed).
    pub(crate) fn bundled_decluttered() -> TypedModel {
        let path = crate::config::bundled_model_path();
        let mut graph = tract_onnx::onnx().model_for_path(&path).unwrap();
        graph
            .set_input_fact(0, f32::fact([1, 3, 224, 224]).into())
            .unwrap();
        let mut model = graph.into_typed().unwrap();
        crate::model::declutter::declutter(&mut model).unwrap();
        model
    }
}

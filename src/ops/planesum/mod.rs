//! Our own sum over each plane of an f32 tensor: the sum behind a global
//! average pool (squeeze-and-excite's, and every classifier head's).
//!
//! Why: tract's `Reduce<Sum>` went through its generic reduction at about
//! 3.5 G values a second: EfficientNet-B0's 17 global pools took 6% of its
//! inference (`onnx-lambda profile`, docs/operators.md).
//!
//! How: each plane is summed in 16 running lanes (8 or 16 per vector, a
//! few vectors in flight), then the lanes are added; planes split over
//! the pool. The sum's order differs from tract's, so the last bits may.
//!
//! [`install`] takes every f32 `Reduce<Sum>` over a tensor's trailing
//! axes (the spatial axes of NCHW).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::{replace_with, Level, Simd};

/// The sum of each plane: axes `from..` of the input, kept as size 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PlaneSum {
    from: usize,
}

/// Running sums per plane: enough independent adds to cover the adder's
/// latency at 8 or 16 lanes a vector.
const LANES: usize = 32;

impl PlaneSum {
    /// `output[i]` the sum of `input`'s `i`-th run of `plane` values.
    pub(crate) fn compute(input: &[f32], plane: usize, output: &mut [f32]) {
        PlaneSum::compute_with(input, plane, output, Level::detect())
    }

    fn compute_with(input: &[f32], plane: usize, output: &mut [f32], level: Level) {
        debug_assert_eq!(input.len(), plane * output.len());
        if plane == 0 {
            output.fill(0.0);
            return;
        }
        let run = kernel(level);
        let _ = par_chunks_mut(output, 1, input.len(), |first, chunk| {
            for (i, o) in chunk.iter_mut().enumerate() {
                // SAFETY: the kernel was chosen for a level this CPU has.
                *o = unsafe { run(&input[(first + i) * plane..][..plane]) };
            }
            Ok(())
        });
    }
}

fn kernel(level: Level) -> unsafe fn(&[f32]) -> f32 {
    match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => sum_avx512,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => sum_avx2,
        // NEON is the aarch64 target's baseline: the portable loop
        // compiles to it.
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => sum_portable,
        _ => sum_portable,
    }
}

unsafe fn sum_portable(x: &[f32]) -> f32 {
    sum(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    sum(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sum_avx512(x: &[f32]) -> f32 {
    sum(x)
}

/// The one body: [`LANES`] separate sums (the compiler keeps each lane
/// its own, so it may use vectors without reordering any addition), then
/// the lanes and the tail.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in chunks.by_ref() {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

impl Op for PlaneSum {
    fn name(&self) -> StaticName {
        "PlaneSum(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axes {}..", self.from)])
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(input.rank() >= self.from, "plane sum rank");
        let mut shape: TVec<usize> = input.shape().into();
        let plane: usize = shape[self.from..].iter().product();
        shape[self.from..].iter_mut().for_each(|d| *d = 1);
        // SAFETY: `compute` writes every output value.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let x = input.try_as_plain_ram()?;
            let mut out = output.try_as_plain_ram_mut()?;
            PlaneSum::compute(x.as_slice::<f32>()?, plane, out.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for PlaneSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        ensure!(input.datum_type == f32::datum_type() && input.rank() >= self.from);
        let mut shape = input.shape.to_tvec();
        shape[self.from..].iter_mut().for_each(|d| *d = 1.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Replaces every f32 `Reduce<Sum>` over trailing axes (at least one,
/// not all). Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(reduce) = node.op_as::<Reduce>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        let rank = fact.rank();
        let mut axes = reduce.axes.to_vec();
        axes.sort_unstable();
        let from = rank.saturating_sub(axes.len());
        let trailing = from > 0 && axes.iter().copied().eq(from..rank);
        if reduce.reducer != Reducer::Sum || fact.datum_type != f32::datum_type() || !trailing {
            continue;
        }
        let (input, name) = (node.inputs[0], node.name.clone());
        replace_with(
            model,
            "onnx-lambda plane sum",
            &[input],
            (&name, PlaneSum { from }),
            id,
        )?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{levels, noise, run_plain, ALL_LEVELS};

    /// Planes shorter than the lanes, of whole lanes and with a tail, at
    /// every level: within f32 rounding of the sum in f64.
    #[test]
    fn matches_the_definition_at_every_level() {
        for plane in [1, 7, 32, 49, 196, 3136 + 5] {
            let planes = 5;
            let x = noise(planes * plane, plane as u32);
            for level in levels("plane sum", ALL_LEVELS) {
                let mut got = vec![f32::NAN; planes];
                PlaneSum::compute_with(&x, plane, &mut got, level);
                for (i, g) in got.iter().enumerate() {
                    let want: f64 = x[i * plane..][..plane].iter().map(|&v| v as f64).sum();
                    let bound = 1e-6 * plane as f64;
                    assert!(
                        (*g as f64 - want).abs() <= bound,
                        "{level:?} {plane}: {g} {want}"
                    );
                }
            }
        }
    }

    /// tract's global average pool (a sum over H and W, then a scale):
    /// the sum is taken, the results are tract's; a sum over the channel
    /// axis is left to tract.
    #[test]
    fn install_takes_sums_over_trailing_axes() {
        let shape = [2, 3, 5, 7];
        let x = Tensor::from_shape(&shape, &noise(210, 4)).unwrap();
        for (axes, taken) in [(&[2usize, 3][..], 1), (&[3][..], 1), (&[1][..], 0)] {
            let mut model = TypedModel::default();
            let s = model.add_source("x", f32::fact(shape)).unwrap();
            let op = Reduce::new(axes.into(), Reducer::Sum);
            let y = model.wire_node("sum", op, &[s]).unwrap();
            model.select_output_outlets(&y).unwrap();
            let want = run_plain(&model, &[&x]);
            let mut ours = model;
            assert_eq!(install(&mut ours).unwrap(), taken, "{axes:?}");
            let got = run_plain(&ours, &[&x]);
            assert_eq!(got.len(), want.len(), "{axes:?}");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5, "{axes:?}: {a} vs {b}");
            }
        }
    }
}

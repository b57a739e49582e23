//! Our own exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`, on f32 tensors
//! (ConvNeXt's, after its first linear layer in every block).
//!
//! Why: tract's `GeluExact` runs in chunks of 1,024 through three passes,
//! a scaled copy into scratch, its vectorised `erf`, and the combination:
//! 8% of ConvNeXt-Tiny's inference (`onnx-lambda profile`,
//! docs/operators.md).
//!
//! How: one pass, in place when the input is not shared. `erf` is the same
//! approximation as tract's (Abramowitz and Stegun 7.1.28, absolute error
//! under 3e-7), written without branches so the compiler vectorises it,
//! and compiled for each instruction set (`#[target_feature]`).
//!
//! [`install`] replaces every f32 `GeluExact` tract's declutter found.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::GeluExact;

use crate::ops::{replace_with, Level, Simd};

/// Exact GELU, element by element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gelu;

impl Gelu {
    /// GELU of every value in place, at the best level this CPU has.
    pub(crate) fn compute(xs: &mut [f32]) {
        compute_with(xs, Level::detect());
    }
}

fn compute_with(xs: &mut [f32], level: Level) {
    let kernel: unsafe fn(&mut [f32]) = match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => gelu_avx512,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => gelu_avx2,
        // NEON is the aarch64 target's baseline: the portable loop
        // compiles to it.
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => gelu_portable,
        _ => gelu_portable,
    };
    // SAFETY: the kernel was chosen for a `Level` this CPU has.
    unsafe { kernel(xs) }
}

unsafe fn gelu_portable(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = gelu(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = gelu(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = gelu(*x));
}

/// `erf(|z|) = 1 - (1 + a1 z + ... + a6 z^6)^-16`; the sign and the
/// absolute value are bit operations, and the 16th power four squarings,
/// so nothing branches (a large `z` makes the power infinite and `erf` 1).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn gelu(x: f32) -> f32 {
    const A: [f32; 6] = [
        0.070_523_078_4,
        0.042_282_012_3,
        0.009_270_527_2,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let mut p = A[5];
    for c in A[..5].iter().rev() {
        p = p * a + c;
    }
    let p = p * a + 1.0;
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let p16 = p8 * p8;
    let erf = (1.0 - 1.0 / p16).copysign(z);
    let y = 0.5 * x * (1.0 + erf);
    // The limit, where the product is `-inf * 0` (a select, no branch).
    if x == f32::NEG_INFINITY {
        0.0
    } else {
        y
    }
}

impl Op for Gelu {
    fn name(&self) -> StaticName {
        "Gelu(onnx-lambda)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Gelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // In place when this is the tensor's only reader (tract hands over
        // a value no other node still needs); a copy otherwise.
        let mut t = inputs.remove(0).into_tensor();
        {
            let mut view = t.try_as_plain_ram_mut()?;
            Gelu::compute(view.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for Gelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replaces every f32 `GeluExact` node in a decluttered graph. Returns how
/// many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let is_gelu = node
            .op_as::<ElementWiseOp>()
            .is_some_and(|ew| ew.0.is::<GeluExact>());
        if !is_gelu || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
            continue;
        }
        let (input, name) = (node.inputs[0], node.name.clone());
        replace_with(model, "onnx-lambda gelu", &[input], (&name, Gelu), id)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{levels, noise, run_plain, ALL_LEVELS};

    /// `erf` by Simpson's rule in f64 (2,000 intervals: error far below
    /// f32's), and the definition of GELU on it.
    fn reference(x: f32) -> f32 {
        let z = (x as f64) / std::f64::consts::SQRT_2;
        let (a, n) = (z.abs().min(6.0), 2000);
        let h = a / n as f64;
        let f = |t: f64| (-t * t).exp();
        let sum: f64 = (0..=n)
            .map(|i| {
                let w = if i == 0 || i == n {
                    1.0
                } else if i % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                w * f(i as f64 * h)
            })
            .sum();
        let erf = (sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()).copysign(z);
        (0.5 * x as f64 * (1.0 + erf)) as f32
    }

    /// Values across erf's range and past it, zeros, infinities and NaN,
    /// at every level; lengths that leave a partial vector.
    #[test]
    fn matches_the_definition_at_every_level() {
        let mut xs: Vec<f32> = noise(1001, 3).iter().map(|v| 12.0 * v).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            40.0,
            -40.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        for level in levels("gelu", ALL_LEVELS) {
            let mut got = xs.clone();
            compute_with(&mut got, level);
            for (&x, &y) in xs.iter().zip(&got) {
                let (want, tolerance) = match x.is_infinite() {
                    true => (x.max(0.0), 0.0),
                    false => (reference(x), 1e-6 * x.abs().max(1.0)),
                };
                let close = y == want || (y - want).abs() <= tolerance;
                assert!(close, "{level:?} gelu({x}) = {y}, want {want}");
            }
            let mut nan = [f32::NAN];
            compute_with(&mut nan, level);
            assert!(nan[0].is_nan(), "{level:?}");
        }
    }

    /// A graph with tract's `GeluExact`: taken, and tract's results.
    #[test]
    fn install_takes_tract_gelu_and_keeps_the_results() {
        use tract_onnx::tract_core::ops::nn::gelu_exact::gelu_exact;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([3, 37])).unwrap();
        let y = model.wire_node("gelu", gelu_exact(), &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(
            &[3, 37],
            &noise(111, 5).iter().map(|v| 5.0 * v).collect::<Vec<_>>(),
        )
        .unwrap();
        let want = run_plain(&model, &[&input]);
        let mut ours = model;
        assert_eq!(install(&mut ours).unwrap(), 1);
        assert!(ours
            .nodes
            .iter()
            .all(|n| n.op_as::<ElementWiseOp>().is_none()));
        for (a, b) in run_plain(&ours, &[&input]).iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }
}

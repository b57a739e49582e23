//! ONNX's `HardSwish`, `x * clamp(x / 6 + 1/2, 0, 1)`, applied by the
//! operator whose output it reads: MobileNetV3 puts one after most of its
//! 1x1 and depthwise layers, and as tract's pass of its own (scalar SSE
//! code) it was 6% of MobileNetV3-small's time. The 1x1 tiles and the
//! depthwise layers' channel-blocked path (every MobileNetV3 depthwise
//! layer with a `HardSwish`: their outputs are 28x28 or smaller) apply it
//! to their registers before the store; the depthwise row loop to each
//! plane just written, still in cache ([`in_place`]).
//!
//! Every form computes the gate with one fused multiply-add, so they give
//! the same bits: the joined operators (`fused`) rely on it.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;

use crate::ops::{sole_successor, Level, Simd};

/// One value.
#[inline(always)]
pub(crate) fn one(v: f32) -> f32 {
    v * v.mul_add(1.0 / 6.0, 0.5).clamp(0.0, 1.0)
}

/// Every value of `values`, with `level`'s vectors.
pub(crate) fn in_place(values: &mut [f32], level: Level) {
    // SAFETY: each kernel runs only at a level this CPU has.
    let done = match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { in_place_avx2(values) },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => in_place_neon(values),
        _ => 0,
    };
    values[done..].iter_mut().for_each(|v| *v = one(*v));
}

/// The whole vectors of [`in_place`]; how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn in_place_avx2(values: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let whole = values.len() / 8 * 8;
    let chunks = values.chunks_exact_mut(8);
    for chunk in chunks {
        // SAFETY: 8 values of `values`.
        unsafe {
            let v = _mm256_loadu_ps(chunk.as_ptr());
            let v = crate::ops::x86_64::avx2::hard_swish(v);
            _mm256_storeu_ps(chunk.as_mut_ptr(), v);
        }
    }
    whole
}

/// The whole vectors of [`in_place`]; how many values it did.
#[cfg(target_arch = "aarch64")]
fn in_place_neon(values: &mut [f32]) -> usize {
    use std::arch::aarch64::*;
    let whole = values.len() / 4 * 4;
    let chunks = values.chunks_exact_mut(4);
    for chunk in chunks {
        // SAFETY: 4 values of `values`; NEON is part of the target.
        unsafe {
            let v = vld1q_f32(chunk.as_ptr());
            vst1q_f32(chunk.as_mut_ptr(), crate::ops::aarch64::neon::hard_swish(v));
        }
    }
    whole
}

/// The `HardSwish` node that alone reads node `id`'s output, if one does.
pub(crate) fn following(model: &TypedModel, id: usize) -> Option<usize> {
    let next = sole_successor(model, id)?;
    next.op_as::<ElementWiseOp>()
        .is_some_and(|op| op.0.name() == "HardSwish" && op.1.is_none())
        .then_some(next.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{levels, ALL_LEVELS};

    /// Runs of 0 to 20 values across both sides of the gate, at every
    /// level: the definition's values, and the same bits at every level.
    #[test]
    fn matches_the_definition_at_every_level() {
        for len in 0..=20 {
            let x: Vec<f32> = (0..len).map(|i| i as f32 * 0.7 - 6.5).collect();
            let want: Vec<f32> = x
                .iter()
                .map(|&v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0))
                .collect();
            let scalar: Vec<u32> = x.iter().map(|&v| one(v).to_bits()).collect();
            for level in levels("hard swish", ALL_LEVELS) {
                let mut got = x.clone();
                in_place(&mut got, level);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{level:?}: {g} vs {w}"
                    );
                }
                let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, scalar, "{level:?}, {len} values");
            }
        }
    }
}

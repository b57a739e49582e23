//! NEON building blocks.

use std::arch::aarch64::*;

/// `v` clamped to `[lo, hi]`: the ReLU6 / Clip every kernel ends with,
/// as max then min (`fmax`/`fmin`, which give NaN for a NaN input where
/// x86's `maxps` gives the bound: tract promises nothing for NaN either).
#[inline(always)]
pub(crate) fn clamp(v: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe { vminq_f32(vmaxq_f32(v, lo), hi) }
}

/// ONNX's `HardSwish`, `v * clamp(v / 6 + 1/2, 0, 1)`.
#[inline(always)]
pub(crate) fn hard_swish(v: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        let gate = vfmaq_f32(vdupq_n_f32(0.5), v, vdupq_n_f32(1.0 / 6.0));
        vmulq_f32(v, clamp(gate, vdupq_n_f32(0.0), vdupq_n_f32(1.0)))
    }
}

/// `acc + x * w[lane]`, for a `lane` known when the caller is unrolled:
/// one `fmla` by element, so 4 weights share one register.
#[inline(always)]
pub(crate) fn fma_lane(
    acc: float32x4_t,
    x: float32x4_t,
    w: float32x4_t,
    lane: usize,
) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        match lane {
            0 => vfmaq_laneq_f32::<0>(acc, x, w),
            1 => vfmaq_laneq_f32::<1>(acc, x, w),
            2 => vfmaq_laneq_f32::<2>(acc, x, w),
            _ => vfmaq_laneq_f32::<3>(acc, x, w),
        }
    }
}

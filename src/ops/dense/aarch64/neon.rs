//! The classifier's dot product for NEON: 4 vectors of 4 partial sums,
//! so 4 independent FMA chains per pass (each 2 loads and an FMA; the
//! product streams its weights from memory once per image, so loads, not
//! FMAs, bound it).

use std::arch::aarch64::*;

/// # Safety
/// `w` must have `x.len()` values.
pub(super) unsafe fn dot(x: &[f32], w: &[f32]) -> f32 {
    let len = x.len();
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= len {
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 <= len, and `w` is as long as `x`.
            *acc = unsafe {
                vfmaq_f32(
                    *acc,
                    vld1q_f32(xp.add(i + 4 * j)),
                    vld1q_f32(wp.add(i + 4 * j)),
                )
            };
        }
        i += 16;
    }
    let [a, b, c, d] = acc;
    // SAFETY: NEON is part of the target.
    let sum = unsafe { vaddvq_f32(vaddq_f32(vaddq_f32(a, b), vaddq_f32(c, d))) };
    sum + x[i..].iter().zip(&w[i..]).map(|(a, b)| a * b).sum::<f32>()
}

use std::arch::aarch64::*;

use super::NEON_CHAINS;

/// # Safety
/// None beyond NEON, which the target has.
#[inline(never)]
pub(super) unsafe fn chains_sum(steps: usize, m: f32, a: f32) -> f32 {
    let (vm, va) = (vdupq_n_f32(m), vdupq_n_f32(a));
    let mut acc: [float32x4_t; NEON_CHAINS] = std::array::from_fn(|i| vdupq_n_f32(i as f32));
    for _ in 0..steps {
        for v in acc.iter_mut() {
            // `va + v * vm`: one `fmla`, fused like the x86 levels.
            // SAFETY: NEON is part of the target.
            *v = unsafe { vfmaq_f32(va, *v, vm) };
        }
    }
    // SAFETY: NEON is part of the target.
    acc.iter().map(|v| unsafe { vaddvq_f32(*v) }).sum()
}

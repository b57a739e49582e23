use std::arch::x86_64::*;

use crate::ops::x86_64::avx512::mask;

/// # Safety
/// The CPU must have AVX-512F; `w` must have `x.len()` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot(x: &[f32], w: &[f32]) -> f32 {
    let len = x.len();
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= len {
        for (j, acc) in acc.iter_mut().enumerate() {
            let (a, b) = unsafe {
                (
                    _mm512_loadu_ps(xp.add(i + 16 * j)),
                    _mm512_loadu_ps(wp.add(i + 16 * j)),
                )
            };
            *acc = _mm512_fmadd_ps(a, b, *acc);
        }
        i += 64;
    }
    while i < len {
        let n = (len - i).min(16);
        let mask = mask(n);
        let (a, b) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, xp.add(i)),
                _mm512_maskz_loadu_ps(mask, wp.add(i)),
            )
        };
        acc[0] = _mm512_fmadd_ps(a, b, acc[0]);
        i += n;
    }
    let [a, b, c, d] = acc;
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)))
}

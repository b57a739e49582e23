use std::arch::x86_64::*;

/// # Safety
/// The CPU must have AVX2 and FMA; `w` must have `x.len()` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot(x: &[f32], w: &[f32]) -> f32 {
    let len = x.len();
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= len {
        for (j, acc) in acc.iter_mut().enumerate() {
            let (a, b) = unsafe {
                (
                    _mm256_loadu_ps(xp.add(i + 8 * j)),
                    _mm256_loadu_ps(wp.add(i + 8 * j)),
                )
            };
            *acc = _mm256_fmadd_ps(a, b, *acc);
        }
        i += 32;
    }
    let [a, b, c, d] = acc;
    let mut lanes = [0f32; 8];
    let v = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum::<f32>() + x[i..].iter().zip(&w[i..]).map(|(a, b)| a * b).sum::<f32>()
}

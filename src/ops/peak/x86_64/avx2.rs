use std::arch::x86_64::*;

use super::AVX2_CHAINS;

/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub(super) unsafe fn chains_sum(steps: usize, m: f32, a: f32) -> f32 {
    let (vm, va) = (_mm256_set1_ps(m), _mm256_set1_ps(a));
    let mut acc: [__m256; AVX2_CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..steps {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, vm, va);
        }
    }
    let mut sum = 0.0;
    for v in acc {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        sum += lanes.iter().sum::<f32>();
    }
    sum
}

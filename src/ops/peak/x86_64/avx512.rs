use std::arch::x86_64::*;

use super::AVX512_CHAINS;

/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline(never)]
pub(super) unsafe fn chains_sum(steps: usize, m: f32, a: f32) -> f32 {
    let (vm, va) = (_mm512_set1_ps(m), _mm512_set1_ps(a));
    let mut acc: [__m512; AVX512_CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..steps {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, vm, va);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

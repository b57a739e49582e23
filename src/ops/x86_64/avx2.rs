//! AVX2 building blocks.

use std::arch::x86_64::*;

/// `v` clamped to `[lo, hi]`: the ReLU6 / Clip every kernel ends with,
/// as max then min (no NaN fix-ups, like tract's).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn clamp(v: __m256, lo: __m256, hi: __m256) -> __m256 {
    _mm256_min_ps(_mm256_max_ps(v, lo), hi)
}

/// ONNX's `HardSwish`, `v * clamp(v / 6 + 1/2, 0, 1)`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn hard_swish(v: __m256) -> __m256 {
    let gate = _mm256_fmadd_ps(v, _mm256_set1_ps(1.0 / 6.0), _mm256_set1_ps(0.5));
    _mm256_mul_ps(v, clamp(gate, _mm256_setzero_ps(), _mm256_set1_ps(1.0)))
}

/// The mask of the first `n` lanes, for `maskload`/`maskstore`.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn mask(n: usize) -> __m256i {
    let n = _mm256_set1_epi32(n.min(8) as i32);
    _mm256_cmpgt_epi32(n, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// Transposes 8 vectors as an 8x8 matrix: lane `j` of row `i` becomes
/// lane `i` of row `j`. In-lane unpacks and shuffles, then 128-bit lane
/// swaps: 24 shuffles for 64 values.
#[target_feature(enable = "avx2")]
pub(crate) fn transpose(r: &mut [__m256; 8]) {
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Per 128-bit lane, s[4h + j] holds column j of rows 4h..4h + 4.
    let mut s = [_mm256_setzero_ps(); 8];
    for h in 0..2 {
        let (a, b, c, d) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
        s[4 * h] = _mm256_shuffle_ps::<0x44>(a, c);
        s[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(a, c);
        s[4 * h + 2] = _mm256_shuffle_ps::<0x44>(b, d);
        s[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(b, d);
    }
    for j in 0..4 {
        r[j] = _mm256_permute2f128_ps::<0x20>(s[j], s[4 + j]);
        r[4 + j] = _mm256_permute2f128_ps::<0x31>(s[j], s[4 + j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Level, Simd};

    #[test]
    fn transpose_swaps_rows_and_columns() {
        if !Level::available().iter().any(|l| l.simd() == Simd::Avx2) {
            return;
        }
        let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut rows = [unsafe { _mm256_setzero_ps() }; 8];
        for (i, r) in rows.iter_mut().enumerate() {
            *r = unsafe { _mm256_loadu_ps(values[i * 8..].as_ptr()) };
        }
        unsafe { transpose(&mut rows) };
        let mut out = [0f32; 64];
        for (i, r) in rows.iter().enumerate() {
            unsafe { _mm256_storeu_ps(out[i * 8..].as_mut_ptr(), *r) };
        }
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(out[i * 8 + j], values[j * 8 + i], "({i}, {j})");
            }
        }
    }
}

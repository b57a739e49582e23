//! AVX-512F building blocks.

use std::arch::x86_64::*;

/// `v` clamped to `[lo, hi]`: the ReLU6 / Clip every kernel ends with,
/// as max then min (no NaN fix-ups, like tract's).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn clamp(v: __m512, lo: __m512, hi: __m512) -> __m512 {
    _mm512_min_ps(_mm512_max_ps(v, lo), hi)
}

/// ONNX's `HardSwish`, `v * clamp(v / 6 + 1/2, 0, 1)`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn hard_swish(v: __m512) -> __m512 {
    let gate = _mm512_fmadd_ps(v, _mm512_set1_ps(1.0 / 6.0), _mm512_set1_ps(0.5));
    _mm512_mul_ps(v, clamp(gate, _mm512_setzero_ps(), _mm512_set1_ps(1.0)))
}

/// The mask of the first `n` lanes (all for `n >= 16`).
#[inline]
pub(crate) fn mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// Transposes 16 vectors as a 16x16 matrix: lane `j` of row `i` becomes
/// lane `i` of row `j`. Three rounds of in-lane unpacks, then 128-bit lane
/// shuffles: 64 shuffles for 256 values.
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // In each 128-bit lane L, r[4g + j] gets rows 4g..4g+4 of column 4L + j.
    let pd = _mm512_castps_pd;
    for g in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
    }
    // Column 4L + j is lane L of r[j], r[4 + j], r[8 + j], r[12 + j]: a
    // 4x4 transpose of 128-bit lanes.
    for j in 0..4 {
        let (a, b, c, d) = (r[j], r[4 + j], r[8 + j], r[12 + j]);
        let p = _mm512_shuffle_f32x4::<0x44>(a, b);
        let q = _mm512_shuffle_f32x4::<0xEE>(a, b);
        let s = _mm512_shuffle_f32x4::<0x44>(c, d);
        let u = _mm512_shuffle_f32x4::<0xEE>(c, d);
        t[j] = _mm512_shuffle_f32x4::<0x88>(p, s);
        t[4 + j] = _mm512_shuffle_f32x4::<0xDD>(p, s);
        t[8 + j] = _mm512_shuffle_f32x4::<0x88>(q, u);
        t[12 + j] = _mm512_shuffle_f32x4::<0xDD>(q, u);
    }
    *r = t;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Level, Simd};

    #[test]
    fn transpose_swaps_rows_and_columns() {
        if Level::detect().simd() != Simd::Avx512 {
            return;
        }
        let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut rows = [unsafe { _mm512_setzero_ps() }; 16];
        for (i, r) in rows.iter_mut().enumerate() {
            *r = unsafe { _mm512_loadu_ps(values[i * 16..].as_ptr()) };
        }
        unsafe { transpose(&mut rows) };
        let mut out = [0f32; 256];
        for (i, r) in rows.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out[i * 16..].as_mut_ptr(), *r) };
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[i * 16 + j], values[j * 16 + i], "({i}, {j})");
            }
        }
    }
}

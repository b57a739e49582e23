use std::arch::x86_64::*;

use crate::ops::x86_64::avx2::clamp;

use super::{Row, BLOCK};

/// 8 pixels by 8 output channels a step (two halves of a block).
///
/// # Safety
/// The CPU must have AVX2 and FMA; see [`super::portable_row`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(row: &Row<'_>) {
    let (lo, hi) = row.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let base = row.scratch.as_ptr();
    for half in 0..BLOCK / 8 {
        let lanes = half * 8..half * 8 + 8;
        if lanes.end <= row.store.start || row.store.end <= lanes.start {
            continue;
        }
        let mut x = 0;
        while x < row.width {
            let mut acc = [_mm256_setzero_ps(); 8];
            for o in 0..8 {
                acc[o] = _mm256_set1_ps(row.bias[lanes.start + o]);
            }
            for (t, &start) in row.offsets.iter().enumerate() {
                // SAFETY: x < width, and a phase row holds the width
                // rounded up to 8 plus the kernel (Geometry::phase_len).
                let v = unsafe { _mm256_loadu_ps(base.add(start + x)) };
                let w = &row.w[t * BLOCK + lanes.start..][..8];
                for o in 0..8 {
                    acc[o] = _mm256_fmadd_ps(v, _mm256_set1_ps(w[o]), acc[o]);
                }
            }
            let n = (row.width - x).min(8);
            for o in 0..8 {
                let channel = lanes.start + o;
                if !row.store.contains(&channel) {
                    continue;
                }
                let v = clamp(acc[o], lo, hi);
                let at = row.out.wrapping_add(channel * row.plane + x);
                if n == 8 {
                    // SAFETY: channel `channel`, pixels x..x + 8 <= width.
                    unsafe { _mm256_storeu_ps(at, v) };
                    continue;
                }
                let mut tmp = [0f32; 8];
                // SAFETY: a local array of 8 floats.
                unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), v) };
                for (i, value) in tmp.iter().enumerate().take(n) {
                    // SAFETY: channel `channel`, pixel x + i < width.
                    unsafe { *at.add(i) = *value };
                }
            }
            x += 8;
        }
    }
}

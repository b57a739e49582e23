use std::arch::x86_64::*;

use crate::ops::x86_64::avx512::{clamp, mask};

use super::{Row, BLOCK};

/// 16 pixels by 16 output channels a step, the last step masked.
///
/// # Safety
/// The CPU must have AVX-512F; see [`super::portable_row`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row(row: &Row<'_>) {
    let (lo, hi) = row.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let base = row.scratch.as_ptr();
    let mut x = 0;
    while x < row.width {
        let n = (row.width - x).min(16);
        let mask = mask(n);
        let mut acc = [_mm512_setzero_ps(); BLOCK];
        for o in 0..BLOCK {
            acc[o] = _mm512_set1_ps(row.bias[o]);
        }
        for (t, &start) in row.offsets.iter().enumerate() {
            // SAFETY: masked to the row's pixels, which are inside
            // this phase row of the scratch (Geometry::phase_len).
            let v = unsafe { _mm512_maskz_loadu_ps(mask, base.add(start + x)) };
            let w = &row.w[t * BLOCK..][..BLOCK];
            for o in 0..BLOCK {
                acc[o] = _mm512_fmadd_ps(v, _mm512_set1_ps(w[o]), acc[o]);
            }
        }
        // Every channel, then skip: a loop over `store` indexed the
        // accumulators by a variable and kept them on the stack.
        for o in 0..BLOCK {
            if !row.store.contains(&o) {
                continue;
            }
            let v = clamp(acc[o], lo, hi);
            // SAFETY: channel o of the block, this row's pixels x..x+n.
            unsafe { _mm512_mask_storeu_ps(row.out.add(o * row.plane + x), mask, v) };
        }
        x += 16;
    }
}

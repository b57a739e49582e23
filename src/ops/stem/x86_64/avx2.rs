use std::arch::x86_64::*;

use crate::ops::x86_64::avx2::clamp;

use super::{Row, BLOCK};

/// Output channels a step.
const CHANNELS: usize = 4;

/// 4 output channels by 16 pixels a step: each tap is 2 loads of pixels
/// and 4 broadcast weights for 8 FMAs. 8 channels by 8 pixels (9 loads
/// for 8 FMAs) held the stem to the load ports: MobileNetV2's 3 -> 32
/// channels at 112x112 0.40 -> 0.33 ms, MnasNet's 0.51 -> 0.47 (`profile
/// --by-node --threads 1 --simd avx2`, per-node minima of 4 alternating
/// runs, AMD EPYC Zen 4). 4 by 24 pixels, as the pointwise tile, left
/// LLVM one register short: it stored an accumulator to the stack every
/// tap and ran slower than 8 by 8.
///
/// # Safety
/// The CPU must have AVX2 and FMA; see [`super::portable_row`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(row: &Row<'_>) {
    for first in (0..BLOCK).step_by(CHANNELS) {
        if first + CHANNELS <= row.store.start || row.store.end <= first {
            continue;
        }
        let mut x = 0;
        while x < row.width {
            // SAFETY (all three): forwarded, with x < width.
            unsafe {
                match (row.width - x).div_ceil(8) {
                    1 => step::<1>(row, first, x),
                    _ => step::<2>(row, first, x),
                }
            }
            x += 16;
        }
    }
}

/// Channels `first..first + 4` of the block, pixels `x..x + 8 * V` (or to
/// the row's end).
///
/// # Safety
/// AVX2 and FMA; `x + 8 * (V - 1) < width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn step<const V: usize>(row: &Row<'_>, first: usize, x: usize) {
    let base = row.scratch.as_ptr().wrapping_add(x);
    let mut acc = [[_mm256_setzero_ps(); V]; CHANNELS];
    for (o, a) in acc.iter_mut().enumerate() {
        *a = [_mm256_set1_ps(row.bias[first + o]); V];
    }
    let mut w = row.w[first..].as_ptr();
    for &start in row.offsets {
        let mut xv = [_mm256_setzero_ps(); V];
        for v in 0..V {
            // SAFETY: pixel x + 8v is inside the row, and a phase row
            // holds the width rounded up to 8 plus the kernel
            // (Geometry::phase_len).
            xv[v] = unsafe { _mm256_loadu_ps(base.add(start + 8 * v)) };
        }
        for o in 0..CHANNELS {
            // SAFETY: `[tap][BLOCK]` weights; first + o < BLOCK.
            let b = _mm256_broadcast_ss(unsafe { &*w.add(o) });
            for v in 0..V {
                acc[o][v] = _mm256_fmadd_ps(b, xv[v], acc[o][v]);
            }
        }
        w = w.wrapping_add(BLOCK);
    }
    let (lo, hi) = row.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for (o, a) in acc.iter().enumerate() {
        let channel = first + o;
        if !row.store.contains(&channel) {
            continue;
        }
        for (v, a) in a.iter().enumerate() {
            let at = x + 8 * v;
            let n = (row.width - at).min(8);
            let v = clamp(*a, lo, hi);
            let out = row.out.wrapping_add(channel * row.plane + at);
            if n == 8 {
                // SAFETY: channel `channel`, pixels at..at + 8 <= width.
                unsafe { _mm256_storeu_ps(out, v) };
                continue;
            }
            let mut tmp = [0f32; 8];
            // SAFETY: a local array of 8 floats.
            unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), v) };
            for (i, value) in tmp.iter().enumerate().take(n) {
                // SAFETY: channel `channel`, pixel at + i < width.
                unsafe { *out.add(i) = *value };
            }
        }
    }
}

//! The blocked path's vector loops with AVX2 and FMA: 8 channels a
//! vector, 4 output pixels at once (4 accumulators and the 9 weights of a
//! 3x3 kernel fit the 16 registers).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{lane_values, Lanes};
use crate::ops::depthwise::{Depthwise, MAX_TAPS};
use crate::ops::x86_64::avx2::{clamp, hard_swish, mask, transpose};

/// Channels per block: one AVX2 vector.
const BLOCK: usize = 8;

/// See [`Lanes`].
pub(in crate::ops::depthwise) struct Avx2;

impl Lanes for Avx2 {
    const BLOCK: usize = BLOCK;

    /// As with AVX-512 (`profile --by-node --threads 1 --simd avx2`, AMD
    /// EPYC Zen 5, four alternating runs against the row loop): it won on
    /// every layer with a 28x28 output or smaller (7x7 0.11 -> 0.05 ms),
    /// lost at 56x56 (0.32 -> 0.34) and tied at 112x112.
    const MAX_OUT_PIXELS: usize = 28 * 28;

    #[target_feature(enable = "avx2")]
    unsafe fn transpose_in(op: &Depthwise, positions: &[usize], ins: &[f32], padded: &mut [f32]) {
        let plane = positions.len();
        let channels = ins.len() / plane;
        let (lo, hi) = op.input_clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let base = padded.as_mut_ptr();
        let mut rows = [_mm256_setzero_ps(); BLOCK];
        for first in (0..plane).step_by(BLOCK) {
            let n = (plane - first).min(BLOCK);
            let m = mask(n);
            for (c, row) in rows.iter_mut().enumerate() {
                let src = ins[c.min(channels.saturating_sub(1)) * plane + first..].as_ptr();
                // SAFETY: lanes first..first + n of plane c are inside `ins`.
                *row = match (c < channels, n == BLOCK) {
                    (false, _) => _mm256_setzero_ps(),
                    (true, true) => unsafe { _mm256_loadu_ps(src) },
                    (true, false) => unsafe { _mm256_maskload_ps(src, m) },
                };
            }
            transpose(&mut rows);
            for (v, &at) in rows.iter().zip(&positions[first..first + n]) {
                if at != usize::MAX {
                    let v = clamp(*v, lo, hi);
                    // SAFETY: Positions::fill put `at` inside the padded block.
                    unsafe { _mm256_storeu_ps(base.add(at), v) };
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn convolve(
        op: &Depthwise,
        taps: &[usize; MAX_TAPS],
        planes: Range<usize>,
        padded: &[f32],
        offsets: &[usize],
        result: &mut [f32],
    ) {
        let n = op.geometry.kernel * op.geometry.kernel;
        let lanes = |t| lane_values(op, planes.clone(), t);
        let mut w = [_mm256_setzero_ps(); MAX_TAPS];
        for (t, wt) in w.iter_mut().enumerate().take(n) {
            *wt = _mm256_loadu_ps(lanes(t).as_ptr());
        }
        let job = Job {
            w,
            bias: _mm256_loadu_ps(lanes(n).as_ptr()),
            clamp: op
                .clamp
                .map(|(lo, hi)| (_mm256_set1_ps(lo), _mm256_set1_ps(hi))),
            hard_swish: op.hard_swish(),
            taps: *taps,
            padded: padded.as_ptr(),
            result: result.as_mut_ptr(),
        };
        let mut p = 0;
        // SAFETY (both loops): offsets[p..p + N] are output pixels; each reads
        // taps inside the padded block (Layout) and writes its own vector.
        while p + 4 <= offsets.len() {
            unsafe { job.pixels::<4>(&offsets[p..p + 4], p, n) };
            p += 4;
        }
        while p < offsets.len() {
            unsafe { job.pixels::<1>(&offsets[p..p + 1], p, n) };
            p += 1;
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn transpose_out(plane: usize, channels: usize, result: &[f32], out: &mut [f32]) {
        let mut rows = [_mm256_setzero_ps(); BLOCK];
        for first in (0..plane).step_by(BLOCK) {
            let n = (plane - first).min(BLOCK);
            let m = mask(n);
            for (j, row) in rows.iter_mut().enumerate() {
                *row = if j < n {
                    _mm256_loadu_ps(result[(first + j) * BLOCK..][..BLOCK].as_ptr())
                } else {
                    _mm256_setzero_ps()
                };
            }
            transpose(&mut rows);
            for (c, v) in rows.iter().enumerate().take(channels) {
                let dst = out[c * plane + first..c * plane + first + n].as_mut_ptr();
                // SAFETY: the first n lanes are inside `out`.
                unsafe {
                    if n == BLOCK {
                        _mm256_storeu_ps(dst, *v);
                    } else {
                        _mm256_maskstore_ps(dst, m, *v);
                    }
                }
            }
        }
    }
}

/// What [`Job::pixels`] reads and writes for one block.
struct Job {
    w: [__m256; MAX_TAPS],
    bias: __m256,
    clamp: Option<(__m256, __m256)>,
    hard_swish: bool,
    taps: [usize; MAX_TAPS],
    padded: *const f32,
    result: *mut f32,
}

impl Job {
    /// `N` output pixels starting at `first`, whose top-left inputs are at
    /// `offsets`: `N` independent FMA chains, so they overlap.
    ///
    /// # Safety
    /// AVX2 and FMA; `offsets` and `first..first + N` must be inside the
    /// block.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn pixels<const N: usize>(&self, offsets: &[usize], first: usize, taps: usize) {
        let mut acc = [self.bias; N];
        for t in 0..taps {
            for j in 0..N {
                // SAFETY: see the function's contract.
                let v = unsafe { _mm256_loadu_ps(self.padded.add(offsets[j] + self.taps[t])) };
                acc[j] = _mm256_fmadd_ps(v, self.w[t], acc[j]);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let mut a = match self.clamp {
                Some((lo, hi)) => clamp(*a, lo, hi),
                None => *a,
            };
            if self.hard_swish {
                a = hard_swish(a);
            }
            // SAFETY: see the function's contract.
            unsafe { _mm256_storeu_ps(self.result.add((first + j) * BLOCK), a) };
        }
    }
}

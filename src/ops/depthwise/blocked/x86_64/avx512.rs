//! The blocked path's vector loops with AVX-512F: 16 channels a vector,
//! 8 output pixels at once (8 accumulators and up to 9 weights of 32
//! registers).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{lane_values, Lanes};
use crate::ops::depthwise::{Depthwise, MAX_TAPS};
use crate::ops::x86_64::avx512::{clamp, hard_swish, mask, transpose};

/// Channels per block: one AVX-512 vector.
const BLOCK: usize = 16;

/// See [`Lanes`].
pub(in crate::ops::depthwise) struct Avx512;

impl Lanes for Avx512 {
    const BLOCK: usize = BLOCK;

    /// On MobileNetV2 (`profile --by-node`, AMD EPYC Zen 5, both paths on
    /// every layer) the blocked path won on every layer with a 28x28 output
    /// or smaller, tied at 56x56 and lost at 112x112 (0.19 -> 0.26 ms),
    /// where the two transposes cost more than the row loop's per-plane
    /// work and the scratch outgrows L2.
    const MAX_OUT_PIXELS: usize = 28 * 28;

    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_in(op: &Depthwise, positions: &[usize], ins: &[f32], padded: &mut [f32]) {
        let plane = positions.len();
        let channels = ins.len() / plane;
        let (lo, hi) = op.input_clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let base = padded.as_mut_ptr();
        let mut rows = [_mm512_setzero_ps(); 16];
        for first in (0..plane).step_by(BLOCK) {
            let n = (plane - first).min(BLOCK);
            for (c, row) in rows.iter_mut().enumerate() {
                *row = if c < channels {
                    // SAFETY: lanes first..first + n of plane c are inside `ins`.
                    unsafe { _mm512_maskz_loadu_ps(mask(n), ins.as_ptr().add(c * plane + first)) }
                } else {
                    _mm512_setzero_ps()
                };
            }
            transpose(&mut rows);
            for (v, &at) in rows.iter().zip(&positions[first..first + n]) {
                if at != usize::MAX {
                    let v = clamp(*v, lo, hi);
                    // SAFETY: Positions::fill put `at` inside the padded block.
                    unsafe { _mm512_storeu_ps(base.add(at), v) };
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn convolve(
        op: &Depthwise,
        taps: &[usize; MAX_TAPS],
        planes: Range<usize>,
        padded: &[f32],
        offsets: &[usize],
        result: &mut [f32],
    ) {
        let g = &op.geometry;
        let n = g.kernel * g.kernel;
        let lanes = |t| lane_values(op, planes.clone(), t);
        let mut w = [_mm512_setzero_ps(); MAX_TAPS];
        for (t, wt) in w.iter_mut().enumerate().take(n) {
            *wt = _mm512_loadu_ps(lanes(t).as_ptr());
        }
        let job = Job {
            w,
            bias: _mm512_loadu_ps(lanes(n).as_ptr()),
            clamp: op
                .clamp
                .map(|(lo, hi)| (_mm512_set1_ps(lo), _mm512_set1_ps(hi))),
            hard_swish: op.hard_swish(),
            taps: *taps,
            padded: padded.as_ptr(),
            result: result.as_mut_ptr(),
        };
        let mut p = 0;
        // SAFETY (all arms): offsets[p..p + N] are output pixels; each reads
        // taps inside the padded block (Layout) and writes its own vector.
        while p + 8 <= offsets.len() {
            unsafe { job.pixels::<8>(&offsets[p..p + 8], p, n) };
            p += 8;
        }
        while p + 4 <= offsets.len() {
            unsafe { job.pixels::<4>(&offsets[p..p + 4], p, n) };
            p += 4;
        }
        while p < offsets.len() {
            unsafe { job.pixels::<1>(&offsets[p..p + 1], p, n) };
            p += 1;
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_out(plane: usize, channels: usize, result: &[f32], out: &mut [f32]) {
        let mut rows = [_mm512_setzero_ps(); 16];
        for first in (0..plane).step_by(BLOCK) {
            let n = (plane - first).min(BLOCK);
            for (j, row) in rows.iter_mut().enumerate() {
                *row = if j < n {
                    _mm512_loadu_ps(result[(first + j) * BLOCK..][..BLOCK].as_ptr())
                } else {
                    _mm512_setzero_ps()
                };
            }
            transpose(&mut rows);
            for (c, v) in rows.iter().enumerate().take(channels) {
                let dst = &mut out[c * plane + first..c * plane + first + n];
                // SAFETY: the first n lanes are dst.
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask(n), *v) };
            }
        }
    }
}

/// What [`Job::pixels`] reads and writes for one block.
struct Job {
    w: [__m512; MAX_TAPS],
    bias: __m512,
    clamp: Option<(__m512, __m512)>,
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
    /// AVX-512F; `offsets` and `first..first + N` must be inside the block.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn pixels<const N: usize>(&self, offsets: &[usize], first: usize, taps: usize) {
        let mut acc = [self.bias; N];
        for t in 0..taps {
            for j in 0..N {
                // SAFETY: see the function's contract.
                let v = unsafe { _mm512_loadu_ps(self.padded.add(offsets[j] + self.taps[t])) };
                acc[j] = _mm512_fmadd_ps(v, self.w[t], acc[j]);
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
            unsafe { _mm512_storeu_ps(self.result.add((first + j) * BLOCK), a) };
        }
    }
}

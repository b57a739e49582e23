use std::arch::x86_64::*;

use crate::ops::x86_64::avx512::{clamp, mask};

use super::{Rows, MAX_TAPS, ROWS};

/// `src[2m]` to `even[m]`, `src[2m + 1]` to `odd[m]`, 32 inputs a step
/// and masked tails, so short rows (14 wide) need no scalar loop.
/// Returns how many outputs per side it covered (all of them).
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let n_even = src.len().div_ceil(2).min(even.len());
    let n_odd = (src.len() / 2).min(odd.len());
    let mut m = 0;
    while m < n_even.max(n_odd) {
        let left = src.len() - 2 * m;
        // Pointers made with wrapping_add: a fully masked access may
        // point past the slice, and reads nothing.
        let p = src.as_ptr().wrapping_add(2 * m);
        // SAFETY: only the unmasked lanes are read or written, and the
        // masks stop at the ends of `src`, `even` and `odd`.
        unsafe {
            let a = _mm512_maskz_loadu_ps(mask(left), p);
            let b = _mm512_maskz_loadu_ps(mask(left.saturating_sub(16)), p.wrapping_add(16));
            let e = _mm512_permutex2var_ps(a, evens, b);
            let o = _mm512_permutex2var_ps(a, odds, b);
            _mm512_mask_storeu_ps(
                even.as_mut_ptr().wrapping_add(m),
                mask(n_even.saturating_sub(m)),
                e,
            );
            _mm512_mask_storeu_ps(
                odd.as_mut_ptr().wrapping_add(m),
                mask(n_odd.saturating_sub(m)),
                o,
            );
        }
        m += 16;
    }
    src.len().div_ceil(2)
}

/// 16 outputs per step, [`ROWS`](super::ROWS) output rows at once
/// sharing their input rows' loads; the last step of a row is masked
/// (loads and store), so no lane reads or writes past the row.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows<const K: usize>(job: &Rows<'_>, out: &mut [f32]) {
    let mut w = [_mm512_setzero_ps(); MAX_TAPS];
    for (i, wt) in job.w.iter().enumerate().take(K * K) {
        w[i] = _mm512_set1_ps(*wt);
    }
    let (lo, hi) = job.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let kernel = Kernel {
        w,
        bias: _mm512_set1_ps(job.bias),
        clamp: job.clamp.map(|_| (_mm512_set1_ps(lo), _mm512_set1_ps(hi))),
    };
    // The row groups are walked here and again in the AVX2 function
    // on purpose: shared through a closure or an iterator of groups,
    // the 56x56 and 112x112 layers ran slower (docs/operators.md).
    let (ho, stride) = (job.g.out_hw.0, job.g.stride.0);
    let mut y = 0;
    // SAFETY (all calls): AVX-512F is the caller's contract; rows
    // y..y + R are output rows, and S is their stride.
    while y + ROWS <= ho && stride <= 2 {
        match stride {
            1 => unsafe { kernel.rows::<K, ROWS, 1>(job, y, out) },
            _ => unsafe { kernel.rows::<K, ROWS, 2>(job, y, out) },
        }
        y += ROWS;
    }
    while y < ho {
        unsafe { kernel.rows::<K, 1, 1>(job, y, out) };
        y += 1;
    }
}

/// A plane's weights, bias and clamp, in registers.
struct Kernel {
    w: [__m512; MAX_TAPS],
    bias: __m512,
    clamp: Option<(__m512, __m512)>,
}

impl Kernel {
    /// Output rows `y..y + R`, whose vertical stride is `S` when `R > 1`:
    /// each input vector is loaded once and feeds every row it is a tap
    /// of (for 3x3 at stride 1 and `R = 4`, 18 loads per 36 FMAs).
    ///
    /// # Safety
    /// AVX-512F; `y + R` must not pass the plane's last output row.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rows<const K: usize, const R: usize, const S: usize>(
        &self,
        job: &Rows<'_>,
        y: usize,
        out: &mut [f32],
    ) {
        let wo = job.g.out_hw.1;
        let (first, cols) = job.window::<K>(y);
        let base = job.scratch.as_ptr();
        let dst = out[y * wo..(y + R) * wo].as_mut_ptr();
        let mut x = 0;
        while x < wo {
            let lanes = (wo - x).min(16);
            let mask: __mmask16 = if lanes == 16 {
                0xFFFF
            } else {
                (1u16 << lanes) - 1
            };
            let mut acc = [self.bias; R];
            for i in 0..(R - 1) * S + K {
                for (kx, &col) in cols.iter().enumerate().take(K) {
                    // SAFETY: the unmasked lanes read a tap's x .. wo,
                    // inside the phase row (Geometry::phase_len); masked
                    // lanes are not read.
                    let at = first + job.row_offset(i) + col + x;
                    let v = unsafe { _mm512_maskz_loadu_ps(mask, base.add(at)) };
                    for (r, a) in acc.iter_mut().enumerate() {
                        if (r * S..r * S + K).contains(&i) {
                            *a = _mm512_fmadd_ps(self.w[(i - r * S) * K + kx], v, *a);
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let a = match self.clamp {
                    Some((lo, hi)) => clamp(*a, lo, hi),
                    None => *a,
                };
                // SAFETY: the unmasked lanes are x .. wo of output row y + r.
                unsafe { _mm512_mask_storeu_ps(dst.add(r * wo + x), mask, a) };
            }
            x += 16;
        }
    }
}

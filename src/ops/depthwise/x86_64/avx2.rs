use std::arch::x86_64::*;

use crate::ops::x86_64::avx2::clamp;

use super::{Rows, LANES, MAX_TAPS, ROWS};

/// The vector part of [`super::deinterleave`]: 16 inputs a step, while
/// all of them fit; returns how many outputs per side it wrote.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    let mut m = 0;
    while 2 * m + 16 <= src.len() && m + 8 <= even.len() && m + 8 <= odd.len() {
        // SAFETY: the loop condition keeps all reads and writes in bounds.
        unsafe {
            let a = _mm256_loadu_ps(src.as_ptr().add(2 * m));
            let b = _mm256_loadu_ps(src.as_ptr().add(2 * m + 8));
            // Per 128-bit lane: a0 a2 b0 b2 | a4 a6 b4 b6, then fix the lane order.
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
            let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o)));
            _mm256_storeu_ps(even.as_mut_ptr().add(m), e);
            _mm256_storeu_ps(odd.as_mut_ptr().add(m), o);
        }
        m += 8;
    }
    m
}

/// 8 outputs per step, [`ROWS`] output rows at once sharing their
/// input rows' loads; the last partial step of a row goes through a
/// small buffer.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows<const K: usize>(job: &Rows<'_>, out: &mut [f32]) {
    if K == 3 {
        // SAFETY: forwarded.
        return unsafe { rows3(job, out) };
    }
    let mut w = [_mm256_setzero_ps(); MAX_TAPS];
    for (i, wt) in job.w.iter().enumerate().take(K * K) {
        w[i] = _mm256_set1_ps(*wt);
    }
    let (lo, hi) = job.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let kernel = Kernel {
        w,
        bias: _mm256_set1_ps(job.bias),
        clamp: job.clamp.map(|_| (_mm256_set1_ps(lo), _mm256_set1_ps(hi))),
    };
    let (ho, stride) = (job.g.out_hw.0, job.g.stride.0);
    let mut y = 0;
    // SAFETY (all calls): AVX2 and FMA are the caller's contract;
    // rows y..y + R are output rows, and S is their stride.
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

/// The 3x3 rows one at a time, two vectors of outputs a step. The
/// generic loop above keeps [`ROWS`] accumulators, 9 weights, the bias
/// and the clamp live: more than AVX2's 16 registers, and LLVM then
/// reloaded weights and addresses from the stack around every FMA
/// (the 112x112 layer ran at 9 GMAC/s on AMD EPYC Zen 2). Here 9
/// weights, 2 accumulators, the bias and the clamp fit. Each output is
/// still one chain of FMAs in tap order, so the results are the same
/// bits as the other paths' (`fused.rs` relies on it).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows3(job: &Rows<'_>, out: &mut [f32]) {
    let w: [__m256; 9] = std::array::from_fn(|i| _mm256_set1_ps(job.w[i]));
    let bias = _mm256_set1_ps(job.bias);
    let bounds = job
        .clamp
        .map(|(lo, hi)| (_mm256_set1_ps(lo), _mm256_set1_ps(hi)));
    let (ho, wo) = job.g.out_hw;
    let base = job.scratch.as_ptr();
    for y in 0..ho {
        let (first, cols) = job.window::<3>(y);
        let taps: [*const f32; 9] =
            std::array::from_fn(|t| base.wrapping_add(first + job.row_offset(t / 3) + cols[t % 3]));
        // SAFETY: tap + x + LANES <= phase start + phase_len, inside
        // the scratch (see Geometry::phase_len).
        let chain = |x: usize| {
            let mut a = bias;
            for t in 0..9 {
                a = _mm256_fmadd_ps(w[t], unsafe { _mm256_loadu_ps(taps[t].add(x)) }, a);
            }
            match bounds {
                Some((lo, hi)) => clamp(a, lo, hi),
                None => a,
            }
        };
        let row = &mut out[y * wo..(y + 1) * wo];
        let mut x = 0;
        while x + 2 * LANES <= wo {
            let (a, b) = (chain(x), chain(x + LANES));
            // SAFETY: x + 16 <= wo, inside this output row.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr().add(x), a);
                _mm256_storeu_ps(row.as_mut_ptr().add(x + LANES), b);
            }
            x += 2 * LANES;
        }
        while x < wo {
            store(row, x, chain(x));
            x += LANES;
        }
    }
}

/// Outputs `x..x + 8` of `row`, or as many as are left: a partial
/// vector goes through a small buffer, never past the row.
#[target_feature(enable = "avx2")]
#[inline]
fn store(row: &mut [f32], x: usize, a: __m256) {
    if x + LANES <= row.len() {
        // SAFETY: x + 8 <= row.len(), inside this output row.
        unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(x), a) };
    } else {
        let mut tail = [0f32; LANES];
        // SAFETY: a local buffer of 8 floats.
        unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), a) };
        let n = row.len() - x;
        row[x..].copy_from_slice(&tail[..n]);
    }
}

/// A plane's weights, bias and clamp, in registers.
struct Kernel {
    w: [__m256; MAX_TAPS],
    bias: __m256,
    clamp: Option<(__m256, __m256)>,
}

impl Kernel {
    /// Output rows `y..y + R`, whose vertical stride is `S` when `R > 1`:
    /// each input vector is loaded once and feeds every row it is a tap
    /// of.
    ///
    /// # Safety
    /// AVX2 and FMA; `y + R` must not pass the plane's last output row.
    #[target_feature(enable = "avx2,fma")]
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
        let mut x = 0;
        while x < wo {
            let mut acc = [self.bias; R];
            for i in 0..(R - 1) * S + K {
                for (kx, &col) in cols.iter().enumerate().take(K) {
                    // SAFETY: tap + x + LANES <= phase start + phase_len,
                    // inside the scratch (see Geometry::phase_len).
                    let at = first + job.row_offset(i) + col + x;
                    let v = unsafe { _mm256_loadu_ps(base.add(at)) };
                    for (r, a) in acc.iter_mut().enumerate() {
                        if (r * S..r * S + K).contains(&i) {
                            *a = _mm256_fmadd_ps(self.w[(i - r * S) * K + kx], v, *a);
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let a = match self.clamp {
                    Some((lo, hi)) => clamp(*a, lo, hi),
                    None => *a,
                };
                store(&mut out[(y + r) * wo..(y + r + 1) * wo], x, a);
            }
            x += LANES;
        }
    }
}

//! The depthwise rows for NEON, designed for Graviton2 (Neoverse N1: two
//! 128-bit FMA pipes, 4-cycle FMA latency, two load pipes, 32 vector
//! registers).
//!
//! A step is 8 outputs (two vectors, the scratch's [`LANES`]) of
//! [`ROWS`] output rows at once: 8 accumulators, the kernel's weights 4
//! to a register (3 registers for 3x3, 7 for 5x5, 13 for 7x7) used by lane (`fmla
//! v.4s, v.4s, v.s[i]`), and each input vector loaded once for every row
//! it is a tap of. For 3x3 at stride 1 that is 36 loads for 72 FMAs; the 8
//! independent chains just cover 2 pipes x 4 cycles, so the bound is the
//! FMA pipes (8 multiply-adds a cycle), as on x86. Each output is one
//! chain of FMAs in tap order, like the x86 kernels, so a layer gives the
//! same bits through `fused.rs` and alone.

use std::arch::aarch64::*;

use crate::ops::aarch64::neon::{clamp, fma_lane};

use super::{Rows, LANES, MAX_TAPS, ROWS};

/// f32 lanes per vector: a step is two.
const V: usize = 4;

/// Registers holding a kernel's weights, 4 to a register.
const W_VECS: usize = MAX_TAPS.div_ceil(V);

/// The vector part of [`super::deinterleave`]: `ld2` splits 8 inputs into
/// their even and odd halves in one instruction; returns how many outputs
/// per side it wrote.
///
/// # Safety
/// None beyond NEON, which the target has.
pub(super) unsafe fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    let mut m = 0;
    while 2 * m + 2 * V <= src.len() && m + V <= even.len() && m + V <= odd.len() {
        // SAFETY: the loop condition keeps all reads and writes in bounds.
        unsafe {
            let pair = vld2q_f32(src.as_ptr().add(2 * m));
            vst1q_f32(even.as_mut_ptr().add(m), pair.0);
            vst1q_f32(odd.as_mut_ptr().add(m), pair.1);
        }
        m += V;
    }
    m
}

/// [`ROWS`] output rows at a time while they last (strides 1 and 2),
/// then one.
///
/// # Safety
/// None beyond NEON; the reads stay in the scratch (see
/// `Geometry::phase_len`) and the writes in `out`.
pub(super) unsafe fn rows<const K: usize>(job: &Rows<'_>, out: &mut [f32]) {
    let mut packed = [0f32; V * W_VECS];
    packed[..K * K].copy_from_slice(&job.w[..K * K]);
    // SAFETY: W_VECS vectors of 4 inside `packed`.
    let w = std::array::from_fn(|i| unsafe { vld1q_f32(packed.as_ptr().add(V * i)) });
    let kernel = Kernel {
        w,
        bias: vdupq_n_f32(job.bias),
        clamp: job.clamp.map(|(lo, hi)| (vdupq_n_f32(lo), vdupq_n_f32(hi))),
    };
    // The row groups are walked in each kernel on purpose, as in the x86
    // ones: shared through a closure or an iterator of groups, the x86
    // layers ran slower (docs/operators.md).
    let (ho, stride) = (job.g.out_hw.0, job.g.stride.0);
    let mut y = 0;
    // SAFETY (all calls): rows y..y + R are output rows, and S is their
    // stride.
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

/// A plane's weights (4 to a register), bias and clamp, in registers.
struct Kernel {
    w: [float32x4_t; W_VECS],
    bias: float32x4_t,
    clamp: Option<(float32x4_t, float32x4_t)>,
}

impl Kernel {
    /// Output rows `y..y + R`, whose vertical stride is `S` when `R > 1`:
    /// each input vector is loaded once and feeds every row it is a tap
    /// of.
    ///
    /// # Safety
    /// `y + R` must not pass the plane's last output row.
    #[inline(always)]
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
            let mut acc = [[self.bias; 2]; R];
            for i in 0..(R - 1) * S + K {
                for (kx, &col) in cols.iter().enumerate().take(K) {
                    let at = first + job.row_offset(i) + col + x;
                    // SAFETY: tap + x + LANES <= phase start + phase_len,
                    // inside the scratch (see Geometry::phase_len).
                    let v = unsafe { [vld1q_f32(base.add(at)), vld1q_f32(base.add(at + V))] };
                    for (r, a) in acc.iter_mut().enumerate() {
                        if (r * S..r * S + K).contains(&i) {
                            let t = (i - r * S) * K + kx;
                            for h in 0..2 {
                                a[h] = fma_lane(a[h], v[h], self.w[t / V], t % V);
                            }
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let a = a.map(|a| match self.clamp {
                    Some((lo, hi)) => clamp(a, lo, hi),
                    None => a,
                });
                store(&mut out[(y + r) * wo..(y + r + 1) * wo], x, a);
            }
            x += LANES;
        }
    }
}

/// Outputs `x..x + 8` of `row`, or as many as are left: a partial step
/// goes through a small buffer, never past the row.
#[inline(always)]
fn store(row: &mut [f32], x: usize, a: [float32x4_t; 2]) {
    if x + LANES <= row.len() {
        // SAFETY: x + 8 <= row.len(), inside this output row.
        unsafe {
            vst1q_f32(row.as_mut_ptr().add(x), a[0]);
            vst1q_f32(row.as_mut_ptr().add(x + V), a[1]);
        }
    } else {
        let mut tail = [0f32; LANES];
        // SAFETY: a local buffer of 8 floats.
        unsafe {
            vst1q_f32(tail.as_mut_ptr(), a[0]);
            vst1q_f32(tail.as_mut_ptr().add(V), a[1]);
        }
        let n = row.len() - x;
        row[x..].copy_from_slice(&tail[..n]);
    }
}

//! The stem's row for NEON (Graviton2's Neoverse N1: two 128-bit FMA
//! pipes, 32 vector registers): 8 pixels (two vectors) by 8 output
//! channels a step, 16 accumulators. Each tap is 2 loads of pixels, the
//! 8 channels' weights as 2 vectors used by lane (`fmla v.4s, v.4s,
//! v.s[i]`), and 16 FMAs: 4 loads per 16 FMAs, 16 chains for the 8 the
//! pipes' latency needs, so the FMA pipes bound it.

use std::arch::aarch64::*;

use crate::ops::aarch64::neon::{clamp, fma_lane};

use super::{Row, BLOCK};

/// f32 lanes per vector.
const V: usize = 4;

/// # Safety
/// See [`super::portable_row`].
pub(super) unsafe fn row(row: &Row<'_>) {
    let (lo, hi) = row.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
    let base = row.scratch.as_ptr();
    for half in 0..BLOCK / 8 {
        let lanes = half * 8..half * 8 + 8;
        if lanes.end <= row.store.start || row.store.end <= lanes.start {
            continue;
        }
        let mut x = 0;
        while x < row.width {
            let mut acc = [[vdupq_n_f32(0.0); 2]; 8];
            for (o, acc) in acc.iter_mut().enumerate() {
                *acc = [vdupq_n_f32(row.bias[lanes.start + o]); 2];
            }
            for (t, &start) in row.offsets.iter().enumerate() {
                let w = &row.w[t * BLOCK + lanes.start..][..8];
                // SAFETY: x < width, and a phase row holds the width
                // rounded up to 8 plus the kernel (Geometry::phase_len);
                // `w` holds 8 weights.
                let (v, w) = unsafe {
                    let at = base.add(start + x);
                    (
                        [vld1q_f32(at), vld1q_f32(at.add(V))],
                        [vld1q_f32(w.as_ptr()), vld1q_f32(w.as_ptr().add(V))],
                    )
                };
                for (o, acc) in acc.iter_mut().enumerate() {
                    for h in 0..2 {
                        acc[h] = fma_lane(acc[h], v[h], w[o / V], o % V);
                    }
                }
            }
            let n = (row.width - x).min(8);
            for (o, acc) in acc.iter().enumerate() {
                let channel = lanes.start + o;
                if !row.store.contains(&channel) {
                    continue;
                }
                let v = acc.map(|a| clamp(a, lo, hi));
                let at = row.out.wrapping_add(channel * row.plane + x);
                if n == 8 {
                    // SAFETY: channel `channel`, pixels x..x + 8 <= width.
                    unsafe {
                        vst1q_f32(at, v[0]);
                        vst1q_f32(at.add(V), v[1]);
                    }
                    continue;
                }
                let mut tmp = [0f32; 8];
                // SAFETY: a local array of 8 floats.
                unsafe {
                    vst1q_f32(tmp.as_mut_ptr(), v[0]);
                    vst1q_f32(tmp.as_mut_ptr().add(V), v[1]);
                }
                // SAFETY: channel `channel`, pixels x..x + n <= width.
                unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), at, n) };
            }
            x += 8;
        }
    }
}

//! The tile for NEON, designed for Graviton2 (Neoverse N1: two 128-bit
//! FMA pipes, 4-cycle FMA latency, two load pipes, 32 vector registers).
//!
//! A tile is a whole panel of 8 output channels by up to 3 vectors of 4
//! pixels: 24 accumulators. Per input channel it loads the 3 vectors of
//! pixels and the panel's 8 weights as 2 vectors, and multiplies each
//! pixel vector by each weight *lane* (`fmla v.4s, v.4s, v.s[i]`): 24
//! FMAs for 5 loads, in 24 + 3 + 2 = 29 registers, no broadcasts. 24
//! independent chains cover the 2 pipes x 4 cycles of latency three
//! times over, so the bound is the FMA pipes: 8 multiply-adds a cycle,
//! 20 GMAC/s per core at 2.5 GHz, loads at 5 per 24 FMAs well under the
//! two load pipes. No prefetch instructions (stable Rust has none for
//! aarch64): the weights stream sequentially, which N1's prefetcher
//! follows.

use std::arch::aarch64::*;

use crate::ops::aarch64::neon::{clamp, fma_lane, hard_swish};

use super::{Kind, Tile, PANEL};

/// Output channels per tile: a whole panel.
const ROWS: usize = PANEL;

/// f32 lanes per vector.
pub(super) const LANES: usize = 4;

/// # Safety
/// See [`super::Pointwise::strip`]: the tile's reads and writes are
/// inside the tensors. With 4 lanes, [`super::strips`] leaves fewer than
/// 4 pixels to column tiles, so every vector is whole.
pub(super) unsafe fn tile(t: &Tile<'_>) {
    let Kind::Vectors { vecs, tail } = t.strip.kind else {
        return;
    };
    debug_assert_eq!(tail, LANES);
    // SAFETY: forwarded.
    unsafe {
        match vecs {
            1 => tile_of::<1>(t),
            2 => tile_of::<2>(t),
            _ => tile_of::<3>(t),
        }
    }
}

unsafe fn tile_of<const V: usize>(t: &Tile<'_>) {
    let mut acc = [[vdupq_n_f32(0.0); V]; ROWS];
    for (r, row) in acc.iter_mut().enumerate() {
        // SAFETY: the bias is padded to whole panels.
        *row = [vdupq_n_f32(unsafe { *t.bias.add(r) }); V];
    }
    let mut w = t.w;
    // SAFETY (both loops): one tap of one channel a step, inside the
    // tile's input and panel (see `Tile::taps`).
    if let &[tap] = t.taps {
        // A 1x1 layer or tap columns: no loop over taps.
        let mut x = t.x.wrapping_add(tap);
        for _ in 0..t.k {
            acc = unsafe { step(acc, x, w) };
            x = x.wrapping_add(t.ld);
            w = w.wrapping_add(PANEL);
        }
    } else {
        let mut x = t.x;
        for _ in 0..t.k {
            for &tap in t.taps {
                acc = unsafe { step(acc, x.wrapping_add(tap), w) };
                w = w.wrapping_add(PANEL);
            }
            x = x.wrapping_add(t.ld);
        }
    }
    // A copy, so that no reference to the accumulators escapes the loop
    // (as in the x86 tiles, where one kept them in memory).
    let done = acc;
    // SAFETY: forwarded.
    unsafe { store::<V>(t, &done) };
}

/// One input channel of one tap: `V` vectors of pixels at `x`, the
/// panel's 8 weights at `w`.
///
/// # Safety
/// The pixels (whole vectors) and weights are inside the tile's input and
/// panel.
#[inline(always)]
unsafe fn step<const V: usize>(
    mut acc: [[float32x4_t; V]; ROWS],
    x: *const f32,
    w: *const f32,
) -> [[float32x4_t; V]; ROWS] {
    let mut xv = [vdupq_n_f32(0.0); V];
    for (v, xv) in xv.iter_mut().enumerate() {
        // SAFETY: whole vectors of pixels of this input row.
        *xv = unsafe { vld1q_f32(x.add(LANES * v)) };
    }
    // SAFETY: a panel holds PANEL weights per input channel and tap.
    let wv = unsafe { [vld1q_f32(w), vld1q_f32(w.add(LANES))] };
    for r in 0..ROWS {
        for v in 0..V {
            acc[r][v] = fma_lane(acc[r][v], xv[v], wv[r / LANES], r % LANES);
        }
    }
    acc
}

/// The epilogue and the tile's only store.
///
/// # Safety
/// Rows `t.store` of the strip are inside `out` (and `residual`).
unsafe fn store<const V: usize>(t: &Tile<'_>, acc: &[[float32x4_t; V]; ROWS]) {
    let epilogue = |y: float32x4_t, c: Option<(f32, f32)>| match c {
        Some((lo, hi)) => clamp(y, vdupq_n_f32(lo), vdupq_n_f32(hi)),
        None => y,
    };
    for (r, row) in acc.iter().enumerate() {
        if !t.store.contains(&r) {
            continue;
        }
        for (v, y) in row.iter().enumerate() {
            let at = r * t.out_ld + LANES * v;
            let mut y = epilogue(*y, t.pre);
            if t.hard_swish {
                y = hard_swish(y);
            }
            if let Some(res) = t.residual {
                // SAFETY: 4 pixels of this output row, which the residual
                // has too.
                y = unsafe { vaddq_f32(y, vld1q_f32(res.add(at))) };
            }
            // SAFETY: as above.
            unsafe { vst1q_f32(t.out.add(at), epilogue(y, t.post)) };
        }
    }
}

/// # Safety
/// As [`tile`].
pub(super) unsafe fn columns(t: &Tile<'_>) {
    // SAFETY: forwarded.
    unsafe {
        match t.strip.cols {
            1 => columns_of::<1, 4>(t),
            2 => columns_of::<2, 2>(t),
            3 => columns_of::<3, 2>(t),
            4 => columns_of::<4, 1>(t),
            5 => columns_of::<5, 1>(t),
            6 => columns_of::<6, 1>(t),
            _ => columns_of::<7, 1>(t),
        }
    }
}

/// A panel of 8 channels as two vectors, by `C` pixels: each input
/// channel is two loads of 4 weights and `C` loads of one pixel into
/// every lane (`ld1r`). `U` input channels at a time into accumulators
/// of their own, summed at the end, so that at least 8 chains hide the
/// FMA latency on both pipes.
unsafe fn columns_of<const C: usize, const U: usize>(t: &Tile<'_>) {
    let mut acc = [[[vdupq_n_f32(0.0); 2]; C]; U];
    // SAFETY: the bias is padded to whole panels.
    acc[0] = [unsafe { [vld1q_f32(t.bias), vld1q_f32(t.bias.add(LANES))] }; C];
    let mut w = t.w;
    let step = |acc: &mut [[float32x4_t; 2]; C], x: *const f32, w: *const f32| {
        // SAFETY: a panel holds PANEL weights per input channel, and the
        // strip's C pixels are in this input row.
        unsafe {
            let wv = [vld1q_f32(w), vld1q_f32(w.add(LANES))];
            for (c, acc) in acc.iter_mut().enumerate() {
                let xc = vld1q_dup_f32(x.add(c));
                acc[0] = vfmaq_f32(acc[0], wv[0], xc);
                acc[1] = vfmaq_f32(acc[1], wv[1], xc);
            }
        }
    };
    if let &[tap] = t.taps {
        // A 1x1 layer or tap columns: `U` channels at a time.
        let mut x = t.x.wrapping_add(tap);
        for _ in 0..t.k / U {
            for (u, acc) in acc.iter_mut().enumerate() {
                step(acc, x.wrapping_add(u * t.ld), w.wrapping_add(u * PANEL));
            }
            x = x.wrapping_add(U * t.ld);
            w = w.wrapping_add(U * PANEL);
        }
        for _ in 0..t.k % U {
            step(&mut acc[0], x, w);
            x = x.wrapping_add(t.ld);
            w = w.wrapping_add(PANEL);
        }
    } else {
        // Channel by channel, `U` of its taps at a time.
        let mut x = t.x;
        for _ in 0..t.k {
            let mut taps = t.taps.chunks_exact(U);
            for group in &mut taps {
                for (u, acc) in acc.iter_mut().enumerate() {
                    step(acc, x.wrapping_add(group[u]), w.wrapping_add(u * PANEL));
                }
                w = w.wrapping_add(U * PANEL);
            }
            for &tap in taps.remainder() {
                step(&mut acc[0], x.wrapping_add(tap), w);
                w = w.wrapping_add(PANEL);
            }
            x = x.wrapping_add(t.ld);
        }
    }
    for u in 1..U {
        for c in 0..C {
            for h in 0..2 {
                // SAFETY: NEON is part of the target.
                acc[0][c][h] = unsafe { vaddq_f32(acc[0][c][h], acc[u][c][h]) };
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { store_columns(t, &acc[0]) };
}

/// The epilogue of [`columns_of`]: one channel at a time, since the
/// output rows are channels.
///
/// # Safety
/// Rows `t.store` of the strip's `C` pixels are inside `out`.
unsafe fn store_columns<const C: usize>(t: &Tile<'_>, acc: &[[float32x4_t; 2]; C]) {
    let epilogue = |v: f32, c: Option<(f32, f32)>| c.map_or(v, |(lo, hi)| v.max(lo).min(hi));
    for (c, v) in acc.iter().enumerate() {
        let mut lanes = [0f32; PANEL];
        // SAFETY: a local array of 8 floats.
        unsafe {
            vst1q_f32(lanes.as_mut_ptr(), v[0]);
            vst1q_f32(lanes.as_mut_ptr().add(LANES), v[1]);
        }
        for r in t.store.clone() {
            let at = r * t.out_ld + c;
            let mut y = epilogue(lanes[r], t.pre);
            if t.hard_swish {
                y = crate::ops::hardswish::one(y);
            }
            if let Some(res) = t.residual {
                // SAFETY: row r of the strip, inside the residual.
                y += unsafe { *res.add(at) };
            }
            // SAFETY: row r of the strip, which this chunk owns.
            unsafe { *t.out.add(at) = epilogue(y, t.post) };
        }
    }
}

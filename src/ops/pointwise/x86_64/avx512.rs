use std::arch::x86_64::*;

use crate::ops::x86_64::avx512::{clamp, hard_swish, mask};

use super::{Kind, Tile, PANEL, PREFETCH_AHEAD};

const ROWS: usize = 8;

/// # Safety
/// The CPU must have AVX-512F; see [`super::Pointwise::image`].
pub(super) unsafe fn tile(t: &Tile<'_>) {
    let Kind::Vectors { vecs, tail } = t.strip.kind else {
        return;
    };
    // SAFETY: forwarded.
    unsafe {
        match vecs {
            1 => tile_of::<1>(t, tail),
            2 => tile_of::<2>(t, tail),
            _ => tile_of::<3>(t, tail),
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile_of<const V: usize>(t: &Tile<'_>, tail: usize) {
    let tail = mask(tail);
    let (k, ld) = (t.k, t.ld);
    let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
    for r in 0..ROWS {
        // SAFETY: the bias is padded to whole panels.
        let b = _mm512_set1_ps(unsafe { *t.bias.add(r) });
        for v in 0..V {
            acc[r][v] = b;
        }
    }
    if t.prefetch_out {
        prefetch_next::<V>(t);
    }
    let mut w = t.w;
    // SAFETY (both loops): one tap of one channel a step, inside the
    // tile's input and panel (see `Tile::taps`).
    if let &[tap] = t.taps {
        // A 1x1 layer or tap columns: no loop over taps.
        let mut x = t.x.wrapping_add(tap);
        for _ in 0..k {
            acc = unsafe { step(acc, x, w, tail) };
            x = x.wrapping_add(ld);
            w = w.wrapping_add(PANEL);
        }
    } else {
        let mut x = t.x;
        for _ in 0..k {
            for &tap in t.taps {
                acc = unsafe { step(acc, x.wrapping_add(tap), w, tail) };
                w = w.wrapping_add(PANEL);
            }
            x = x.wrapping_add(ld);
        }
    }
    store(t, &acc, tail);
}

/// One input channel of one tap: `V` vectors of pixels at `x` (the last
/// masked to `tail`), the panel's 8 weights at `w`.
///
/// # Safety
/// The pixels and weights are inside the tile's input and panel.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn step<const V: usize>(
    mut acc: [[__m512; V]; ROWS],
    x: *const f32,
    w: *const f32,
    tail: __mmask16,
) -> [[__m512; V]; ROWS] {
    // A prefetch never faults, even past the weights' end.
    _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH_AHEAD).cast());
    let mut xv = [_mm512_setzero_ps(); V];
    for v in 0..V {
        // SAFETY: unmasked lanes are pixels of this input row.
        xv[v] = unsafe {
            if v + 1 == V {
                _mm512_maskz_loadu_ps(tail, x.wrapping_add(16 * v))
            } else {
                _mm512_loadu_ps(x.wrapping_add(16 * v))
            }
        };
    }
    for r in 0..ROWS {
        // SAFETY: a packed panel has PANEL weights per input channel and
        // tap. (A load intrinsic, not `*w`: a dereference carries debug
        // builds' pointer checks into this loop, which then spills every
        // accumulator.)
        let b = _mm512_broadcastss_ps(unsafe { _mm_load_ss(w.wrapping_add(r)) });
        for v in 0..V {
            acc[r][v] = _mm512_fmadd_ps(b, xv[v], acc[r][v]);
        }
    }
    acc
}

/// Prefetches the output (and residual) lines the next tiles store to
/// and read: the next tile of rows in this strip, for writing, into L1
/// (`Pointwise` walks a strip's rows tile by tile), and this tile's rows
/// of the next strip into L2 (the order of a panel over strips, and of
/// `Conv`'s runs). A layer's output past L2 (ResNet-50's 64 -> 256 layers
/// at 56x56 write 3.2 MB) is written in 256 rows at once, too many streams
/// for the hardware prefetcher, and each tile's stores and residual loads
/// waited for their lines: with this, those layers went 1.40-1.93 ->
/// 1.10-1.63 ms and ResNet-50's 1x1 layers 45.1-45.7 -> 41.9-42.1 ms,
/// MobileNetV2 9.0 -> 8.1 ms, ResNet-18's convolutions 37.7 -> 36.8
/// (`profile --by-node --threads 1`, per-node minima of 5-6 alternating
/// runs, AMD EPYC Zen 4). Either half alone gained about half as much.
#[target_feature(enable = "avx512f")]
fn prefetch_next<const V: usize>(t: &Tile<'_>) {
    for r in 0..ROWS {
        for v in 0..V {
            let next_tile = (ROWS + r) * t.out_ld + 16 * v;
            let next_strip = r * t.out_ld + 16 * (V + v);
            // A prefetch never faults, even past the output's end.
            _mm_prefetch::<_MM_HINT_ET0>(t.out.wrapping_add(next_tile).cast());
            _mm_prefetch::<_MM_HINT_T1>(t.out.wrapping_add(next_strip).cast());
            if let Some(res) = t.residual {
                _mm_prefetch::<_MM_HINT_T0>(res.wrapping_add(next_tile).cast());
                _mm_prefetch::<_MM_HINT_T1>(res.wrapping_add(next_strip).cast());
            }
        }
    }
}

/// The epilogue and the tile's only store.
#[target_feature(enable = "avx512f")]
fn store<const V: usize>(t: &Tile<'_>, acc: &[[__m512; V]; ROWS], tail: __mmask16) {
    let epilogue = |y: __m512, c: Option<(f32, f32)>| match c {
        Some((lo, hi)) => clamp(y, _mm512_set1_ps(lo), _mm512_set1_ps(hi)),
        None => y,
    };
    for (r, row) in acc.iter().enumerate() {
        if !t.store.contains(&r) {
            continue;
        }
        for (v, y) in row.iter().enumerate() {
            let mask = if v + 1 == V { tail } else { 0xFFFF };
            let at = r * t.out_ld + 16 * v;
            let mut y = epilogue(*y, t.pre);
            if t.hard_swish {
                y = hard_swish(y);
            }
            if let Some(res) = t.residual {
                // SAFETY: unmasked lanes are this output row's pixels,
                // which the residual has too.
                y = _mm512_add_ps(y, unsafe {
                    _mm512_maskz_loadu_ps(mask, res.wrapping_add(at))
                });
            }
            // SAFETY: as above, in the output.
            unsafe { _mm512_mask_storeu_ps(t.out.wrapping_add(at), mask, epilogue(y, t.post)) };
        }
    }
}

use std::arch::x86_64::*;

use crate::ops::x86_64::avx512::{clamp, mask};

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
    let mut w = t.w;
    for &tap in t.taps {
        let mut x = t.x.wrapping_add(tap);
        for _ in 0..k {
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
                // SAFETY: a packed panel has PANEL weights per input
                // channel. (A load intrinsic, not `*w`: a dereference
                // carries debug builds' pointer checks into this loop,
                // which then spills every accumulator.)
                let b = _mm512_broadcastss_ps(unsafe { _mm_load_ss(w.wrapping_add(r)) });
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(b, xv[v], acc[r][v]);
                }
            }
            x = x.wrapping_add(ld);
            w = w.wrapping_add(PANEL);
        }
    }
    store(t, &acc, tail);
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

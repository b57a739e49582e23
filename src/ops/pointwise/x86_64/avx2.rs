use std::arch::x86_64::*;

use crate::ops::x86_64::avx2::{clamp, mask};

use super::{Kind, Tile, OUT_AHEAD, PANEL, PREFETCH_AHEAD};

const ROWS: usize = 4;

/// # Safety
/// The CPU must have AVX2 and FMA; see [`super::Pointwise::image`].
pub(super) unsafe fn tile(t: &Tile<'_>) {
    let Kind::Vectors { vecs, tail } = t.strip.kind else {
        return;
    };
    // SAFETY: forwarded.
    unsafe {
        match (vecs, tail == 8) {
            (1, true) => tile_of::<1, false>(t, tail),
            (2, true) => tile_of::<2, false>(t, tail),
            (_, true) => tile_of::<3, false>(t, tail),
            (1, false) => tile_of::<1, true>(t, tail),
            (2, false) => tile_of::<2, true>(t, tail),
            (_, false) => tile_of::<3, true>(t, tail),
        }
    }
}

/// `MASKED`: whether the last vector of pixels is partial. With AVX2
/// the mask is a vector register, the 17th live one beside 12
/// accumulators, 3 vectors of `x` and a broadcast weight: LLVM then
/// kept an accumulator on the stack, and its store-to-load chain held
/// the loop to about one FMA a cycle. [`super::strips`] leaves fewer
/// than 8 pixels to column tiles, so with 8 lanes the last vector is
/// always whole and the unmasked loop is the one that runs. With this
/// and the copy before the store below, the AVX2 layers went from 28
/// to 54-61 GMAC/s (this CPU's 256-bit peak: 67), the whole model 11.9
/// -> 7.3 ms (AVX-512 disabled by a patched build on AMD EPYC Zen 5,
/// `profile --by-node --threads 1`, four alternating runs).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_of<const V: usize, const MASKED: bool>(t: &Tile<'_>, tail: usize) {
    let (k, ld) = (t.k, t.ld);
    let mut acc = [[_mm256_setzero_ps(); V]; ROWS];
    for r in 0..ROWS {
        // SAFETY: the bias is padded to whole panels.
        let b = _mm256_set1_ps(unsafe { *t.bias.add(r) });
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
            let mut xv = [_mm256_setzero_ps(); V];
            for v in 0..V {
                // SAFETY: unmasked lanes are pixels of this input row.
                xv[v] = unsafe {
                    if MASKED && v + 1 == V {
                        _mm256_maskload_ps(x.wrapping_add(8 * v), mask(tail))
                    } else {
                        _mm256_loadu_ps(x.wrapping_add(8 * v))
                    }
                };
            }
            for r in 0..ROWS {
                // SAFETY: as in the AVX-512 tile.
                let b = _mm256_broadcast_ss(unsafe { &*w.wrapping_add(r) });
                for v in 0..V {
                    acc[r][v] = _mm256_fmadd_ps(b, xv[v], acc[r][v]);
                }
            }
            x = x.wrapping_add(ld);
            w = w.wrapping_add(PANEL);
        }
    }
    // A copy: with `&acc` itself escaping into the call, LLVM stored
    // every accumulator to the stack on every input channel.
    let done = acc;
    store::<V, MASKED>(t, &done, mask(tail));
}

/// The epilogue and the tile's only store. Whole vectors go through
/// plain loads and stores: `vmaskmovps` stores are microcoded on AMD
/// Zen 2, and with a mask on every vector the 1x1 layers took 8.68 ms
/// against 7.73, the joined expansion 1.64 against 1.27 (`profile
/// --by-node --threads 1`, AMD EPYC Zen 2, three runs alternating).
#[target_feature(enable = "avx2,fma")]
fn store<const V: usize, const MASKED: bool>(
    t: &Tile<'_>,
    acc: &[[__m256; V]; ROWS],
    tail: __m256i,
) {
    let epilogue = |y: __m256, c: Option<(f32, f32)>| match c {
        Some((lo, hi)) => clamp(y, _mm256_set1_ps(lo), _mm256_set1_ps(hi)),
        None => y,
    };
    for (r, row) in acc.iter().enumerate() {
        if !t.store.contains(&r) {
            continue;
        }
        for (v, y) in row.iter().enumerate() {
            let whole = !MASKED || v + 1 < V;
            let at = r * t.out_ld + 8 * v;
            let (out, res) = (
                t.out.wrapping_add(at),
                t.residual.map(|r| r.wrapping_add(at)),
            );
            let mut y = epilogue(*y, t.pre);
            // SAFETY (loads and stores): a whole vector is 8 pixels of
            // this output row, which the residual has too; otherwise
            // the unmasked lanes are.
            if let Some(res) = res {
                y = _mm256_add_ps(y, unsafe {
                    if whole {
                        _mm256_loadu_ps(res)
                    } else {
                        _mm256_maskload_ps(res, tail)
                    }
                });
            }
            let y = epilogue(y, t.post);
            unsafe {
                if whole {
                    _mm256_storeu_ps(out, y);
                } else {
                    _mm256_maskstore_ps(out, tail, y);
                }
            }
            if t.prefetch_out {
                _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(OUT_AHEAD).cast());
                if let Some(res) = res {
                    _mm_prefetch::<_MM_HINT_T0>(res.wrapping_add(OUT_AHEAD).cast());
                }
            }
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA; see [`super::Pointwise::image`].
pub(super) unsafe fn columns(t: &Tile<'_>) {
    // SAFETY: forwarded.
    unsafe {
        match t.strip.cols {
            1 => columns_of::<1, 8>(t),
            2 => columns_of::<2, 4>(t),
            3 => columns_of::<3, 2>(t),
            4 => columns_of::<4, 2>(t),
            5 => columns_of::<5, 1>(t),
            6 => columns_of::<6, 1>(t),
            _ => columns_of::<7, 1>(t),
        }
    }
}

/// A panel of 8 channels as one vector, by `C` pixels: each input
/// channel is one load of 8 weights and `C` broadcast pixels.
///
/// `U` input channels at a time, each into accumulators of its own
/// (summed at the end): with one pixel, one chain of FMAs waited 4
/// cycles for each, and the 49th pixel of a 7x7 layer cost a third as
/// much as the other 48 (`profile --by-node`: the 7x7 layers at 65
/// GMAC/s where the larger ran at 95-115).
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_of<const C: usize, const U: usize>(t: &Tile<'_>) {
    let mut acc = [[_mm256_setzero_ps(); C]; U];
    // SAFETY: the bias is padded to whole panels.
    acc[0] = [unsafe { _mm256_loadu_ps(t.bias) }; C];
    let mut w = t.w;
    let step = |acc: &mut [__m256; C], x: *const f32, w: *const f32| {
        // SAFETY: a panel holds PANEL weights per input channel, and
        // the strip's C pixels are in this input row.
        let wv = unsafe { _mm256_loadu_ps(w) };
        for c in 0..C {
            let xc = _mm256_broadcast_ss(unsafe { &*x.wrapping_add(c) });
            acc[c] = _mm256_fmadd_ps(wv, xc, acc[c]);
        }
    };
    for &tap in t.taps {
        let mut x = t.x.wrapping_add(tap);
        for _ in 0..t.k / U {
            for u in 0..U {
                step(
                    &mut acc[u],
                    x.wrapping_add(u * t.ld),
                    w.wrapping_add(u * PANEL),
                );
            }
            x = x.wrapping_add(U * t.ld);
            w = w.wrapping_add(U * PANEL);
        }
        for _ in 0..t.k % U {
            step(&mut acc[0], x, w);
            x = x.wrapping_add(t.ld);
            w = w.wrapping_add(PANEL);
        }
    }
    for u in 1..U {
        for c in 0..C {
            acc[0][c] = _mm256_add_ps(acc[0][c], acc[u][c]);
        }
    }
    store_columns(t, &acc[0]);
}

/// The epilogue of [`columns_of`]: one channel at a time, since the
/// output rows are channels.
#[target_feature(enable = "avx2,fma")]
fn store_columns<const C: usize>(t: &Tile<'_>, acc: &[__m256; C]) {
    let epilogue = |v: f32, c: Option<(f32, f32)>| c.map_or(v, |(lo, hi)| v.max(lo).min(hi));
    for (c, v) in acc.iter().enumerate() {
        let mut lanes = [0f32; PANEL];
        // SAFETY: a local array of 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *v) };
        for r in t.store.clone() {
            let at = r * t.out_ld + c;
            let mut y = epilogue(lanes[r], t.pre);
            if let Some(res) = t.residual {
                // SAFETY: row r of the strip, inside the residual.
                y += unsafe { *res.wrapping_add(at) };
            }
            // SAFETY: row r of the strip, which this chunk owns.
            unsafe { *t.out.wrapping_add(at) = epilogue(y, t.post) };
        }
    }
}

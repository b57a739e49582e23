use std::arch::x86_64::*;

use crate::ops::x86_64::avx2::{clamp, hard_swish, mask};

use super::{Blocked, Kind, Tile, OUT_AHEAD, PANEL, PREFETCH_AHEAD};

/// Output channels in registers at once: 4 rows by 3 vectors are 12 of
/// AVX2's 16 registers, with 3 vectors of pixels and a broadcast weight.
const ROWS: usize = 4;

/// Input channels (counted over the taps, in whole channels: 7 of a 3x3
/// layer) one half of a panel runs before the other half runs the same
/// ones, 6 KiB of pixels; see [`tile_of`]. 32 and 128 measured 1-3%
/// slower on ResNet-18; with the channels' taps together, 128 and 256
/// no faster.
const CHUNK: usize = 64;

/// Input channels (over the taps) up to which the two halves run one
/// after the other over all of them: 3 vectors of pixels a channel,
/// 256 channels are 24 KiB, which stay in a 32 KiB L1 for the second
/// half. Taking turns there too cost ResNet-50's 1x1 layers with 64 and
/// 128 input channels 5-15% (the accumulators' round trips through
/// memory, for no reads saved).
const TURNS_FROM: usize = 256;

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

/// One half's accumulators: 4 output channels by `V` vectors of pixels.
type Acc<const V: usize> = [[__m256; V]; ROWS];

/// A panel of 8 output channels as two halves of 4 rows. Where the input
/// is larger than L1 the halves take turns over it, `CHUNK` input
/// channels (counted over the taps) at a time, and the second half reads
/// the pixels the first has just brought in: one half after the other
/// over all of it (two 4-row tiles) read every pixel from L2 twice per
/// panel, 8 bytes for each FMA where the AVX-512 tile reads 4. With the
/// turns, `--simd avx2` on AMD EPYC Zen 4 (whose AVX2 peak is its AVX-512
/// peak): ResNet-18 42.0 -> 39.4 ms (its 7x7 layers 2.85 -> 2.52, 14x14
/// 2.75 -> 2.65), ResNet-50 92.0 -> 88.4, DenseNet-121 64.4 -> 62.8,
/// RegNetY 12.4 -> 12.0, the depthwise families unchanged (`profile
/// --by-node --threads 1`, per-node minima of 3 alternating runs).
///
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
    let (k, taps) = (t.k, t.taps.len());
    let halves = if t.store.end > ROWS { 2 } else { 1 };
    if taps * k <= TURNS_FROM {
        for h in 0..halves {
            // SAFETY: forwarded: every tap of every channel.
            unsafe { last_turn::<V, MASKED>(t, h, None, t.x, t.w, k, tail) };
        }
        return;
    }
    let mut acc: [Acc<V>; 2] = std::array::from_fn(|h| bias(t, h));
    // Turns of `step` input channels, every tap of each.
    let step = (CHUNK / taps).max(1);
    let count = k.div_ceil(step);
    for (j, from) in (0..k).step_by(step).enumerate() {
        let n = step.min(k - from);
        // Channel `c` is at `x + c * ld` (plus each tap's offset), its
        // weights at `w + c * taps * PANEL`, the second half's 4 further.
        let x = t.x.wrapping_add(from * t.ld);
        let w = t.w.wrapping_add(from * taps * PANEL);
        for (h, half) in acc.iter_mut().enumerate().take(halves) {
            // SAFETY: forwarded: channels `from..from + n`.
            unsafe {
                if j + 1 < count {
                    turn::<V, MASKED>(half, x, t.taps, w.wrapping_add(h * ROWS), t.ld, n, tail);
                } else {
                    last_turn::<V, MASKED>(t, h, Some(half), x, w, n, tail);
                }
            }
        }
    }
}

/// Half `h`'s bias, in its accumulators.
#[target_feature(enable = "avx2,fma")]
fn bias<const V: usize>(t: &Tile<'_>, h: usize) -> Acc<V> {
    // SAFETY: the bias is padded to whole panels.
    std::array::from_fn(|r| [_mm256_set1_ps(unsafe { *t.bias.add(h * ROWS + r) }); V])
}

/// Half `h`'s last (or only) turn, from its bias or from `acc`, and its
/// store. Not inlined, and the only caller of [`store`]: with a store in
/// each of [`tile_of`]'s paths LLVM called it out of line, with the
/// accumulators through the stack, and the 1x1 layers of 16 to 32 input
/// channels were 5-15% slower.
///
/// # Safety
/// As [`steps`], with `w` the panel's first row.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn last_turn<const V: usize, const MASKED: bool>(
    t: &Tile<'_>,
    h: usize,
    acc: Option<&Acc<V>>,
    x: *const f32,
    w: *const f32,
    n: usize,
    tail: usize,
) {
    let acc = acc.map_or_else(|| bias(t, h), |a| *a);
    let w = w.wrapping_add(h * ROWS);
    // SAFETY: forwarded.
    let acc = unsafe { steps::<V, MASKED>(acc, x, t.taps, w, t.ld, n, tail) };
    // A copy: with `&acc` itself escaping into the call, LLVM stored
    // every accumulator to the stack on every input channel.
    let done = acc;
    store::<V, MASKED>(t, h, &done, mask(tail));
}

/// [`steps`] on a half's accumulators in memory, which this loads into
/// registers and stores back once. Not inlined: in the loops over taps and
/// chunks of [`tile_of`] LLVM kept the accumulators on the stack across
/// taps (ResNet-18's stem, 3 channels a tap, went 2.8 -> 3.3 ms).
///
/// # Safety
/// As [`steps`].
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn turn<const V: usize, const MASKED: bool>(
    half: &mut Acc<V>,
    x: *const f32,
    taps: &[usize],
    w: *const f32,
    ld: usize,
    n: usize,
    tail: usize,
) {
    // SAFETY: forwarded.
    *half = unsafe { steps::<V, MASKED>(*half, x, taps, w, ld, n, tail) };
}

/// Every tap of `n` input channels into one half's accumulators, taken
/// and returned by value so that they stay in registers: channel by
/// channel, its taps one after the other (see [`Tile::taps`]).
///
/// # Safety
/// For every tap, `x + tap` starts input channel 0 of the tile's input,
/// the next channel `ld` further; `w` starts the panel's weights of
/// channel 0, tap 0, and those of the next tap and channel follow, for
/// `n` channels.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn steps<const V: usize, const MASKED: bool>(
    mut acc: Acc<V>,
    x: *const f32,
    taps: &[usize],
    mut w: *const f32,
    ld: usize,
    n: usize,
    tail: usize,
) -> Acc<V> {
    // SAFETY (both loops): forwarded, one tap of one channel a step.
    if let &[tap] = taps {
        // A 1x1 layer or tap columns: no loop over taps.
        let mut x = x.wrapping_add(tap);
        for _ in 0..n {
            acc = unsafe { step::<V, MASKED>(acc, x, w, tail) };
            x = x.wrapping_add(ld);
            w = w.wrapping_add(PANEL);
        }
        return acc;
    }
    let mut x = x;
    for _ in 0..n {
        for &tap in taps {
            acc = unsafe { step::<V, MASKED>(acc, x.wrapping_add(tap), w, tail) };
            w = w.wrapping_add(PANEL);
        }
        x = x.wrapping_add(ld);
    }
    acc
}

/// One input channel of one tap: `V` vectors of pixels at `x`, the half's
/// 4 weights at `w`.
///
/// # Safety
/// As [`steps`], for this one step.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn step<const V: usize, const MASKED: bool>(
    mut acc: Acc<V>,
    x: *const f32,
    w: *const f32,
    tail: usize,
) -> Acc<V> {
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
    acc
}

/// The epilogue and the only store of half `h`'s rows. Whole vectors go
/// through plain loads and stores: `vmaskmovps` stores are microcoded on
/// AMD Zen 2, and with a mask on every vector the 1x1 layers took 8.68 ms
/// against 7.73, the joined expansion 1.64 against 1.27 (`profile
/// --by-node --threads 1`, AMD EPYC Zen 2, three runs alternating).
#[target_feature(enable = "avx2,fma")]
fn store<const V: usize, const MASKED: bool>(t: &Tile<'_>, h: usize, acc: &Acc<V>, tail: __m256i) {
    let epilogue = |y: __m256, c: Option<(f32, f32)>| match c {
        Some((lo, hi)) => clamp(y, _mm256_set1_ps(lo), _mm256_set1_ps(hi)),
        None => y,
    };
    for (i, row) in acc.iter().enumerate() {
        let r = h * ROWS + i;
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
            if t.hard_swish {
                y = hard_swish(y);
            }
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
    if let &[tap] = t.taps {
        // A 1x1 layer or tap columns: `U` channels at a time.
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
    } else {
        // Channel by channel, `U` of its taps at a time.
        let mut x = t.x;
        for _ in 0..t.k {
            let mut taps = t.taps.chunks_exact(U);
            for group in &mut taps {
                for u in 0..U {
                    step(
                        &mut acc[u],
                        x.wrapping_add(group[u]),
                        w.wrapping_add(u * PANEL),
                    );
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
            if t.hard_swish {
                y = crate::ops::hardswish::one(y);
            }
            if let Some(res) = t.residual {
                // SAFETY: row r of the strip, inside the residual.
                y += unsafe { *res.wrapping_add(at) };
            }
            // SAFETY: row r of the strip, which this chunk owns.
            unsafe { *t.out.wrapping_add(at) = epilogue(y, t.post) };
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA; see [`super::Pointwise::compute_blocked`].
pub(super) unsafe fn blocked(b: &Blocked<'_>) {
    // SAFETY: forwarded.
    unsafe {
        match (b.panels, b.rows.is_some()) {
            (2, false) => blocked_panels::<2, 6, false>(b),
            (2, true) => blocked_panels::<2, 6, true>(b),
            (_, false) => blocked_panels::<1, 12, false>(b),
            (_, true) => blocked_panels::<1, 12, true>(b),
        }
    }
}

/// Every pixel, `C` at a time (12 accumulators: one panel by 12 pixels or
/// two by 6), then the rest 4 and 1 at a time.
///
/// # Safety
/// As [`blocked`], with `P` panels.
#[target_feature(enable = "avx2,fma")]
unsafe fn blocked_panels<const P: usize, const C: usize, const ROWS: bool>(b: &Blocked<'_>) {
    let n = b.at.len();
    let mut p = 0;
    // SAFETY (all four): forwarded, pixels `p..p + C` exist.
    if C <= n {
        unsafe { blocked_of::<P, C, true, ROWS>(b, p) };
        p += C;
    }
    while p + C <= n {
        unsafe { blocked_of::<P, C, false, ROWS>(b, p) };
        p += C;
    }
    while p + 4 <= n {
        unsafe { blocked_of::<P, 4, false, ROWS>(b, p) };
        p += 4;
    }
    while p < n {
        unsafe { blocked_of::<P, 1, false, ROWS>(b, p) };
        p += 1;
    }
}

/// `P` panels' 8 channels of pixels `p..p + C`, one vector a pixel and
/// panel: the columns tile's loop, each broadcast pixel taken by every
/// panel, stored where each pixel goes. Per input channel, `P` loads of
/// weights and `C` broadcast pixels for `P * C` FMAs: two panels by 6
/// pixels load 8 values for 12 FMAs, one by 12 load 13. The FMAs run in the
/// row tile's order (bias, then input channels in turn), so the values are
/// the same bits as [`tile`]'s. `ROWS`: input row `k` starts at `b.rows[k]`
/// (a stem's taps in its phase scratch), not `k * b.ld`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn blocked_of<const P: usize, const C: usize, const FIRST: bool, const ROWS: bool>(
    b: &Blocked<'_>,
    p: usize,
) {
    // Plain loops, no closures: a closure does not take the function's
    // target features, and its intrinsics would be calls.
    let mut acc = [[_mm256_setzero_ps(); C]; P];
    for j in 0..P {
        // SAFETY: the biases are padded to whole panels.
        acc[j] = [unsafe { _mm256_loadu_ps(b.bias.wrapping_add(j * PANEL)) }; C];
    }
    let (mut x, mut w) = (b.x.wrapping_add(p), b.w);
    let next_panel = PANEL * b.k;
    let rows = b.rows.unwrap_or_default();
    for kk in 0..b.k {
        if ROWS {
            x = b.x.wrapping_add(rows[kk] + p);
        }
        let mut wv = [_mm256_setzero_ps(); P];
        for j in 0..P {
            // SAFETY: each panel holds PANEL weights per input channel.
            wv[j] = unsafe { _mm256_loadu_ps(w.wrapping_add(j * next_panel)) };
            if FIRST {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(j * next_panel + PREFETCH_AHEAD).cast());
            }
        }
        for c in 0..C {
            // SAFETY: pixels p..p + C are in every input row.
            let xc = _mm256_broadcast_ss(unsafe { &*x.wrapping_add(c) });
            for j in 0..P {
                acc[j][c] = _mm256_fmadd_ps(wv[j], xc, acc[j][c]);
            }
        }
        if !ROWS {
            x = x.wrapping_add(b.ld);
        }
        w = w.wrapping_add(PANEL);
    }
    let epilogue = |y: __m256, c: Option<(f32, f32)>| match c {
        Some((lo, hi)) => clamp(y, _mm256_set1_ps(lo), _mm256_set1_ps(hi)),
        None => y,
    };
    for c in 0..C {
        let at = b.at[p + c];
        if at != usize::MAX {
            for j in 0..P {
                let mut y = epilogue(acc[j][c], b.pre);
                if b.hard_swish {
                    y = hard_swish(y);
                }
                let y = epilogue(y, b.post);
                // SAFETY: the caller checked every position is inside a block.
                unsafe { _mm256_storeu_ps(b.out.wrapping_add(j * b.block + at), y) };
            }
        }
    }
}

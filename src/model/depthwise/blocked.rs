//! Depthwise convolution on small planes, 16 channels at a time (AVX-512).
//!
//! Why: on a 7x7 or 14x14 plane the per-plane work of the row loop (fill
//! the phase scratch, then one short, masked vector per output row and
//! tap) costs more than the taps themselves: MobileNetV2's 7x7 layers ran
//! at 5-6 GMAC/s and its stride-2 14x14 layer at 3, against 19 on 56x56
//! (`onnx-lambda profile --by-node`).
//!
//! How: a block of 16 channel planes is transposed, 16x16 in registers,
//! into a zero-padded scratch holding one vector of the 16 channels per
//! pixel (the channel-blocked layout ONNX Runtime computes in). Every
//! output pixel is then `K * K` full-width loads and FMAs with the 16
//! channels' weights held in registers, whatever the stride, 8 pixels at
//! once so the FMA chains overlap; the results are transposed back into
//! the 16 NCHW planes. Channels that do not fill a block take masked lanes.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use tract_onnx::prelude::*;

use super::{Depthwise, Geometry};
use crate::model::own::par_planes;

/// Channels per block: one AVX-512 vector.
const BLOCK: usize = 16;

/// Largest output plane (pixels) the blocked path takes. On MobileNetV2
/// (`profile --by-node`, AMD EPYC Zen 5, both paths on every layer) it won
/// on every layer with a 28x28 output or smaller, tied at 56x56 and lost
/// at 112x112 (0.19 -> 0.26 ms), where the two transposes cost more than
/// the row loop's per-plane work and the scratch outgrows L2.
const MAX_OUT_PIXELS: usize = 28 * 28;

/// Whether `g` goes through the blocked path on an AVX-512 CPU.
pub(super) fn pays(g: &Geometry) -> bool {
    g.out_hw.0 * g.out_hw.1 <= MAX_OUT_PIXELS
}

thread_local! {
    /// Per-thread padded input block, output block and [`Positions`],
    /// reused across blocks, layers and runs, and the geometry they were
    /// last set up for (consecutive layers often share one).
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            padded: Vec::new(),
            result: Vec::new(),
            positions: Positions::new(),
            geometry: None,
        })
    };
}

/// See [`SCRATCH`].
struct Scratch {
    padded: Vec<f32>,
    result: Vec<f32>,
    positions: Positions,
    geometry: Option<Geometry>,
}

/// A vector-aligned run of `len` floats inside `buf` (grown as needed):
/// unaligned 64-byte loads straddle two cache lines each.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len + BLOCK, 0.0);
    let skip = buf.as_ptr().align_offset(64).min(BLOCK);
    &mut buf[skip..skip + len]
}

/// Sizes of one layer's blocked scratch.
struct Layout {
    /// Padded input rows and columns the outputs read.
    rows: usize,
    cols: usize,
}

impl Layout {
    fn of(g: &Geometry) -> Layout {
        Layout {
            rows: (g.out_hw.0 - 1) * g.stride.0 + g.kernel,
            cols: (g.out_hw.1 - 1) * g.stride.1 + g.kernel,
        }
    }
}

/// Where each pixel goes in the padded block, computed once per layer and
/// thread: a division per pixel and block was measurable on 7x7 planes.
struct Positions {
    /// Per input pixel, its vector's offset in the padded block, or
    /// `usize::MAX` when no output reads it.
    inputs: Vec<usize>,
    /// Per output pixel, the offset of its top-left input.
    outputs: Vec<usize>,
}

impl Positions {
    const fn new() -> Positions {
        Positions {
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn fill(&mut self, g: &Geometry, layout: &Layout) {
        let (h, w) = g.in_hw;
        self.inputs.clear();
        for y in g.pad.0..g.pad.0 + h {
            for x in g.pad.1..g.pad.1 + w {
                self.inputs.push(if y < layout.rows && x < layout.cols {
                    (y * layout.cols + x) * BLOCK
                } else {
                    usize::MAX
                });
            }
        }
        self.outputs.clear();
        for y in 0..g.out_hw.0 {
            for x in 0..g.out_hw.1 {
                self.outputs
                    .push((y * g.stride.0 * layout.cols + x * g.stride.1) * BLOCK);
            }
        }
    }
}

/// Zeroes the padding of the padded block: every position no input pixel
/// lands on. The rest is written by every block.
fn zero_border(g: &Geometry, layout: &Layout, padded: &mut [f32]) {
    let rows = g.pad.0..g.pad.0 + g.in_hw.0;
    let cols = g.pad.1..g.pad.1 + g.in_hw.1;
    for (r, row) in padded.chunks_exact_mut(layout.cols * BLOCK).enumerate() {
        for (c, v) in row.chunks_exact_mut(BLOCK).enumerate() {
            if !rows.contains(&r) || !cols.contains(&c) {
                v.fill(0.0);
            }
        }
    }
}

/// [`Depthwise::compute`] through channel blocks.
///
/// # Safety
/// The CPU must have AVX-512F.
pub(super) unsafe fn compute(op: &Depthwise, input: &[f32], output: &mut [f32]) -> TractResult<()> {
    let g = op.geometry;
    let (in_plane, out_plane) = (g.in_hw.0 * g.in_hw.1, g.out_hw.0 * g.out_hw.1);
    let layout = Layout::of(&g);
    let cost = output.len() * g.kernel * g.kernel;
    par_planes(
        output,
        (out_plane, g.channels, BLOCK),
        cost,
        |planes, chunk| {
            SCRATCH.with_borrow_mut(|scratch| {
                let Scratch {
                    padded,
                    result,
                    positions,
                    geometry,
                } = scratch;
                let padded = aligned(padded, layout.rows * layout.cols * BLOCK);
                let result = aligned(result, out_plane * BLOCK);
                if *geometry != Some(g) {
                    // Once per layer shape and thread: every block writes the
                    // same positions, so the padding stays zero.
                    positions.fill(&g, &layout);
                    zero_border(&g, &layout, padded);
                    *geometry = Some(g);
                }
                let mut start = planes.start;
                while start < planes.end {
                    let block = start..(start + BLOCK).min(planes.end);
                    let ins = &input[block.start * in_plane..block.end * in_plane];
                    let out = &mut chunk[(start - planes.start) * out_plane..];
                    // SAFETY: the caller checked the CPU has AVX-512F.
                    unsafe {
                        transpose_in(op, &positions.inputs, ins, padded);
                        let outputs = &positions.outputs;
                        convolve(op, &layout, block.clone(), padded, outputs, result);
                        transpose_out(out_plane, block.len(), result, out);
                    }
                    start = block.end;
                }
            });
            Ok(())
        },
    )
}

/// The mask of the first `n` lanes (all for `n >= 16`).
fn mask(n: usize) -> __mmask16 {
    if n >= BLOCK {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// Transposes 16 vectors as a 16x16 matrix: lane `j` of row `i` becomes
/// lane `i` of row `j`. Three rounds of in-lane unpacks, then 128-bit lane
/// shuffles: 64 shuffles for 256 values.
#[target_feature(enable = "avx512f")]
fn transpose(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // In each 128-bit lane L, r[4g + j] gets rows 4g..4g+4 of column 4L + j.
    let pd = _mm512_castps_pd;
    for g in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
    }
    // Column 4L + j is lane L of r[j], r[4 + j], r[8 + j], r[12 + j]: a
    // 4x4 transpose of 128-bit lanes.
    for j in 0..4 {
        let (a, b, c, d) = (r[j], r[4 + j], r[8 + j], r[12 + j]);
        let p = _mm512_shuffle_f32x4::<0x44>(a, b);
        let q = _mm512_shuffle_f32x4::<0xEE>(a, b);
        let s = _mm512_shuffle_f32x4::<0x44>(c, d);
        let u = _mm512_shuffle_f32x4::<0xEE>(c, d);
        t[j] = _mm512_shuffle_f32x4::<0x88>(p, s);
        t[4 + j] = _mm512_shuffle_f32x4::<0xDD>(p, s);
        t[8 + j] = _mm512_shuffle_f32x4::<0x88>(q, u);
        t[12 + j] = _mm512_shuffle_f32x4::<0xDD>(q, u);
    }
    *r = t;
}

/// The block's input planes (`ins`, up to 16 of them, NCHW) into `padded`:
/// pixel `(y, x)` to position `(y + pad_top, x + pad_left)` as one vector
/// of the channels, clamped on the way when the operator clamps its input.
/// Pixels no output reads are skipped; missing channels are zero lanes.
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
                let v = _mm512_min_ps(_mm512_max_ps(*v, lo), hi);
                // SAFETY: Positions::fill put `at` inside the padded block.
                unsafe { _mm512_storeu_ps(base.add(at), v) };
            }
        }
    }
}

/// Every output pixel of the block from `padded`, into `result` (one
/// vector of the channels per pixel): bias, taps, clamp.
#[target_feature(enable = "avx512f")]
unsafe fn convolve(
    op: &Depthwise,
    layout: &Layout,
    planes: Range<usize>,
    padded: &[f32],
    offsets: &[usize],
    result: &mut [f32],
) {
    let g = &op.geometry;
    let taps = g.kernel * g.kernel;
    // Lane i holds channel (planes.start + i) % channels: a block may run
    // across the end of one image into the next.
    let mut w = [_mm512_setzero_ps(); 25];
    let mut lane = [0f32; BLOCK];
    for (t, wt) in w.iter_mut().enumerate().take(taps) {
        for (i, p) in planes.clone().enumerate() {
            lane[i] = op.weights[(p % g.channels) * taps + t];
        }
        *wt = _mm512_loadu_ps(lane.as_ptr());
    }
    lane = [0.0; BLOCK];
    for (i, p) in planes.clone().enumerate() {
        lane[i] = op.bias[p % g.channels];
    }
    let job = Job {
        w,
        bias: _mm512_loadu_ps(lane.as_ptr()),
        clamp: op
            .clamp
            .map(|(lo, hi)| (_mm512_set1_ps(lo), _mm512_set1_ps(hi))),
        taps: tap_offsets(g.kernel, layout.cols),
        padded: padded.as_ptr(),
        result: result.as_mut_ptr(),
    };
    let mut p = 0;
    // SAFETY (all arms): offsets[p..p + N] are output pixels; each reads
    // taps inside the padded block (Layout) and writes its own vector.
    while p + 8 <= offsets.len() {
        unsafe { job.pixels::<8>(&offsets[p..p + 8], p, taps) };
        p += 8;
    }
    while p + 4 <= offsets.len() {
        unsafe { job.pixels::<4>(&offsets[p..p + 4], p, taps) };
        p += 4;
    }
    while p < offsets.len() {
        unsafe { job.pixels::<1>(&offsets[p..p + 1], p, taps) };
        p += 1;
    }
}

/// Offset of each tap from an output pixel's top-left input, `ky * K + kx`
/// order (the weights' order).
fn tap_offsets(kernel: usize, cols: usize) -> [usize; 25] {
    let mut taps = [0; 25];
    for ky in 0..kernel {
        for kx in 0..kernel {
            taps[ky * kernel + kx] = (ky * cols + kx) * BLOCK;
        }
    }
    taps
}

/// What [`Job::pixels`] reads and writes for one block.
struct Job {
    w: [__m512; 25],
    bias: __m512,
    clamp: Option<(__m512, __m512)>,
    taps: [usize; 25],
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
            let a = match self.clamp {
                Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(*a, lo), hi),
                None => *a,
            };
            // SAFETY: see the function's contract.
            unsafe { _mm512_storeu_ps(self.result.add((first + j) * BLOCK), a) };
        }
    }
}

/// `result` (one vector of the channels per output pixel) back into the
/// block's `channels` NCHW output planes at the start of `out`.
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

#[cfg(test)]
mod tests {
    use super::super::tests::reference;
    use super::*;
    use crate::model::own::testing::noise;
    use crate::model::own::Simd;

    #[test]
    fn transpose_swaps_rows_and_columns() {
        if Simd::detect() != Simd::Avx512 {
            return;
        }
        let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut rows = [unsafe { _mm512_setzero_ps() }; 16];
        for (i, r) in rows.iter_mut().enumerate() {
            *r = unsafe { _mm512_loadu_ps(values[i * 16..].as_ptr()) };
        }
        unsafe { transpose(&mut rows) };
        let mut out = [0f32; 256];
        for (i, r) in rows.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out[i * 16..].as_mut_ptr(), *r) };
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[i * 16 + j], values[j * 16 + i], "({i}, {j})");
            }
        }
    }

    /// Every channel count around the block size, with images whose
    /// blocks run across the image boundary, strides, pads, both kernels
    /// and both clamps, against the definition.
    #[test]
    fn matches_the_definition_across_block_and_image_boundaries() {
        if Simd::detect() != Simd::Avx512 {
            return;
        }
        let mut cases = 0u32;
        for channels in [1, 5, 16, 17, 40] {
            for (h, w) in [(1, 1), (3, 3), (7, 7), (14, 14), (9, 13), (5, 17)] {
                for kernel in [3, 5] {
                    for (stride, pad) in [((1, 1), (1, 1)), ((2, 2), (0, 1)), ((1, 2), (2, 0))] {
                        let pad = (pad.0.min(kernel - 1), pad.1.min(kernel - 1));
                        if h + 2 * pad.0 < kernel || w + 2 * pad.1 < kernel {
                            continue;
                        }
                        let out_hw = (
                            (h + 2 * pad.0 - kernel) / stride.0 + 1,
                            (w + 2 * pad.1 - kernel) / stride.1 + 1,
                        );
                        let g = Geometry {
                            channels,
                            in_hw: (h, w),
                            out_hw,
                            kernel,
                            stride,
                            pad,
                        };
                        let taps = kernel * kernel;
                        let op = Depthwise::new(
                            g,
                            noise(channels * taps, cases + 3),
                            noise(channels, cases + 5),
                            cases.is_multiple_of(2).then_some((0.0, 0.6)),
                            true,
                        )
                        .with_input_clamp(cases.is_multiple_of(3).then_some((-0.3, 0.4)));
                        let n = 3;
                        let input = noise(n * channels * h * w, cases + 9);
                        let want = reference(&op, n, &input);
                        let mut got = vec![f32::NAN; want.len()];
                        unsafe { compute(&op, &input, &mut got) }.unwrap();
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            assert!((a - b).abs() <= 1e-5, "{g:?} at {i}: {a} vs {b}");
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100, "{cases}");
    }
}

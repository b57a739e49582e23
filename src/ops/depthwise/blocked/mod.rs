//! Depthwise convolution on small planes, one vector of channels at a
//! time: 16 with AVX-512 (`avx512.rs`), 8 with AVX2 (`avx2.rs`).
//!
//! Why: on a 7x7 or 14x14 plane the per-plane work of the row loop (fill
//! the phase scratch, then one short, masked vector per output row and
//! tap) costs more than the taps themselves: MobileNetV2's 7x7 layers ran
//! at 5-6 GMAC/s and its stride-2 14x14 layer at 3, against 19 on 56x56
//! (`onnx-lambda profile --by-node`).
//!
//! How: a block of channel planes (one vector's lanes) is transposed in
//! registers into a zero-padded scratch holding one vector of the block's
//! channels per pixel (the channel-blocked layout ONNX Runtime computes
//! in). Every output pixel is then `K * K` full-width loads and FMAs with
//! the channels' weights, whatever the stride, several pixels at once so
//! the FMA chains overlap; the results are transposed back into the NCHW
//! planes. Channels that do not fill a block take masked lanes.

use std::cell::RefCell;
use std::ops::Range;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::ensure;

use super::{Depthwise, Geometry, MAX_TAPS};
use crate::ops::par_planes;

#[path = "x86_64/avx2.rs"]
mod avx2;
#[path = "x86_64/avx512.rs"]
mod avx512;

pub(super) use avx2::Avx2;
pub(super) use avx512::Avx512;

/// One instruction set's half of the blocked path: the vector width and
/// the three vector loops. Everything else (layout, positions, scratch,
/// the split over threads) is shared.
pub(super) trait Lanes {
    /// Channels per block: the lanes of one vector.
    const BLOCK: usize;

    /// Largest output plane (pixels) this instruction set's blocked path
    /// takes; larger planes go through the row loop (measured per set, see
    /// each implementation).
    const MAX_OUT_PIXELS: usize;

    /// The block's input planes (`ins`, up to `BLOCK` of them, NCHW) into
    /// `padded`: pixel `i` to the vector at `positions[i]` (skipped when
    /// `usize::MAX`), clamped when the operator clamps its input; missing
    /// channels are zero lanes.
    ///
    /// # Safety
    /// The CPU has the instruction set; `positions` come from
    /// [`Positions::fill`] with this `BLOCK` for `padded`'s layout.
    unsafe fn transpose_in(op: &Depthwise, positions: &[usize], ins: &[f32], padded: &mut [f32]);

    /// Every output pixel of the block (`planes`, counted across images)
    /// from `padded` into `result` (one vector per pixel): bias, taps,
    /// clamp.
    ///
    /// # Safety
    /// As for `transpose_in`; `offsets` are [`Positions`]'s outputs.
    unsafe fn convolve(
        op: &Depthwise,
        taps: &[usize; MAX_TAPS],
        planes: Range<usize>,
        padded: &[f32],
        offsets: &[usize],
        result: &mut [f32],
    );

    /// `result` (one vector per output pixel) back into the block's
    /// `channels` NCHW output planes at the start of `out`.
    ///
    /// # Safety
    /// The CPU has the instruction set; `result` holds `plane` vectors.
    unsafe fn transpose_out(plane: usize, channels: usize, result: &[f32], out: &mut [f32]);
}

/// Whether `g` goes through the blocked path with `L`.
pub(super) fn pays<L: Lanes>(g: &Geometry) -> bool {
    g.out_hw.0 * g.out_hw.1 <= L::MAX_OUT_PIXELS
}

thread_local! {
    /// Per-thread padded input block, output block and [`Positions`],
    /// reused across blocks, layers and runs, and the geometry and block
    /// size they were last set up for (consecutive layers often share one).
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            padded: Vec::new(),
            result: Vec::new(),
            positions: Positions::new(),
            set_up: None,
        })
    };
}

/// See [`SCRATCH`].
struct Scratch {
    padded: Vec<f32>,
    result: Vec<f32>,
    positions: Positions,
    set_up: Option<(Geometry, usize)>,
}

/// A 64-byte aligned run of `len` floats inside `buf` (grown as needed):
/// unaligned vector loads straddle two cache lines.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const SLACK: usize = 16;
    buf.resize(len + SLACK, 0.0);
    let skip = buf.as_ptr().align_offset(64).min(SLACK);
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

    /// Offset of each tap from an output pixel's top-left input, in
    /// `ky * K + kx` order (the weights' order), for vectors of `block`.
    fn taps(&self, kernel: usize, block: usize) -> [usize; MAX_TAPS] {
        let mut taps = [0; MAX_TAPS];
        for ky in 0..kernel {
            for kx in 0..kernel {
                taps[ky * kernel + kx] = (ky * self.cols + kx) * block;
            }
        }
        taps
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

    fn fill(&mut self, g: &Geometry, layout: &Layout, block: usize) {
        let (h, w) = g.in_hw;
        self.inputs.clear();
        for y in g.pad.0..g.pad.0 + h {
            for x in g.pad.1..g.pad.1 + w {
                self.inputs.push(if y < layout.rows && x < layout.cols {
                    (y * layout.cols + x) * block
                } else {
                    usize::MAX
                });
            }
        }
        self.outputs.clear();
        for y in 0..g.out_hw.0 {
            for x in 0..g.out_hw.1 {
                self.outputs
                    .push((y * g.stride.0 * layout.cols + x * g.stride.1) * block);
            }
        }
    }
}

/// Zeroes the padding of the padded block: every position no input pixel
/// lands on. The rest is written by every block.
fn zero_border(g: &Geometry, layout: &Layout, block: usize, padded: &mut [f32]) {
    let rows = g.pad.0..g.pad.0 + g.in_hw.0;
    let cols = g.pad.1..g.pad.1 + g.in_hw.1;
    for (r, row) in padded.chunks_exact_mut(layout.cols * block).enumerate() {
        for (c, v) in row.chunks_exact_mut(block).enumerate() {
            if !rows.contains(&r) || !cols.contains(&c) {
                v.fill(0.0);
            }
        }
    }
}

/// Per lane of a block of `planes` (counted across images: a block may
/// run across the end of one image into the next), tap `t`'s weight, or
/// the bias for `t == K * K`; zero for lanes past the block.
fn lane_values(op: &Depthwise, planes: Range<usize>, t: usize) -> [f32; 16] {
    let channels = op.geometry.channels;
    let row = &op.by_tap[t * channels..(t + 1) * channels];
    let (first, n) = (planes.start % channels, planes.len());
    let mut lane = [0f32; 16];
    if first + n <= channels {
        let src = &row[first..first + n];
        // Whole blocks as fixed-length copies: a copy of variable length
        // is a call to `memcpy` per tap and block.
        match n {
            16 => lane.copy_from_slice(src),
            8 => lane[..8].copy_from_slice(src),
            _ => lane[..n].copy_from_slice(src),
        }
    } else {
        for (i, p) in planes.enumerate() {
            lane[i] = row[p % channels];
        }
    }
    lane
}

/// [`Depthwise::compute`] through channel blocks of `L::BLOCK`.
///
/// # Safety
/// The CPU must have `L`'s instruction set.
pub(super) unsafe fn compute<L: Lanes>(
    op: &Depthwise,
    input: &[f32],
    output: &mut [f32],
) -> TractResult<()> {
    let g = op.geometry;
    let (in_plane, out_plane) = (g.in_hw.0 * g.in_hw.1, g.out_hw.0 * g.out_hw.1);
    let cost = output.len() * g.kernel * g.kernel;
    par_planes(
        output,
        (out_plane, g.channels, L::BLOCK),
        cost,
        |planes, chunk| {
            let mut start = planes.start;
            while start < planes.end {
                let block = start..(start + L::BLOCK).min(planes.end);
                let ins = &input[block.start * in_plane..block.end * in_plane];
                let out = &mut chunk[(start - planes.start) * out_plane..];
                // SAFETY: the caller checked the CPU has L's instruction
                // set; `fill` gets the positions filled for this layout.
                unsafe {
                    block_into::<L>(op, block.clone(), out, |at, padded| {
                        L::transpose_in(op, at, ins, padded);
                        Ok(())
                    })?;
                }
                start = block.end;
            }
            Ok(())
        },
    )
}

/// Blocks the scratch holds, for a joined expansion that writes two
/// panels at once (`fused.rs`).
pub(super) const MAX_BLOCKS: usize = 2;

/// Up to [`MAX_BLOCKS`] blocks of planes (`planes`, counted across
/// images) with this thread's scratch: `fill` writes the padded input of
/// each, one vector of a block's channels per input pixel at the offsets it
/// is given (`usize::MAX`: a pixel no output reads), block after block in
/// the slice it gets; then the convolution writes the planes at the start
/// of `out`. The padding is zeroed once per geometry and thread; every
/// block writes the same positions.
///
/// # Safety
/// The CPU must have `L`'s instruction set.
pub(super) unsafe fn block_into<L: Lanes>(
    op: &Depthwise,
    planes: Range<usize>,
    out: &mut [f32],
    fill: impl FnOnce(&[usize], &mut [f32]) -> TractResult<()>,
) -> TractResult<()> {
    let g = op.geometry;
    let out_plane = g.out_hw.0 * g.out_hw.1;
    let blocks = planes.len().div_ceil(L::BLOCK);
    ensure!(blocks <= MAX_BLOCKS && out.len() >= planes.len() * out_plane);
    let layout = Layout::of(&g);
    // Each block on a whole number of cache lines.
    let stride = (layout.rows * layout.cols * L::BLOCK).next_multiple_of(16);
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch {
            padded,
            result,
            positions,
            set_up,
        } = scratch;
        let padded = aligned(padded, MAX_BLOCKS * stride);
        let result = aligned(result, out_plane * L::BLOCK);
        if *set_up != Some((g, L::BLOCK)) {
            positions.fill(&g, &layout, L::BLOCK);
            for block in padded.chunks_exact_mut(stride) {
                zero_border(&g, &layout, L::BLOCK, block);
            }
            *set_up = Some((g, L::BLOCK));
        }
        fill(&positions.inputs, &mut padded[..blocks * stride])?;
        let taps = layout.taps(g.kernel, L::BLOCK);
        for (b, padded) in padded.chunks_exact(stride).take(blocks).enumerate() {
            let first = planes.start + b * L::BLOCK;
            let block = first..planes.end.min(first + L::BLOCK);
            let out = &mut out[b * L::BLOCK * out_plane..];
            // SAFETY: forwarded; the offsets were filled for this layout.
            unsafe {
                L::convolve(op, &taps, block.clone(), padded, &positions.outputs, result);
                L::transpose_out(out_plane, block.len(), result, out);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::depthwise::tests::reference;
    use crate::ops::testing::{noise, VECTOR_LEVELS};
    use crate::ops::Simd;

    /// Every channel count around the block size, with images whose
    /// blocks run across the image boundary, strides, pads, both kernels
    /// both clamps and a `HardSwish`, against the definition.
    #[test]
    fn matches_the_definition_across_block_and_image_boundaries() {
        let levels = crate::ops::testing::levels("blocked depthwise", VECTOR_LEVELS);
        let has = |simd| levels.iter().any(|l| l.simd() == simd);
        if has(Simd::Avx512) {
            matches_the_definition::<Avx512>();
        }
        if has(Simd::Avx2) {
            matches_the_definition::<Avx2>();
        }
    }

    fn matches_the_definition<L: Lanes>() {
        let mut cases = 0u32;
        for channels in [1, 5, 8, 9, 16, 17, 40] {
            for (h, w) in [(1, 1), (3, 3), (7, 7), (14, 14), (9, 13), (5, 17)] {
                for kernel in [3, 5, 7] {
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
                        .with_input_clamp(cases.is_multiple_of(3).then_some((-0.3, 0.4)))
                        .with_hard_swish(cases % 4 == 1);
                        let n = 3;
                        let input = noise(n * channels * h * w, cases + 9);
                        let want = reference(&op, n, &input);
                        let mut got = vec![f32::NAN; want.len()];
                        unsafe { compute::<L>(&op, &input, &mut got) }.unwrap();
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            let block = L::BLOCK;
                            assert!((a - b).abs() <= 1e-5, "{block}: {g:?} at {i}: {a} vs {b}");
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100, "{cases}");
    }
}

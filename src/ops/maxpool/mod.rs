//! Our own max pooling, for f32 NCHW planes (ResNet's and DenseNet's 3x3
//! stride-2 stem pool, GoogLeNet's and SqueezeNet's ceil-mode pools,
//! GoogLeNet's 3x3 stride-1 branch pools).
//!
//! Why: tract's `OptMaxPool` visits every window through its generic patch
//! iterator, one scalar comparison at a time: 30% of GoogLeNet's inference
//! and 22% of SqueezeNet's on AMD EPYC Zen 4 (`onnx-lambda profile`,
//! docs/performance.md "The model zoo") for no arithmetic at all.
//!
//! How: separably, `2k` comparisons an output instead of `k²`. Padding
//! never enters (ONNX pads max pooling with minus infinity), and ceil mode
//! is only a longer output, whose last windows see fewer taps. Stride-1
//! planes, and strided planes whose output rows are shorter than a
//! vector, are padded, stacked and folded across and then down as long
//! contiguous runs ([`pool_stacked`]). Other strided planes go one output
//! row at a time: the window's input rows folded down in one pass, then
//! the row reduced across, at stride 2 in registers ([`across_stride2`]).
//! The same body is compiled for each instruction set
//! (`#[target_feature]`), its folds written with that set's vectors.
//!
//! [`install`] takes every f32 NCHW `MaxPool` with a square kernel, no
//! dilation and no index output, on a fixed shape; anything else stays with
//! tract.

use std::cell::RefCell;

use tract_onnx::prelude::*;
use tract_onnx::tract_core;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool as TractMaxPool;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::depthwise::{conv_eval, conv_output_facts, Geometry};
use crate::ops::{replace_with, Level, Simd};

mod bands;
pub(crate) use bands::{band_rows, join_pools, Bands};

/// Max pooling of square windows, on f32 NCHW (or CHW) tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MaxPool {
    geometry: Geometry,
    /// Whether the input has a batch axis (NCHW) or not (CHW).
    batched: bool,
}

impl MaxPool {
    pub(crate) fn new(geometry: Geometry, batched: bool) -> MaxPool {
        MaxPool { geometry, batched }
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn batched(&self) -> bool {
        self.batched
    }

    /// Pools every plane of `input` into `output`, at the best level this
    /// CPU has.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        let g = self.geometry;
        let (in_plane, out_plane) = (g.in_hw.0 * g.in_hw.1, g.out_hw.0 * g.out_hw.1);
        ensure!(in_plane > 0 && out_plane > 0, "empty max-pool plane");
        ensure!(input.len() / in_plane == output.len() / out_plane);
        let pool = planes(level);
        let cost = output.len() * 2 * g.kernel;
        tract_core::tract_linalg::multithread::par_chunks_mut(
            output,
            out_plane,
            cost,
            |first, chunk| {
                let planes = chunk.len() / out_plane;
                let input = &input[first * in_plane..][..planes * in_plane];
                SCRATCH.with_borrow_mut(|scratch| {
                    // SAFETY: `kernel` chose a function for a `Level` this CPU has.
                    unsafe { pool(input, chunk, &g, scratch, level) };
                });
                Ok(())
            },
        )
    }
}

/// Whole planes' pooling, for a level; the last argument is scratch.
type PlaneFn = unsafe fn(&[f32], &mut [f32], &Geometry, &mut Vec<f32>, Level);

thread_local! {
    /// A batch of padded planes and their maxima across (stacked), or one
    /// padded row and its stride phases (by rows).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The pooling of whole planes compiled for `level`: see [`pool_planes`].
fn planes(level: Level) -> PlaneFn {
    match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => pool_plane_avx512,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => pool_plane_avx2,
        // NEON is the aarch64 target's baseline: the portable loop
        // compiles to it (`fmax` on 4 lanes), and `ld2` splits the rows.
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => pool_plane_neon,
        _ => pool_plane_portable,
    }
}

unsafe fn pool_plane_portable(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    level: Level,
) {
    pool_planes(input, output, g, scratch, level);
}

#[cfg(target_arch = "aarch64")]
unsafe fn pool_plane_neon(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    level: Level,
) {
    pool_planes(input, output, g, scratch, level);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pool_plane_avx2(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    level: Level,
) {
    pool_planes(input, output, g, scratch, level);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pool_plane_avx512(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    level: Level,
) {
    pool_planes(input, output, g, scratch, level);
}

/// `max(o, v)` as a select stored unconditionally: it compiles to the
/// vector `max` (NaN inputs lose, as in the definition, since outputs
/// never hold NaN). A conditional store stayed a scalar branch.
#[inline(always)]
fn max_into(o: &mut f32, v: f32) {
    *o = if v > *o { v } else { *o };
}

/// Folds the contiguous `src` into `dst` by maximum, with the level's
/// vectors (a scalar loop for runs shorter than one). Left to the compiler, the folds stayed
/// scalar (`vmaxss`, perf): its own vectorised loop takes 64 lanes a trip
/// with AVX-512, longer than most rows here (7 to 112), and chunks of 8
/// written out were not vectorised once inlined. With these, GoogLeNet's
/// 13 pools went 4.46 -> 1.75 ms, SqueezeNet's 3 1.18 -> 0.58 (`profile
/// --by-node --threads 1`, per-node minima of 3 alternating runs, AMD
/// EPYC Zen 4). A run of a vector or more whose length is not a whole
/// number of vectors ends with one vector that overlaps the one before,
/// from the values as they were before the loop (the same maxima where
/// they overlap), not with a scalar tail of up to 7 values: SqueezeNet's
/// and GoogLeNet's strided pools, rows of 27 to 112 values, 0.43 -> 0.38
/// and 1.81 -> 1.64 ms (`profile --by-node --threads 1`, minima of 6
/// alternating runs, AMD EPYC Zen 4 with AVX-512 hidden).
#[inline(always)]
fn fold_max(dst: &mut [f32], src: &[f32], level: Level) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    // SAFETY: each kernel runs only at a level this CPU has.
    let done = match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { fold_max_avx2(dst, src) },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => unsafe { fold_max_neon(dst, src) },
        _ => 0,
    };
    for (o, &v) in dst[done..].iter_mut().zip(&src[done..]) {
        max_into(o, v);
    }
}

/// The whole vectors of [`fold_max`]; how many values it folded.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fold_max_avx2(dst: &mut [f32], src: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let len = dst.len().min(src.len());
    if len < 8 {
        return 0;
    }
    // `vmaxps` gives its second operand where the first is NaN: NaN
    // inputs lose. The last vector, which ends at `len` and may overlap
    // the one before (see `fold_max`), is read before the loop writes and
    // stored after it: read after, it waited on the stores it overlaps
    // (store-to-load forwarding fails on a partial overlap), and the pools
    // were slower than with the scalar tail.
    let last = len - 8;
    // SAFETY: every vector below starts at `i <= last`, so ends inside both.
    unsafe {
        let tail = _mm256_max_ps(
            _mm256_loadu_ps(src.as_ptr().add(last)),
            _mm256_loadu_ps(dst.as_ptr().add(last)),
        );
        for i in (0..last).step_by(8) {
            let d = _mm256_loadu_ps(dst.as_ptr().add(i));
            let s = _mm256_loadu_ps(src.as_ptr().add(i));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_max_ps(s, d));
        }
        _mm256_storeu_ps(dst.as_mut_ptr().add(last), tail);
    }
    len
}

/// The whole vectors of [`fold_max`]; how many values it folded.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn fold_max_neon(dst: &mut [f32], src: &[f32]) -> usize {
    use std::arch::aarch64::*;
    let len = dst.len().min(src.len());
    if len < 4 {
        return 0;
    }
    // `fmaxnm` gives the other operand where one is NaN. The last vector
    // is read first and stored last, as in `fold_max_avx2`.
    let last = len - 4;
    // SAFETY: every vector below starts at `i <= last`, so ends inside both.
    unsafe {
        let tail = vmaxnmq_f32(
            vld1q_f32(dst.as_ptr().add(last)),
            vld1q_f32(src.as_ptr().add(last)),
        );
        for i in (0..last).step_by(4) {
            let d = vld1q_f32(dst.as_ptr().add(i));
            let s = vld1q_f32(src.as_ptr().add(i));
            vst1q_f32(dst.as_mut_ptr().add(i), vmaxnmq_f32(d, s));
        }
        vst1q_f32(dst.as_mut_ptr().add(last), tail);
    }
    len
}

/// The padded plane's sides: rows and columns the output's windows reach
/// (ceil mode's overhang included), the input at `(pad.0, pad.1)`.
fn padded_hw(g: &Geometry) -> (usize, usize) {
    (
        (g.out_hw.0 - 1) * g.stride.0 + g.kernel,
        (g.out_hw.1 - 1) * g.stride.1 + g.kernel,
    )
}

/// Every output row through contiguous folds only, padding as minus
/// infinity (ONNX pads max pooling with it): `2k` comparisons a value,
/// not `k²`, 8 lanes at a time whatever the stride. At stride 1 a plane
/// at a time, flattened (by rows, GoogLeNet's 14x14 branch pools took
/// 0.16 ms against 0.10); strided planes with output rows shorter than a
/// vector stacked ([`pool_stacked`]), the others row by row.
#[inline(always)]
fn pool_planes(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    level: Level,
) {
    if g.stride == (1, 1) {
        return pool_stacked(input, output, g, scratch, (1, level));
    }
    if g.out_hw.1 <= MAX_STACKED_WIDTH {
        let (hp, wp) = padded_hw(g);
        let batch = (STACKED_VALUES / (hp * wp)).max(1);
        return pool_stacked(input, output, g, scratch, (batch, level));
    }
    let (in_plane, out_plane) = (g.in_hw.0 * g.in_hw.1, g.out_hw.0 * g.out_hw.1);
    for (plane, out) in input
        .chunks_exact(in_plane)
        .zip(output.chunks_exact_mut(out_plane))
    {
        pool_plane_rows(plane, out, g, scratch, level);
    }
}

/// Widest strided output row that [`pool_stacked`] takes: it computes
/// every position at stride 1 and keeps every `stride`-th, which costs
/// less than the rows' per-row overhead only on rows shorter than one
/// vector. At 16, GoogLeNet's 480 planes of 28x28 (14 outputs a row)
/// took 0.20 ms stacked against 0.17 by rows, SqueezeNet's 256 of 27x27
/// 0.13 against 0.12 (`profile --by-node --threads 1`, per-node minima of
/// 3-5 alternating runs, AMD EPYC Zen 4 with AVX-512 hidden).
const MAX_STACKED_WIDTH: usize = 7;

/// Values of one batch of padded planes: two such buffers (the planes
/// and their maxima across, 24 KiB) stay in L1 with the rows read and
/// written.
const STACKED_VALUES: usize = 3 << 10;

/// `batch` planes at a time, padded (minus infinity) and stacked one
/// above the other into one tall plane; the maxima across and down are
/// `k` folds each of the whole stack, flattened: every position is
/// computed at stride 1 and the output keeps every `stride`-th. A window
/// that crosses a row's or a plane's end only lands where no output
/// reads, and the long runs keep small planes (7x7, 14x14) from being all
/// loop overhead. Strided planes with short rows go in batches: by rows,
/// GoogLeNet's 832 planes of 14x14 (3x3, stride 2) were 7 output rows of
/// 7 each. Stride-1 planes go one at a time: stacked, they ran a fifth
/// slower.
#[inline(always)]
fn pool_stacked(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    (batch, level): (usize, Level),
) {
    let ((h, w), (ho, wo), k, (sy, sx), (py, px)) = (g.in_hw, g.out_hw, g.kernel, g.stride, g.pad);
    let (hp, wp) = padded_hw(g);
    let (in_plane, out_plane, area) = (h * w, ho * wo, hp * wp);
    let (n, rows) = (w.min(wp - px), h.min(hp - py));
    for (ins, outs) in input
        .chunks(batch * in_plane)
        .zip(output.chunks_mut(batch * out_plane))
    {
        let planes = outs.len() / out_plane;
        let len = planes * area;
        if scratch.len() < 2 * len {
            scratch.resize(2 * len, 0.0);
        }
        let (padded, across) = scratch[..2 * len].split_at_mut(len);
        padded.fill(f32::NEG_INFINITY);
        for (p, plane) in ins.chunks_exact(in_plane).enumerate() {
            for (y, row) in plane.chunks_exact(w).take(rows).enumerate() {
                padded[p * area + (y + py) * wp + px..][..n].copy_from_slice(&row[..n]);
            }
        }
        // One past the last value an output reads, down and across: the
        // reads end at the stack's last value.
        let down = ((planes - 1) * hp + (ho - 1) * sy) * wp + (wo - 1) * sx + 1;
        let wide = down + (k - 1) * wp;
        across[..wide].copy_from_slice(&padded[..wide]);
        for kx in 1..k {
            fold_max(&mut across[..wide], &padded[kx..kx + wide], level);
        }
        // Down: into `padded`, no longer needed.
        padded[..down].copy_from_slice(&across[..down]);
        for ky in 1..k {
            fold_max(&mut padded[..down], &across[ky * wp..ky * wp + down], level);
        }
        for (p, out) in outs.chunks_exact_mut(out_plane).enumerate() {
            for (y, row) in out.chunks_exact_mut(wo).enumerate() {
                let from = &padded[(p * hp + y * sy) * wp..];
                if sx == 1 {
                    row.copy_from_slice(&from[..wo]);
                } else {
                    for (x, o) in row.iter_mut().enumerate() {
                        *o = from[x * sx];
                    }
                }
            }
        }
    }
}

/// Any other stride, one output row at a time: its window's input rows
/// folded down into a padded row in one pass ([`max_of_shifts`]). At
/// stride 2 the row is reduced across in registers ([`across_stride2`]);
/// other strides split it by stride (phase `p` holds padded columns `p,
/// p + s, ...`), so each kernel column is one contiguous fold.
#[inline(always)]
fn pool_plane_rows(
    input: &[f32],
    output: &mut [f32],
    g: &Geometry,
    scratch: &mut Vec<f32>,
    level: Level,
) {
    let ((h, w), (ho, wo), k, (sy, sx), (py, px)) = (g.in_hw, g.out_hw, g.kernel, g.stride, g.pad);
    let wp = padded_hw(g).1;
    let phase = wp.div_ceil(sx);
    scratch.clear();
    // One value past the padded row: `across_stride2` reads it and never
    // keeps it.
    scratch.resize(wp + 1 + sx * phase, f32::NEG_INFINITY);
    let (row, phases) = scratch.split_at_mut(wp + 1);
    let n = w.min(wp - px);
    for (y, out) in output.chunks_exact_mut(wo).enumerate().take(ho) {
        // The input rows of this window: `y * sy + ky - py` for ky < k.
        let first = (y * sy).saturating_sub(py);
        let end = (y * sy + k).saturating_sub(py).min(h);
        let across = &mut row[px..px + n];
        if first < end {
            max_of_shifts(across, &input[first * w..], (w, end - first), level);
        } else {
            across.fill(f32::NEG_INFINITY);
        }
        if sx == 2 {
            across_stride2(row, out, k, level);
            continue;
        }
        for (i, &v) in row[..wp].iter().enumerate() {
            phases[(i % sx) * phase + i / sx] = v;
        }
        out.copy_from_slice(&phases[..wo]);
        for kx in 1..k {
            fold_max(out, &phases[(kx % sx) * phase + kx / sx..][..wo], level);
        }
    }
}

/// `dst[i] = max(src[i], src[i + step], ..., src[i + (count - 1) *
/// step])`, in that order: a window's input rows folded down (`step` a
/// row) or a stride-1 row reduced across (`step` 1), in one pass, the
/// maxima in registers. A copy and then `count - 1` folds in place
/// stored every value `count` times.
#[inline(always)]
fn max_of_shifts(dst: &mut [f32], src: &[f32], (step, count): (usize, usize), level: Level) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    assert!(
        count > 0 && src.len() >= (count - 1) * step + n,
        "shifted rows"
    );
    // SAFETY: each kernel runs only at a level this CPU has.
    let done = match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { max_of_shifts_avx2(dst, src, step, count) },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => unsafe { max_of_shifts_neon(dst, src, step, count) },
        _ => 0,
    };
    for (i, o) in dst.iter_mut().enumerate().skip(done) {
        *o = src[i];
        for t in 1..count {
            max_into(o, src[i + t * step]);
        }
    }
}

/// The vectors of [`max_of_shifts`], the last one overlapping the one
/// before (computed from `src` alone, so it writes the same values
/// twice); how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_of_shifts_avx2(dst: &mut [f32], src: &[f32], step: usize, count: usize) -> usize {
    use std::arch::x86_64::*;
    let n = dst.len();
    if n < 8 {
        return 0;
    }
    let mut at = |i: usize| {
        let p = src[i..(count - 1) * step + i + 8].as_ptr();
        // SAFETY: the slice above holds every value read, 8 from
        // `p + t * step` for each `t < count`.
        unsafe {
            let mut acc = _mm256_loadu_ps(p);
            for t in 1..count {
                acc = _mm256_max_ps(_mm256_loadu_ps(p.add(t * step)), acc);
            }
            _mm256_storeu_ps(dst[i..i + 8].as_mut_ptr(), acc);
        }
    };
    for i in (0..n - 8).step_by(8) {
        at(i);
    }
    at(n - 8);
    n
}

/// [`max_of_shifts_avx2`] with NEON, 4 values a vector.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn max_of_shifts_neon(dst: &mut [f32], src: &[f32], step: usize, count: usize) -> usize {
    use std::arch::aarch64::*;
    let n = dst.len();
    if n < 4 {
        return 0;
    }
    let mut at = |i: usize| {
        let p = src[i..(count - 1) * step + i + 4].as_ptr();
        // SAFETY: the slice above holds every value read, 4 from
        // `p + t * step` for each `t < count`.
        unsafe {
            let mut acc = vld1q_f32(p);
            for t in 1..count {
                acc = vmaxnmq_f32(acc, vld1q_f32(p.add(t * step)));
            }
            vst1q_f32(dst[i..i + 4].as_mut_ptr(), acc);
        }
    };
    for i in (0..n - 4).step_by(4) {
        at(i);
    }
    at(n - 4);
    n
}

/// `out[j] = max(row[2j], ..., row[2j + k - 1])`: a stride-2 row reduced
/// across, with `row` one value longer than the windows reach. In
/// registers, 8 outputs (4 with NEON) from two vectors of the row per
/// pair of kernel columns, split into even and odd columns. With the
/// row first split into two phase rows in memory, then a copy and a fold
/// per further kernel column (every fold a store), SqueezeNet's 55x55
/// pool took 0.25 ms (ONNX Runtime's 0.05-0.07), its stores the hottest
/// instructions (perf); this way, 0.14 (docs/operators.md).
#[inline(always)]
fn across_stride2(row: &[f32], out: &mut [f32], k: usize, level: Level) {
    assert!(k > 0 && row.len() + 1 >= 2 * out.len() + k, "stride-2 row");
    // SAFETY: each kernel runs only at a level this CPU has.
    let done = match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { across_stride2_avx2(row, out, k) },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => unsafe { across_stride2_neon(row, out, k) },
        _ => 0,
    };
    for (j, o) in out.iter_mut().enumerate().skip(done) {
        *o = row[2 * j];
        for &v in &row[2 * j + 1..2 * j + k] {
            max_into(o, v);
        }
    }
}

/// The vectors of [`across_stride2`], 8 outputs each, the last one
/// overlapping the one before (outputs are computed from `row`, so the
/// overlap writes the same values twice); how many outputs it wrote.
/// `vshufps` splits 16 columns into even and odd ones in the same
/// interleaved lane order, so the maxima are taken in that order and
/// put back in place once, with one `vpermpd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn across_stride2_avx2(row: &[f32], out: &mut [f32], k: usize) -> usize {
    use std::arch::x86_64::*;
    let wo = out.len();
    if wo < 8 {
        return 0;
    }
    let pairs = k.div_ceil(2);
    let mut at = |j: usize| {
        let p = row[2 * j..2 * j + 2 * pairs + 14].as_ptr();
        // SAFETY: the slice above holds every value read: pair `m`
        // reads 16 values from `p + 2m`.
        unsafe {
            let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            let mut acc = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            if k > 1 {
                acc = _mm256_max_ps(_mm256_shuffle_ps::<0b11_01_11_01>(a, b), acc);
            }
            for m in 1..pairs {
                let (a, b) = (
                    _mm256_loadu_ps(p.add(2 * m)),
                    _mm256_loadu_ps(p.add(2 * m + 8)),
                );
                acc = _mm256_max_ps(_mm256_shuffle_ps::<0b10_00_10_00>(a, b), acc);
                if 2 * m + 1 < k {
                    acc = _mm256_max_ps(_mm256_shuffle_ps::<0b11_01_11_01>(a, b), acc);
                }
            }
            let acc = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                acc,
            )));
            _mm256_storeu_ps(out[j..j + 8].as_mut_ptr(), acc);
        }
    };
    for j in (0..wo - 8).step_by(8) {
        at(j);
    }
    at(wo - 8);
    wo
}

/// The vectors of [`across_stride2`] with NEON: `ld2` splits even and
/// odd columns as it loads, 4 outputs a vector, the last overlapping.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn across_stride2_neon(row: &[f32], out: &mut [f32], k: usize) -> usize {
    use std::arch::aarch64::*;
    let wo = out.len();
    if wo < 4 {
        return 0;
    }
    let pairs = k.div_ceil(2);
    let mut at = |j: usize| {
        let p = row[2 * j..2 * j + 2 * pairs + 6].as_ptr();
        // SAFETY: the slice above holds every value read: pair `m`
        // reads 8 values from `p + 2m`.
        unsafe {
            let v = vld2q_f32(p);
            let mut acc = v.0;
            if k > 1 {
                acc = vmaxnmq_f32(acc, v.1);
            }
            for m in 1..pairs {
                let v = vld2q_f32(p.add(2 * m));
                acc = vmaxnmq_f32(acc, v.0);
                if 2 * m + 1 < k {
                    acc = vmaxnmq_f32(acc, v.1);
                }
            }
            vst1q_f32(out[j..j + 4].as_mut_ptr(), acc);
        }
    };
    for j in (0..wo - 4).step_by(4) {
        at(j);
    }
    at(wo - 4);
    wo
}

impl Op for MaxPool {
    fn name(&self) -> StaticName {
        "MaxPool(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geometry)])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geometry;
        conv_eval(&inputs[0], g, g.channels, self.batched, |src, dst| {
            self.compute(src, dst)
        })
    }
}

impl TypedOp for MaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        conv_output_facts(inputs, &self.geometry, self.geometry.channels, self.batched)
    }

    as_op!();
}

/// The geometry of a tract max pool this operator runs, or `None`.
fn describe(
    model: &TypedModel,
    node: &TypedNode,
    pool: &TractMaxPool,
) -> TractResult<Option<Geometry>> {
    let spec = &pool.pool_spec;
    let input = model.outlet_fact(node.inputs[0])?;
    if pool.with_index_outputs.is_some()
        || input.datum_type != f32::datum_type()
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
        || spec.kernel_shape[0] != spec.kernel_shape[1]
        || spec.dilations().iter().any(|&d| d != 1)
    {
        return Ok(None);
    }
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    let rank = if spec.data_format == DataFormat::NCHW {
        4
    } else {
        3
    };
    if shape.len() != rank {
        return Ok(None);
    }
    let hw = &shape[rank - 2..];
    let k = spec.kernel_shape[0];
    let padding = spec.computed_padding(hw);
    let strides = spec.strides();
    let g = Geometry {
        channels: shape[rank - 3],
        in_hw: (hw[0], hw[1]),
        out_hw: (padding[0].convoluted, padding[1].convoluted),
        kernel: k,
        stride: (strides[0], strides[1]),
        pad: (padding[0].pad_before, padding[1].pad_before),
    };
    let usable = g.channels > 0
        && g.out_hw.0 > 0
        && g.out_hw.1 > 0
        && g.pad.0 < k
        && g.pad.1 < k
        && g.stride.0 > 0
        && g.stride.1 > 0;
    Ok(usable.then_some(g))
}

/// Replaces every max pool this module handles (see the module docs) in a
/// decluttered graph. Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<TractMaxPool>() else {
            continue;
        };
        let Some(geometry) = describe(model, node, pool)? else {
            continue;
        };
        let batched = pool.pool_spec.data_format == DataFormat::NCHW;
        let op = MaxPool::new(geometry, batched);
        let (input, name) = (node.inputs[0], node.name.clone());
        replace_with(model, "onnx-lambda max pool", &[input], (&name, op), id)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{levels, max_pool, noise, ALL_LEVELS};

    /// Every run length from 0 to 40 (whole vectors, and a last vector
    /// overlapping the one before at 8 and 4 lanes), at every level: the
    /// element-wise maximum, `dst` beyond the run untouched.
    #[test]
    fn folds_runs_of_any_length() {
        for level in levels("maxpool fold", ALL_LEVELS) {
            for len in 0..=40 {
                let src = noise(len, 5);
                let mut dst = noise(len + 3, 6);
                let want: Vec<f32> = dst
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if i < len { d.max(src[i]) } else { d })
                    .collect();
                fold_max(&mut dst[..len], &src, level);
                assert_eq!(dst, want, "{level:?}, {len} values");
            }
        }
    }

    /// Runs of 0 to 30 values, 1 to 4 shifts of 1 or of a row, at every
    /// level: the definition, and nothing written past the run.
    #[test]
    fn folds_shifted_runs_of_any_length() {
        for level in levels("maxpool shifts", ALL_LEVELS) {
            for (step, count) in [(1, 1), (1, 3), (31, 2), (31, 4)] {
                for n in 0..=30 {
                    let src = noise((count - 1) * step + n, (n * 7 + count) as u32);
                    let want: Vec<f32> = (0..n)
                        .map(|i| {
                            (0..count)
                                .map(|t| src[i + t * step])
                                .fold(f32::MIN, f32::max)
                        })
                        .chain([7.0; 3])
                        .collect();
                    let mut got = vec![7.0; n + 3];
                    max_of_shifts(&mut got[..n], &src, (step, count), level);
                    assert_eq!(got, want, "{level:?}, {n} values, {count} shifts of {step}");
                }
            }
        }
    }

    /// Every output width from 0 to 30 and kernel from 1 to 5, at every
    /// level: the definition, and nothing written past the row.
    #[test]
    fn reduces_stride_2_rows_of_any_width() {
        for level in levels("maxpool across", ALL_LEVELS) {
            for k in 1..=5 {
                for wo in 0..=30 {
                    let row = noise(2 * wo + k + 4, (k * 31 + wo) as u32);
                    let want: Vec<f32> = (0..wo)
                        .map(|j| {
                            row[2 * j..2 * j + k]
                                .iter()
                                .copied()
                                .fold(f32::MIN, f32::max)
                        })
                        .chain([7.0; 3])
                        .collect();
                    let mut got = vec![7.0; wo + 3];
                    across_stride2(&row[..2 * wo + k - 1], &mut got[..wo], k, level);
                    assert_eq!(got, want, "{level:?}, k {k}, {wo} outputs");
                }
            }
        }
    }

    /// Odd sizes, kernels 2, 3 and 5, strides 1 to 3, padding before
    /// and (as ceil mode and asymmetric pads give) more or less after.
    #[test]
    fn matches_the_definition_on_odd_shapes_strides_pads_and_ceil_mode() {
        let mut cases = 0;
        for (h, w) in [(1, 1), (5, 7), (14, 14), (28, 31), (56, 57)] {
            for k in [2, 3, 5] {
                for stride in [(1, 1), (2, 2), (3, 2), (1, 3)] {
                    for (before, after) in [
                        ((0, 0), (0, 0)),
                        ((1, 1), (1, 1)),
                        ((0, 1), (1, 2)),
                        ((1, 0), (0, 1)),
                    ] {
                        let (before, after) = (
                            (before.0.min(k - 1), before.1.min(k - 1)),
                            (after.0.min(k - 1), after.1.min(k - 1)),
                        );
                        let (ph, pw) = (h + before.0 + after.0, w + before.1 + after.1);
                        if ph < k || pw < k {
                            continue;
                        }
                        let g = Geometry {
                            channels: 3,
                            in_hw: (h, w),
                            out_hw: ((ph - k) / stride.0 + 1, (pw - k) / stride.1 + 1),
                            kernel: k,
                            stride,
                            pad: before,
                        };
                        let planes = 2 * g.channels;
                        let input = noise(planes * h * w, cases + 3);
                        let want = max_pool(&g, planes, &input);
                        let op = MaxPool::new(g, true);
                        for level in levels("maxpool", ALL_LEVELS) {
                            let mut got = vec![f32::NAN; want.len()];
                            op.compute_with(&input, &mut got, level).unwrap();
                            assert_eq!(got, want, "{g:?} {level:?}");
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100, "{cases}");
    }
}

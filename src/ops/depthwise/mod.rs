//! Our own depthwise convolution, put in place of tract's.
//!
//! Why: on MobileNetV2 the 17 depthwise 3x3 layers are about 7% of the
//! arithmetic and, with tract's `DepthWiseConv`, half of the inference time
//! (`onnx-lambda profile`, docs/operators.md): tract vectorises only stride 1 and runs a
//! scalar loop elsewhere. This operator handles every stride the same way,
//! with the ReLU6 that follows each layer fused in, so the activation is
//! written once instead of three times.
//!
//! How: per channel plane, the input rows are copied into a zero-padded
//! scratch, split into `stride` phases (phase `p` holds padded columns
//! `p, p + s, p + 2s, ...`), so every kernel tap reads a contiguous run of
//! the scratch whatever the stride. The row loop then is loads and FMAs
//! only: with AVX-512, four output rows at once sharing their input rows'
//! loads ([`ROWS`]), 16 outputs at a time; with AVX2+FMA, one row and two
//! vectors of 8 at a time for 3x3 (AVX2's 16 registers hold no more);
//! with NEON, four rows and two vectors of 4 (`aarch64/neon.rs`); a
//! portable loop elsewhere (which the compiler vectorises for SSE).
//! Outputs of 28x28 or smaller, where that loop is mostly per-plane
//! overhead, go 16 (AVX-512) or 8 (AVX2) channels at a time instead
//! ([`blocked`]; not yet for NEON).
//!
//! [`install`] swaps the operator in on the decluttered graph, before
//! tract's optimiser runs, for every f32 NCHW convolution whose groups equal
//! its channels, with a square 3x3, 5x5 or 7x7 kernel, no dilation and constant
//! weights. Anything else stays with tract.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::ops::{
    following_clamp, hardswish, preceding_clamp, replace_with, same_bits, same_clamp, weights_oihw,
    Level, Simd,
};

#[cfg(target_arch = "x86_64")]
mod blocked;

/// Output columns per vector step; the scratch rows are padded to it.
const LANES: usize = 8;

/// Output rows the vector row loops compute at once, each input vector
/// loaded once for all of them. One row at a time (a load per FMA) ran
/// MobileNetV2's 56x56 and 112x112 layers at 20 GMAC/s; four took the
/// 56x56 one 0.18 -> 0.16 ms, the 112x112 one 0.15 -> 0.13 and the fused
/// one 0.42 -> 0.40 (`profile --by-node`, 6 alternating runs, AMD EPYC
/// Zen 5, AVX-512). Four loads-and-FMAs in flight without the sharing
/// were slower than one.
const ROWS: usize = 4;

/// Largest square kernel side taken (ConvNeXt's 7x7), and its taps: the
/// row kernels keep a tap list of this length on the stack.
pub(super) const MAX_K: usize = 7;
pub(super) const MAX_TAPS: usize = MAX_K * MAX_K;

/// The shape of one depthwise layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Channels (= groups).
    pub channels: usize,
    /// Input height and width.
    pub in_hw: (usize, usize),
    /// Output height and width.
    pub out_hw: (usize, usize),
    /// Square kernel side (3, 5 or 7).
    pub kernel: usize,
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Zero rows above and columns left of the input.
    pub pad: (usize, usize),
}

impl Geometry {
    /// Columns of one scratch phase row: the output row rounded up to whole
    /// vectors, plus the furthest tap offset.
    fn phase_len(&self) -> usize {
        self.out_hw.1.div_ceil(LANES) * LANES + self.kernel
    }

    /// Padded input rows the output needs.
    fn padded_rows(&self) -> usize {
        (self.out_hw.0 - 1) * self.stride.0 + self.kernel
    }

    pub(super) fn scratch_len(&self) -> usize {
        self.padded_rows() * self.stride.1 * self.phase_len()
    }

    /// Where tap `(ky, kx)` of output row `y` starts in a plane's scratch.
    #[inline(always)]
    pub(super) fn tap(&self, y: usize, ky: usize, kx: usize) -> usize {
        let row = y * self.stride.0 + ky;
        ((row * self.stride.1) + kx % self.stride.1) * self.phase_len() + kx / self.stride.1
    }
}

/// Depthwise convolution with bias and an optional clamp (ReLU / ReLU6),
/// on f32 NCHW tensors.
#[derive(Debug, Clone)]
pub(crate) struct Depthwise {
    geometry: Geometry,
    /// `[channel][ky][kx]`.
    weights: Arc<[f32]>,
    bias: Arc<[f32]>,
    /// The weights `[ky][kx][channel]`, then the bias: a block of channels
    /// reads each tap's lanes (`blocked.rs`) as one contiguous run.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    by_tap: Arc<[f32]>,
    /// Output clamp; `None` leaves the values alone (and NaN stays NaN).
    clamp: Option<(f32, f32)>,
    /// ONNX's `HardSwish` after the clamp, on each plane or block just
    /// written (`hardswish.rs`).
    hard_swish: bool,
    /// Clamp of the input (a ReLU6 before the layer, fused so it is not a
    /// pass of its own); it contains 0, so the zero padding is unchanged.
    input_clamp: Option<(f32, f32)>,
    /// NCHW; otherwise CHW (tract drops a batch axis of 1 when decluttering).
    batched: bool,
}

impl Depthwise {
    pub(crate) fn new(
        geometry: Geometry,
        weights: Vec<f32>,
        bias: Vec<f32>,
        clamp: Option<(f32, f32)>,
        batched: bool,
    ) -> Depthwise {
        let taps = geometry.kernel * geometry.kernel;
        assert_eq!(weights.len(), geometry.channels * taps, "weights");
        assert_eq!(bias.len(), geometry.channels, "bias");
        let by_tap = (0..taps)
            .flat_map(|t| weights.iter().skip(t).step_by(taps).copied())
            .chain(bias.iter().copied())
            .collect();
        Depthwise {
            geometry,
            by_tap,
            weights: weights.into(),
            bias: bias.into(),
            clamp,
            hard_swish: false,
            input_clamp: None,
            batched,
        }
    }

    /// The operator with ONNX's `HardSwish` after its clamp.
    pub(crate) fn with_hard_swish(self, hard_swish: bool) -> Depthwise {
        Depthwise { hard_swish, ..self }
    }

    /// Whether it applies a `HardSwish` to what it writes (the blocked
    /// path's store, x86 only, asks).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn hard_swish(&self) -> bool {
        self.hard_swish
    }

    /// Whether the tensors have a leading image axis (NCHW, not CHW).
    pub(crate) fn batched(&self) -> bool {
        self.batched
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// One channel plane, with this thread's scratch: for an operator that
    /// makes the planes itself (`fused.rs`). `first`: the first plane of a
    /// run of this layer's planes on this thread (the scratch is zeroed;
    /// the planes after it leave the padding zero).
    pub(crate) fn plane_into(&self, c: usize, input: &[f32], out: &mut [f32], first: bool) {
        let kernels = Kernels::of(Level::detect());
        SCRATCH.with_borrow_mut(|scratch| {
            if first {
                scratch.clear();
            }
            scratch.resize(self.geometry.scratch_len(), 0.0);
            self.plane(c, input, out, scratch, kernels);
        });
    }

    /// Whether [`Depthwise::block_into`] runs at `level`: AVX2 or AVX-512
    /// (its code is AVX2's), with no clamp of the input's own (the joined
    /// expansion's epilogue has it).
    pub(crate) fn blocks_at(&self, level: Level) -> bool {
        cfg!(target_arch = "x86_64")
            && matches!(level.simd(), Simd::Avx2 | Simd::Avx512)
            && self.input_clamp.is_none()
    }

    /// Planes `planes` (one image's, one or two blocks of 8: an AVX2
    /// vector each) through the AVX2 channel-blocked path, for a joined
    /// expansion that writes its output blocked (`fused.rs`): `fill`
    /// writes each block's padded input, one vector of its 8 channels per
    /// input pixel at the offsets it is given (`usize::MAX`: none), the
    /// blocks one after the other in the slice it gets, and the planes go
    /// to the start of `out`. An error unless [`Depthwise::blocks_at`]
    /// `level`.
    pub(crate) fn block_into(
        &self,
        level: Level,
        planes: Range<usize>,
        out: &mut [f32],
        fill: impl FnOnce(&[usize], &mut [f32]) -> TractResult<()>,
    ) -> TractResult<()> {
        ensure!(
            self.blocks_at(level),
            "no channel-blocked path at {level:?}"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Level` is one this CPU has.
        unsafe {
            blocked::block_into::<blocked::Avx2>(self, planes, out, fill)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (planes, out, fill);
            unreachable!("blocks_at is false off x86_64")
        }
    }

    /// The clamp applied to the input, if any.
    #[cfg(test)]
    pub(crate) fn input_clamp(&self) -> Option<(f32, f32)> {
        self.input_clamp
    }

    /// The operator with its input clamped first; `None` unless the range
    /// holds 0 (the padding must stay zero).
    pub(crate) fn with_input_clamp(mut self, clamp: Option<(f32, f32)>) -> Depthwise {
        self.input_clamp = clamp.filter(|&(lo, hi)| lo <= 0.0 && 0.0 <= hi);
        self
    }

    /// Computes `output` (`n` images) from `input`, both NCHW, splitting
    /// the channel planes across tract's executor when one is installed.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    /// [`Depthwise::compute`] with the given instruction set.
    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        let g = self.geometry;
        let in_plane = g.in_hw.0 * g.in_hw.1;
        let out_plane = g.out_hw.0 * g.out_hw.1;
        ensure!(in_plane > 0 && out_plane > 0, "empty depthwise plane");
        ensure!(input.len() / in_plane == output.len() / out_plane);
        let kernels = Kernels::of(level);
        if let Some(blocked) = kernels.blocked.filter(|b| (b.pays)(&g)) {
            // SAFETY: `Kernels::of` chose the blocked kernels for a `Level`
            // this CPU has.
            return unsafe { (blocked.compute)(self, input, output) };
        }
        let total = output.len();
        tract_core::tract_linalg::multithread::par_chunks_mut(
            output,
            out_plane,
            total * self.geometry.kernel * self.geometry.kernel,
            |first, chunk| {
                SCRATCH.with_borrow_mut(|scratch| {
                    // Zeroed once: every plane of this layer writes the
                    // same positions of it, so the padding stays zero.
                    scratch.clear();
                    scratch.resize(g.scratch_len(), 0.0);
                    for (i, out) in chunk.chunks_exact_mut(out_plane).enumerate() {
                        let plane = first + i;
                        let c = plane % g.channels;
                        let src = &input[plane * in_plane..(plane + 1) * in_plane];
                        self.plane(c, src, out, scratch, kernels);
                    }
                });
                Ok(())
            },
        )
    }

    /// One channel plane: fill the phase scratch (zero where this layer's
    /// planes do not write), then the rows.
    fn plane(&self, c: usize, input: &[f32], out: &mut [f32], scratch: &mut [f32], k: Kernels) {
        let g = &self.geometry;
        fill_phases_with(g, input, scratch, self.input_clamp, k);
        let taps = g.kernel * g.kernel;
        let w = &self.weights[c * taps..(c + 1) * taps];
        let job = Rows {
            g,
            w,
            bias: self.bias[c],
            clamp: self.clamp,
            scratch,
        };
        k.rows(&job, out);
        if self.hard_swish {
            hardswish::in_place(out, k.level);
        }
    }
}

/// The kernels of one level, chosen once per run from a [`Level`]: the
/// one place that says a kernel may run on this CPU.
#[derive(Clone, Copy)]
struct Kernels {
    rows3: unsafe fn(&Rows<'_>, &mut [f32]),
    rows5: unsafe fn(&Rows<'_>, &mut [f32]),
    rows7: unsafe fn(&Rows<'_>, &mut [f32]),
    /// Deinterleaves whole vector steps; returns the outputs done.
    deinterleave: unsafe fn(&[f32], &mut [f32], &mut [f32]) -> usize,
    /// The channel-blocked path for small planes (`blocked.rs`).
    blocked: Option<Blocked>,
    level: Level,
}

#[derive(Clone, Copy)]
struct Blocked {
    pays: fn(&Geometry) -> bool,
    compute: unsafe fn(&Depthwise, &[f32], &mut [f32]) -> TractResult<()>,
}

impl Kernels {
    fn of(level: Level) -> Kernels {
        match level.simd() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Kernels {
                rows3: avx512::rows::<3>,
                rows5: avx512::rows::<5>,
                rows7: avx512::rows::<7>,
                deinterleave: avx512_deinterleave,
                blocked: Some(Blocked {
                    pays: blocked::pays::<blocked::Avx512>,
                    compute: blocked::compute::<blocked::Avx512>,
                }),
                level,
            },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => Kernels {
                rows3: avx2::rows::<3>,
                rows5: avx2::rows::<5>,
                rows7: avx2::rows::<7>,
                deinterleave: avx2::deinterleave,
                blocked: Some(Blocked {
                    pays: blocked::pays::<blocked::Avx2>,
                    compute: blocked::compute::<blocked::Avx2>,
                }),
                level,
            },
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => Kernels {
                rows3: neon::rows::<3>,
                rows5: neon::rows::<5>,
                rows7: neon::rows::<7>,
                deinterleave: neon::deinterleave,
                blocked: None,
                level,
            },
            _ => Kernels {
                rows3: portable_rows::<3>,
                rows5: portable_rows::<5>,
                rows7: portable_rows::<7>,
                deinterleave: |_, _, _| 0,
                blocked: None,
                level,
            },
        }
    }

    /// One channel plane's output rows from its phase scratch.
    fn rows(&self, job: &Rows<'_>, out: &mut [f32]) {
        let rows = match job.g.kernel {
            3 => self.rows3,
            5 => self.rows5,
            _ => self.rows7,
        };
        // SAFETY: `of` chose the kernels for a `Level` this CPU has; they
        // read the scratch and write `out` within the geometry's bounds.
        unsafe { rows(job, out) }
    }

    /// [`deinterleave`]'s vector part.
    fn deinterleave(&self, src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
        // SAFETY: as in `rows`; the kernels stop at each destination's end.
        unsafe { (self.deinterleave)(src, even, odd) }
    }
}

/// AVX2 for whole 16-input steps (measured faster than AVX-512's
/// two-source permute on the 112-wide rows), AVX-512 masks for the tail.
///
/// # Safety
/// The CPU must have AVX-512F (and AVX2 + FMA).
#[cfg(target_arch = "x86_64")]
unsafe fn avx512_deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    // SAFETY: forwarded.
    unsafe {
        let m = avx2::deinterleave(src, even, odd);
        let (e, o) = (m.min(even.len()), m.min(odd.len()));
        m + avx512::deinterleave(&src[2 * m..], &mut even[e..], &mut odd[o..])
    }
}

/// Bitwise, so an operator equals itself even with NaN in its constants
/// (tract compares operators when it deduplicates nodes).
impl PartialEq for Depthwise {
    fn eq(&self, other: &Depthwise) -> bool {
        self.geometry == other.geometry
            && same_bits(&self.weights, &other.weights)
            && same_bits(&self.bias, &other.bias)
            && same_clamp(self.clamp, other.clamp)
            && self.hard_swish == other.hard_swish
            && same_clamp(self.input_clamp, other.input_clamp)
            && self.batched == other.batched
    }
}

impl Eq for Depthwise {}

thread_local! {
    /// Per-thread phase scratch, reused across planes, layers and runs.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// What the row loops read.
struct Rows<'a> {
    g: &'a Geometry,
    w: &'a [f32],
    bias: f32,
    clamp: Option<(f32, f32)>,
    scratch: &'a [f32],
}

impl Rows<'_> {
    /// Where tap `(ky, kx)` of output row `y` starts in the scratch.
    #[inline(always)]
    fn tap(&self, y: usize, ky: usize, kx: usize) -> usize {
        self.g.tap(y, ky, kx)
    }

    /// Where output row `y`'s first input row starts in the scratch, and
    /// the offset of column tap `kx` from the start of any input row.
    #[inline(always)]
    fn window<const K: usize>(&self, y: usize) -> (usize, [usize; MAX_K]) {
        let (s, len) = (self.g.stride.1, self.g.phase_len());
        let cols = std::array::from_fn(|kx| (kx % s) * len + kx / s);
        (y * self.g.stride.0 * s * len, cols)
    }

    /// Offset of input row `i` of a window from its first.
    #[inline(always)]
    fn row_offset(&self, i: usize) -> usize {
        i * self.g.stride.1 * self.g.phase_len()
    }

    /// Where each of the `K * K` taps of output row `y` starts, in
    /// `ky * K + kx` order (the weights' order).
    #[inline(always)]
    fn taps<const K: usize>(&self, y: usize) -> [usize; MAX_TAPS] {
        let mut taps = [0usize; MAX_TAPS];
        for ky in 0..K {
            for kx in 0..K {
                taps[ky * K + kx] = self.tap(y, ky, kx);
            }
        }
        taps
    }
}

/// Copies the plane into the scratch: padded row `r`, phase `p`, column
/// `i` holds input `(r - pad_top, s * i + p - pad_left)`, zero outside;
/// clamped on the way when the operator clamps its input. Every plane of a
/// geometry writes the same positions, so the caller zeroes the scratch
/// once for a run of planes and the zeros stay: a `memset` per padded row
/// and plane was 15% of the depthwise time (`perf`; `profile`: depthwise
/// layers 1.35-1.50 -> 1.17-1.23 ms).
pub(super) fn fill_phases(
    g: &Geometry,
    input: &[f32],
    scratch: &mut [f32],
    clamp: Option<(f32, f32)>,
    level: Level,
) {
    fill_phases_with(g, input, scratch, clamp, Kernels::of(level));
}

fn fill_phases_with(
    g: &Geometry,
    input: &[f32],
    scratch: &mut [f32],
    clamp: Option<(f32, f32)>,
    kernels: Kernels,
) {
    let (h, w) = g.in_hw;
    let (s, len) = (g.stride.1, g.phase_len());
    for r in 0..g.padded_rows() {
        let rows = &mut scratch[r * s * len..(r + 1) * s * len];
        let Some(y) = r.checked_sub(g.pad.0).filter(|&y| y < h) else {
            continue;
        };
        let src = &input[y * w..(y + 1) * w];
        // Input column j lands in phase (j + pad) % s, column (j + pad) / s.
        match s {
            1 => {
                let n = w.min(len.saturating_sub(g.pad.1));
                let dst = &mut rows[g.pad.1..g.pad.1 + n];
                match clamp {
                    Some(c) => clamp_into(dst, &src[..n], c),
                    None => dst.copy_from_slice(&src[..n]),
                }
                continue;
            }
            2 => {
                let (first, second) = rows.split_at_mut(len);
                let (even, odd) = if g.pad.1.is_multiple_of(2) {
                    (&mut first[g.pad.1 / 2..], &mut second[g.pad.1 / 2..])
                } else {
                    (
                        &mut second[g.pad.1 / 2..],
                        &mut first[g.pad.1.div_ceil(2)..],
                    )
                };
                deinterleave(src, even, odd, kernels);
            }
            _ => {
                for (j, &v) in src.iter().enumerate() {
                    let (p, i) = ((j + g.pad.1) % s, (j + g.pad.1) / s);
                    if i < len {
                        rows[p * len + i] = v;
                    }
                }
            }
        }
        if let Some(c) = clamp {
            // Still in L1; the zero padding stays zero (the range holds 0).
            rows.iter_mut().for_each(|v| *v = clamp_one(*v, c));
        }
    }
}

/// `dst[i] = clamp(src[i])`, in one pass.
fn clamp_into(dst: &mut [f32], src: &[f32], c: (f32, f32)) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = clamp_one(*s, c);
    }
}

/// Written as comparisons, not `f32::max`/`min`, so it compiles to the
/// vector max/min instructions without NaN fix-ups (tract's ReLU6 does not
/// promise anything for NaN either).
#[inline(always)]
fn clamp_one(v: f32, (lo, hi): (f32, f32)) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// `src[2m]` to `even[m]` and `src[2m + 1]` to `odd[m]`, as far as each
/// destination reaches.
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32], kernels: Kernels) {
    let mut m = kernels.deinterleave(src, even, odd);
    while 2 * m < src.len() {
        if let Some(e) = even.get_mut(m) {
            *e = src[2 * m];
        }
        if let (Some(o), Some(v)) = (odd.get_mut(m), src.get(2 * m + 1)) {
            *o = *v;
        }
        m += 1;
    }
}

/// The rows without `std::arch`: scalar code the compiler vectorises. Each
/// output row is its own accumulator, so nothing is allocated per plane.
fn portable_rows<const K: usize>(job: &Rows<'_>, out: &mut [f32]) {
    let (ho, wo) = job.g.out_hw;
    for (y, row) in out.chunks_exact_mut(wo).take(ho).enumerate() {
        row.fill(job.bias);
        for (t, &start) in job.taps::<K>(y)[..K * K].iter().enumerate() {
            let wt = job.w[t];
            for (a, x) in row.iter_mut().zip(&job.scratch[start..start + wo]) {
                *a += wt * x;
            }
        }
        if let Some((lo, hi)) = job.clamp {
            for o in row.iter_mut() {
                *o = o.max(lo).min(hi);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx2.rs"]
mod avx2;

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx512.rs"]
mod avx512;

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/neon.rs"]
mod neon;

impl Op for Depthwise {
    fn name(&self) -> StaticName {
        "Depthwise(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?}, clamp {:?}, hard swish {}, input clamp {:?}",
            self.geometry, self.clamp, self.hard_swish, self.input_clamp
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.geometry;
        conv_eval(&inputs[0], &g, g.channels, self.batched, |src, dst| {
            self.compute(src, dst)
        })
    }
}

impl TypedOp for Depthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        conv_output_facts(inputs, &self.geometry, self.geometry.channels, self.batched)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = self.geometry;
        let per_image = g.channels * g.out_hw.0 * g.out_hw.1 * g.kernel * g.kernel;
        conv_cost(inputs, self.batched, per_image)
    }

    as_op!();
}

/// `eval` of a convolution operator on `[images,] C, H, W` f32 input:
/// checks the shape against `g`, and runs `compute` from the input's
/// values into an output of `out_channels` planes. `compute` must write
/// every output value (the output is not initialised).
pub(super) fn conv_eval(
    input: &TValue,
    g: &Geometry,
    out_channels: usize,
    batched: bool,
    compute: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let shape = input.shape();
    let chw = &shape[shape.len().saturating_sub(3)..];
    ensure!(
        shape.len() == 3 + usize::from(batched) && chw == [g.channels, g.in_hw.0, g.in_hw.1],
        "convolution input {shape:?} does not match {g:?}"
    );
    let mut out_shape: TVec<usize> = shape[..shape.len() - 3].into();
    out_shape.extend([out_channels, g.out_hw.0, g.out_hw.1]);
    // SAFETY: the caller's `compute` writes every element (both operators
    // write each row in full, the last vector masked or through a bounded
    // copy; their tests fill the output with NaN first to prove it).
    let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
    let src = input.try_as_plain_ram()?;
    let mut dst = output.try_as_plain_ram_mut()?;
    compute(src.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?)?;
    Ok(tvec!(output.into_tvalue()))
}

/// `output_facts` of a convolution operator: `[images,] out_channels, H, W`.
pub(super) fn conv_output_facts(
    inputs: &[&TypedFact],
    g: &Geometry,
    out_channels: usize,
    batched: bool,
) -> TractResult<TVec<TypedFact>> {
    let mut shape: TVec<TDim> = inputs[0]
        .shape
        .iter()
        .take(usize::from(batched))
        .cloned()
        .collect();
    shape.extend([out_channels, g.out_hw.0, g.out_hw.1].map(|d| d.to_dim()));
    Ok(tvec!(f32::fact(shape)))
}

/// `cost` of a convolution operator: `per_image` multiply-adds an image.
pub(super) fn conv_cost(
    inputs: &[&TypedFact],
    batched: bool,
    per_image: usize,
) -> TractResult<TVec<(Cost, TDim)>> {
    let images = if batched {
        inputs[0].shape[0].clone()
    } else {
        1.to_dim()
    };
    Ok(tvec!((Cost::FMA(f32::datum_type()), images * per_image)))
}

/// Replaces every depthwise convolution this module handles (see the module
/// docs) in a decluttered graph, with the clamp after it when there is one.
/// Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let spec = &conv.pool_spec;
        let Some((geometry, weights, bias)) = describe(model, node, conv)? else {
            continue;
        };
        let (clamp, last) = following_clamp(model, id)?;
        let hard_swish = hardswish::following(model, last);
        let last = hard_swish.unwrap_or(last);
        let (input_clamp, source) = preceding_clamp(model, node.inputs[0])?;
        let batched = spec.data_format == DataFormat::NCHW;
        let op = Depthwise::new(geometry, weights, bias, clamp, batched)
            .with_input_clamp(input_clamp)
            .with_hard_swish(hard_swish.is_some());
        let source = if op.input_clamp.is_some() {
            source
        } else {
            node.inputs[0]
        };
        let name = node.name.clone();
        replace_with(model, "onnx-lambda depthwise", &[source], (&name, op), last)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

/// The geometry, weights `[c][ky][kx]` and bias of a convolution this
/// operator can run, or `None`.
#[allow(clippy::type_complexity)]
fn describe(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<(Geometry, Vec<f32>, Vec<f32>)>> {
    let layer = conv_layer(model, node, conv, |group, channels, out| {
        group == channels && out == channels && channels >= 2
    })?;
    Ok(layer.map(|l| (l.geometry, l.weights, l.bias)))
}

/// A convolution as our operators take it: `geometry.channels` are the
/// input channels.
pub(super) struct ConvLayer {
    pub(super) geometry: Geometry,
    pub(super) out_channels: usize,
    /// `[out][in / group][ky][kx]`.
    pub(super) weights: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

/// The layer a tract `Conv` computes, if it is an f32 NCHW (or CHW)
/// convolution with a square 3x3, 5x5 or 7x7 kernel, no dilation, constant
/// weights and bias, a fixed input shape, and groups, input and output
/// channels that `accepts`; else `None`.
pub(super) fn conv_layer(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
    accepts: impl Fn(usize, usize, usize) -> bool,
) -> TractResult<Option<ConvLayer>> {
    let spec = &conv.pool_spec;
    let input = model.outlet_fact(node.inputs[0])?;
    let channels = spec.input_channels;
    let out_channels = spec.output_channels;
    let square = spec.kernel_shape.len() == 2
        && spec.kernel_shape[0] == spec.kernel_shape[1]
        && matches!(spec.kernel_shape[0], 3 | 5 | 7);
    if conv.q_params.is_some()
        || input.datum_type != f32::datum_type()
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || !accepts(conv.group, channels, out_channels)
        || conv.group == 0
        || !channels.is_multiple_of(conv.group)
        || !square
        || spec.dilations().iter().any(|&d| d != 1)
        || node.inputs.len() != 3
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
    if shape.len() != rank || shape[rank - 3] != channels {
        return Ok(None);
    }
    let hw = &shape[rank - 2..];
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let k = spec.kernel_shape[0];
    let strides = spec.strides();
    let padding = spec.computed_padding(hw);
    let geometry = Geometry {
        channels,
        in_hw: (hw[0], hw[1]),
        out_hw: (padding[0].convoluted, padding[1].convoluted),
        kernel: k,
        stride: (strides[0], strides[1]),
        pad: (padding[0].pad_before, padding[1].pad_before),
    };
    if geometry.out_hw.0 == 0
        || geometry.out_hw.1 == 0
        || geometry.pad.0 >= k
        || geometry.pad.1 >= k
    {
        return Ok(None);
    }
    let shape = [out_channels, channels / conv.group, k, k];
    let Some(weights) = weights_oihw(&kernel, conv.kernel_fmt, shape)? else {
        return Ok(None);
    };
    let bias = bias.cast_to::<f32>()?;
    let bias = match bias.try_as_plain_ram()?.as_slice::<f32>()? {
        b if b.len() == out_channels => b.to_vec(),
        [b] => vec![*b; out_channels],
        _ => return Ok(None),
    };
    Ok(Some(ConvLayer {
        geometry,
        out_channels,
        weights,
        bias,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{bundled_decluttered, levels, noise, ALL_LEVELS};

    /// The textbook definition, one output at a time.
    pub(super) fn reference(op: &Depthwise, n: usize, input: &[f32]) -> Vec<f32> {
        let g = op.geometry;
        let (h, w) = g.in_hw;
        let (ho, wo) = g.out_hw;
        let k = g.kernel;
        let mut out = vec![0f32; n * g.channels * ho * wo];
        for b in 0..n {
            for c in 0..g.channels {
                let plane = &input[(b * g.channels + c) * h * w..][..h * w];
                for y in 0..ho {
                    for x in 0..wo {
                        let mut acc = op.bias[c];
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (y * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                let ix = (x * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let v = plane[iy as usize * w + ix as usize];
                                    let v = op.input_clamp.map_or(v, |(lo, hi)| v.max(lo).min(hi));
                                    acc += op.weights[c * k * k + ky * k + kx] * v;
                                }
                            }
                        }
                        if let Some((lo, hi)) = op.clamp {
                            acc = acc.max(lo).min(hi);
                        }
                        if op.hard_swish {
                            acc *= (acc / 6.0 + 0.5).clamp(0.0, 1.0);
                        }
                        out[((b * g.channels + c) * ho + y) * wo + x] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_odd_shapes_strides_and_pads() {
        let mut cases = 0;
        for (h, w) in [(1, 1), (6, 11), (7, 7), (9, 13), (16, 5), (17, 33)] {
            for kernel in [3, 5, 7] {
                for stride in [(1, 1), (2, 2), (1, 2), (3, 1)] {
                    for pad in [(0, 0), (1, 1), (kernel / 2, kernel / 2), (2, 0)] {
                        let (ph, pw) = (pad.0.min(kernel - 1), pad.1.min(kernel - 1));
                        if h + 2 * ph < kernel || w + 2 * pw < kernel {
                            continue;
                        }
                        let g = three_channels((h, w), kernel, stride, (ph, pw));
                        check_against_definition(g, cases);
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100, "{cases}");
    }

    /// Padding that differs before and after (TensorFlow's "SAME" at
    /// stride 2 pads only after): the output size comes from both sides,
    /// the kernels see the padding before and stop at the input's end.
    /// The 57 x 58 planes reach the blocked path's row kernels.
    #[test]
    fn asymmetric_padding_matches_the_definition() {
        let mut cases = 0;
        for (h, w) in [(7, 8), (16, 17), (57, 58)] {
            for kernel in [3, 5, 7] {
                for stride in [(1, 1), (2, 2)] {
                    let half = kernel / 2;
                    for (before, after) in
                        [((0, 0), (1, 1)), ((1, 0), (2, 1)), ((half, 0), (0, half))]
                    {
                        let g = three_channels_padded((h, w), kernel, stride, before, after);
                        check_against_definition(g, 1000 + cases);
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 54);
    }

    /// A three-channel layer of `in_hw` with square `kernel`, its output
    /// size from the stride and the padding on each side.
    fn three_channels(
        in_hw: (usize, usize),
        kernel: usize,
        stride: (usize, usize),
        pad: (usize, usize),
    ) -> Geometry {
        three_channels_padded(in_hw, kernel, stride, pad, pad)
    }

    /// [`three_channels`] with `before` rows and columns of padding on top
    /// and left, `after` on bottom and right.
    fn three_channels_padded(
        in_hw: (usize, usize),
        kernel: usize,
        stride: (usize, usize),
        before: (usize, usize),
        after: (usize, usize),
    ) -> Geometry {
        let out_hw = (
            (in_hw.0 + before.0 + after.0 - kernel) / stride.0 + 1,
            (in_hw.1 + before.1 + after.1 - kernel) / stride.1 + 1,
        );
        Geometry {
            channels: 3,
            in_hw,
            out_hw,
            kernel,
            stride,
            pad: before,
        }
    }

    /// One geometry against the definition at every level this CPU has:
    /// two images, clamps on the way in and out and a `HardSwish` by
    /// `seed`.
    fn check_against_definition(g: Geometry, seed: u32) {
        let (h, w, kernel, out_hw) = (g.in_hw.0, g.in_hw.1, g.kernel, g.out_hw);
        let cases = seed;
        let taps = kernel * kernel;
        let clamp = cases.is_multiple_of(2).then_some((0.0, 0.6));
        let op = Depthwise::new(
            g,
            noise(3 * taps, cases + 7),
            noise(3, cases + 11),
            clamp,
            true,
        )
        .with_input_clamp(cases.is_multiple_of(3).then_some((-0.3, 0.4)))
        .with_hard_swish(cases % 4 == 1);
        let n = 2;
        let input = noise(n * 3 * h * w, cases + 13);
        let want = reference(&op, n, &input);
        for simd in levels("depthwise", ALL_LEVELS) {
            let mut got = vec![f32::NAN; n * 3 * out_hw.0 * out_hw.1];
            op.compute_with(&input, &mut got, simd).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5, "{g:?} {simd:?} at {i}: {a} vs {b}");
            }
        }
    }

    /// Planes over the blocked path's 28 x 28 output pixels run the row
    /// kernels (the AVX2 and AVX-512 rows, the stride-2 deinterleave),
    /// which the odd-shape cases above, all smaller, never reach.
    #[test]
    fn large_planes_run_the_row_kernels_and_match_the_definition() {
        let mut cases = 0;
        for (h, w) in [(30, 31), (57, 29), (61, 63)] {
            for kernel in [3, 5, 7] {
                for stride in [(1, 1), (2, 2)] {
                    let g = three_channels((h, w), kernel, stride, (kernel / 2, kernel / 2));
                    if g.out_hw.0 * g.out_hw.1 <= 28 * 28 {
                        continue;
                    }
                    check_against_definition(g, cases);
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 12);
    }

    #[test]
    fn deinterleave_fills_exactly_what_fits_at_every_level_and_length() {
        for simd in levels("deinterleave", ALL_LEVELS) {
            for len in 0usize..70 {
                let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
                for room in [len / 2, len.div_ceil(2), len / 2 + 9] {
                    let (mut even, mut odd) = (vec![-1f32; room], vec![-1f32; room]);
                    deinterleave(&src, &mut even, &mut odd, Kernels::of(simd));
                    for m in 0..room {
                        let want = |i: usize| if i < len { i as f32 } else { -1.0 };
                        assert_eq!(
                            even[m],
                            want(2 * m),
                            "{simd:?} len {len} room {room} even {m}"
                        );
                        assert_eq!(
                            odd[m],
                            want(2 * m + 1),
                            "{simd:?} len {len} room {room} odd {m}"
                        );
                    }
                }
            }
        }
    }

    /// Every depthwise layer of the bundled MobileNetV2, against tract's own
    /// convolution on the same random input.
    #[test]
    fn matches_tract_on_every_depthwise_layer_of_the_bundled_model() {
        let model = bundled_decluttered();
        let mut checked = 0;
        for node in &model.nodes {
            let Some(conv) = node.op_as::<Conv>() else {
                continue;
            };
            let Some((g, weights, bias)) = describe(&model, node, conv).unwrap() else {
                continue;
            };
            let facts = model.node_input_facts(node.id).unwrap();
            let shape = facts[0].shape.as_concrete().unwrap().to_vec();
            let values = noise(shape.iter().product(), node.id as u32 + 1);
            let x = Tensor::from_shape(&shape, &values).unwrap();
            let kernel = facts[1].konst.clone().unwrap().into_tvalue();
            let tract_bias = facts[2].konst.clone().unwrap().into_tvalue();
            let want = node
                .op
                .eval_out_of_plan(tvec!(x.into_tvalue(), kernel, tract_bias))
                .unwrap()
                .expect("Conv evaluates out of a plan")
                .remove(0);
            let want = want.to_plain_array_view::<f32>().unwrap();
            let op = Depthwise::new(g, weights, bias, None, shape.len() == 4);
            let mut got = vec![f32::NAN; want.len()];
            op.compute(&values, &mut got).unwrap();
            for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4,
                    "{} {g:?} at {i}: {a} vs {b}",
                    node.name
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 17, "MobileNetV2 has 17 depthwise layers");
    }
}

//! Our own convolution for layers with few input channels: a CNN's stem
//! (MobileNetV2's first layer, 3 -> 32 channels, 3x3, stride 2).
//!
//! Why: tract runs it as a padding copy, an im2col and a packed matrix
//! product, 0.5 ms per image at 24 GMAC/s (`onnx-lambda profile
//! --by-node`): 9% of inference for 4% of the arithmetic.
//!
//! How: each input channel goes into the depthwise operator's phase
//! scratch (`depthwise.rs`: zero-padded, split by stride, so every tap is a
//! contiguous run). Then, per vector of output pixels, a register tile of
//! 16 output channels (8 with AVX2 and NEON): each of the `C * K * K`
//! taps is one load of pixels and 16 FMAs with broadcast weights (NEON:
//! weights by lane), and bias and the ReLU6 that follows are applied
//! before the only store.
//!
//! [`install`] takes every f32 NCHW convolution with one group, at most
//! [`MAX_INPUT_CHANNELS`] input channels and a 3x3 or 5x5 kernel that
//! `depthwise::conv_layer` describes; anything else (ResNet's 7x7 stem
//! among them) is left to `conv`.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::depthwise::{
    conv_cost, conv_eval, conv_layer, conv_output_facts, fill_phases, Geometry,
};
use super::pointwise::{Dims, Epilogue, Pointwise, Weights};
use crate::ops::maxpool::{self, join_pools, Bands};
use crate::ops::{
    following_clamp, hardswish, par_planes, replace_with, same_bits, same_clamp, Level, Simd,
};

/// Most input channels taken: past a few, the taps outgrow the registers'
/// reuse and tract's matrix product is the better tool.
const MAX_INPUT_CHANNELS: usize = 4;

/// Largest square kernel side taken: the tap offsets of one output row
/// live on the stack. ResNet's 7x7 stem runs in `conv`, at 72-76% of
/// the FMA peak (docs/operators.md).
const MAX_KERNEL: usize = 5;

/// Output channels interleaved in the packed weights (one AVX-512 tile).
const BLOCK: usize = 16;

/// Convolution with bias and an optional clamp, on f32 NCHW tensors.
#[derive(Debug, Clone)]
pub(crate) struct Stem {
    /// `channels` are the input channels.
    geometry: Geometry,
    out_channels: usize,
    /// Blocks of [`BLOCK`] output channels: block `b`, tap `t` (input
    /// channel, ky, kx), lane `o` holds the weight of output channel
    /// `b * BLOCK + o`; missing channels are zero.
    weights: Arc<[f32]>,
    /// Bias, zero-padded to whole blocks.
    bias: Arc<[f32]>,
    clamp: Option<(f32, f32)>,
    /// ONNX's `HardSwish` after the clamp (MobileNetV3's stem), on each
    /// output row just written (`hardswish.rs`).
    hard_swish: bool,
    /// Whether the tensors have a leading image axis (NCHW, not CHW).
    batched: bool,
    /// The max pool joined after it, over its output (SqueezeNet's), and
    /// the pooled rows of each band (`maxpool::band_rows`).
    pool: Option<(Geometry, usize)>,
    /// One output row as a product, `[out][tap] x [tap][pixel]`, for
    /// [`Stem::compute_blocked`]: the pointwise channel-blocked tile over
    /// the row's taps copied out of the phase scratch.
    rows: Pointwise,
}

impl Stem {
    /// `weights` is `[out][in][ky][kx]`; `bias` has `out_channels` values.
    pub(crate) fn new(
        geometry: Geometry,
        out_channels: usize,
        weights: &[f32],
        bias: &[f32],
        clamp: Option<(f32, f32)>,
        batched: bool,
    ) -> Stem {
        let taps = geometry.channels * geometry.kernel * geometry.kernel;
        assert_eq!(weights.len(), out_channels * taps, "weights");
        assert_eq!(bias.len(), out_channels, "bias");
        let blocks = out_channels.div_ceil(BLOCK);
        let mut packed = vec![0f32; blocks * taps * BLOCK];
        for (o, w) in weights.chunks_exact(taps).enumerate() {
            for (t, v) in w.iter().enumerate() {
                packed[(o / BLOCK * taps + t) * BLOCK + o % BLOCK] = *v;
            }
        }
        let mut padded = bias.to_vec();
        padded.resize(blocks * BLOCK, 0.0);
        let wo = geometry.out_hw.1;
        let dims = Dims {
            images: 1,
            m: out_channels,
            k: taps,
            pixels: wo,
        };
        let epilogue = Epilogue {
            pre: clamp,
            ..Epilogue::default()
        };
        let shapes: (&[usize], &[usize]) = (&[taps, wo], &[out_channels, wo]);
        let rows = Pointwise::new(dims, shapes, Weights::Rows(weights), bias, epilogue);
        Stem {
            geometry,
            out_channels,
            weights: packed.into(),
            bias: padded.into(),
            clamp,
            hard_swish: false,
            batched,
            pool: None,
            rows,
        }
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The operator with ONNX's `HardSwish` after its clamp.
    pub(crate) fn with_hard_swish(self, hard_swish: bool) -> Stem {
        Stem {
            hard_swish,
            rows: self.rows.clone().with_hard_swish(hard_swish),
            ..self
        }
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out_channels
    }

    pub(crate) fn batched(&self) -> bool {
        self.batched
    }

    /// Whether a max pool is joined after it.
    pub(crate) fn pooled(&self) -> bool {
        self.pool.is_some()
    }

    /// One image's input (`x`, CHW) into `scratch` as the phase planes
    /// every tap reads a contiguous run of.
    pub(crate) fn phases(&self, x: &[f32], scratch: &mut Vec<f32>, level: Level) {
        let g = &self.geometry;
        let (len, plane) = (g.scratch_len(), g.in_hw.0 * g.in_hw.1);
        scratch.clear();
        scratch.resize(g.channels * len, 0.0);
        for (c, phases) in scratch.chunks_exact_mut(len).enumerate() {
            fill_phases(g, &x[c * plane..][..plane], phases, None, level);
        }
    }

    /// Output channels `panels` (one or two whole pointwise panels) of
    /// one image from its [`Stem::phases`], channel-blocked for the
    /// depthwise layer that reads them (`fused/stem.rs`): as
    /// `Pointwise::compute_blocked`, pixel `i`'s channels at `at[i]`. Each
    /// output row is a product over its taps, each tap a run of the row's
    /// width in the phases, in the order of [`Stem::compute`]'s FMAs.
    pub(crate) fn compute_blocked(
        &self,
        phases: &[f32],
        panels: Range<usize>,
        at: &[usize],
        out: &mut [f32],
        level: Level,
    ) -> TractResult<()> {
        let g = &self.geometry;
        let (ho, wo, taps) = (g.out_hw.0, g.out_hw.1, self.taps());
        ensure!(self.pool.is_none() && at.len() == ho * wo);
        for (y, at) in at.chunks_exact(wo).enumerate() {
            let offsets = self.offsets(y);
            let input = (phases, Some(&offsets[..taps]));
            self.rows
                .compute_blocked(input, panels.clone(), at, out, level)?;
        }
        Ok(())
    }

    /// Where each tap (input channel, ky, kx) of output row `y` starts in
    /// the phase scratch.
    fn offsets(&self, y: usize) -> [usize; MAX_INPUT_CHANNELS * MAX_KERNEL * MAX_KERNEL] {
        let g = &self.geometry;
        let (k, len) = (g.kernel, g.scratch_len());
        let mut offsets = [0usize; MAX_INPUT_CHANNELS * MAX_KERNEL * MAX_KERNEL];
        for c in 0..g.channels {
            for ky in 0..k {
                for kx in 0..k {
                    offsets[(c * k + ky) * k + kx] = c * len + g.tap(y, ky, kx);
                }
            }
        }
        offsets
    }

    /// This stem with `pool` (over its output) after it, `band` pooled
    /// rows at a time.
    fn with_pool(&self, pool: Geometry, band: usize) -> Stem {
        Stem {
            pool: Some((pool, band)),
            ..self.clone()
        }
    }

    /// The output's geometry: the convolution's, or its pool's.
    fn output(&self) -> Geometry {
        let g = self.geometry;
        self.pool.map_or(g, |(p, _)| Geometry {
            out_hw: p.out_hw,
            ..g
        })
    }

    fn taps(&self) -> usize {
        self.geometry.channels * self.geometry.kernel * self.geometry.kernel
    }

    /// Computes `output` (`n` images) from `input`, both NCHW, splitting
    /// the output channels across tract's executor when one is installed.
    pub(crate) fn compute(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        self.compute_with(input, output, Level::detect())
    }

    /// [`Stem::compute`] with the given instruction set.
    fn compute_with(&self, input: &[f32], output: &mut [f32], level: Level) -> TractResult<()> {
        let kernels = Kernels::of(level);
        let g = self.geometry;
        let in_image = g.channels * g.in_hw.0 * g.in_hw.1;
        let plane = self.output().out_hw.0 * self.output().out_hw.1;
        let m = self.out_channels;
        ensure!(in_image > 0 && plane > 0, "empty convolution");
        ensure!(
            input.len().is_multiple_of(in_image)
                && output.len() == input.len() / in_image * m * plane,
            "convolution sizes"
        );
        let cost = input.len() / in_image * m * g.out_hw.0 * g.out_hw.1 * self.taps();
        par_planes(output, (plane, m, BLOCK), cost, |rows, chunk| {
            // Global plane `rows.start` is the chunk's first; planes
            // before it belong to other threads and are never written.
            let base = chunk.as_mut_ptr().wrapping_sub(rows.start * plane);
            SCRATCH.with_borrow_mut(|scratch| {
                for image in rows.start / m..rows.end.div_ceil(m) {
                    self.phases(&input[image * in_image..][..in_image], scratch, level);
                    let own = rows.start.max(image * m) - image * m
                        ..rows.end.min((image + 1) * m) - image * m;
                    let out = base.wrapping_add(image * m * plane);
                    match self.pool {
                        Some(pool) => self.image_pooled(kernels, scratch, own, out, (pool, level)),
                        None => self.image(kernels, scratch, own, out),
                    }
                }
            });
            Ok(())
        })
    }

    /// Output channels `channels` of one image from its phase scratch.
    fn image(&self, kernels: Kernels, scratch: &[f32], channels: Range<usize>, out: *mut f32) {
        let (ho, wo) = self.geometry.out_hw;
        for b in channels.start / BLOCK..channels.end.div_ceil(BLOCK) {
            let first = b * BLOCK;
            let store = channels.start.max(first) - first..channels.end.min(first + BLOCK) - first;
            let out = out.wrapping_add(first * ho * wo);
            for y in 0..ho {
                let to = (out.wrapping_add(y * wo), ho * wo);
                // SAFETY: channels `store` of this block, which this chunk
                // owns, at row `y` of their planes in `out`.
                unsafe { self.row(kernels, scratch, (b, store.clone()), y, to) };
            }
        }
    }

    /// [`Stem::image`] with the max pool after it (SqueezeNet's stem
    /// writes 64 channels at 111x111, 3.2 MB, for a pool that keeps a
    /// quarter): each block's rows a band at a time into a per-thread
    /// scratch, pooled from there (`maxpool::Bands`).
    fn image_pooled(
        &self,
        kernels: Kernels,
        scratch: &[f32],
        channels: Range<usize>,
        out: *mut f32,
        ((pool, band), level): ((Geometry, usize), Level),
    ) {
        let wo = self.geometry.out_hw.1;
        let (po, pw) = pool.out_hw;
        let len = Bands::new(pool, band).cap() * wo;
        BAND.with_borrow_mut(|(rows, pool_scratch)| {
            rows.resize(BLOCK * len, 0.0);
            for b in channels.start / BLOCK..channels.end.div_ceil(BLOCK) {
                let first = b * BLOCK;
                let store =
                    channels.start.max(first) - first..channels.end.min(first + BLOCK) - first;
                for band in Bands::new(pool, band) {
                    band.keep(rows, len, wo);
                    for y in band.fresh..band.rows.end {
                        let to = (
                            rows.as_mut_ptr().wrapping_add((y - band.rows.start) * wo),
                            len,
                        );
                        // SAFETY: row `y - rows.start` of the block's
                        // planes in `rows`, `len` values each.
                        unsafe { self.row(kernels, scratch, (b, store.clone()), y, to) };
                    }
                    for o in store.clone() {
                        // SAFETY: output channel `first + o`, which this
                        // chunk owns, whole.
                        let plane = unsafe {
                            std::slice::from_raw_parts_mut(
                                out.wrapping_add((first + o) * po * pw),
                                po * pw,
                            )
                        };
                        band.pool(&rows[o * len..], plane, pool_scratch, level);
                    }
                }
            }
        });
    }

    /// Output row `y` of channels `store` of block `b`, written at `out`
    /// (the block's first channel at this row), `plane` values from one
    /// channel to the next.
    ///
    /// # Safety
    /// `out` is valid for writes at the row's pixels of channels `store`.
    unsafe fn row(
        &self,
        kernels: Kernels,
        scratch: &[f32],
        (b, store): (usize, Range<usize>),
        y: usize,
        (out, plane): (*mut f32, usize),
    ) {
        let g = &self.geometry;
        let taps = self.taps();
        let offsets = self.offsets(y);
        let first = b * BLOCK;
        let row = Row {
            scratch,
            offsets: &offsets[..taps],
            w: &self.weights[b * taps * BLOCK..][..taps * BLOCK],
            bias: &self.bias[first..first + BLOCK],
            clamp: self.clamp,
            width: g.out_hw.1,
            plane,
            out,
            store,
        };
        // SAFETY: forwarded.
        unsafe { kernels.row(&row) };
        if self.hard_swish {
            for o in row.store.clone() {
                // SAFETY: channel `o`'s row, which the kernel just wrote
                // (forwarded: `out` is valid for it).
                let values = unsafe {
                    std::slice::from_raw_parts_mut(out.wrapping_add(o * plane), g.out_hw.1)
                };
                hardswish::in_place(values, kernels.level);
            }
        }
    }
}

thread_local! {
    /// Per-thread phase scratch for every input channel of one image.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread band of a block's rows, and the pool's own scratch.
    static BAND: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One output row of one block of output channels.
struct Row<'a> {
    scratch: &'a [f32],
    /// Where each tap of this row starts in the scratch.
    offsets: &'a [usize],
    /// `[tap][BLOCK]`.
    w: &'a [f32],
    bias: &'a [f32],
    clamp: Option<(f32, f32)>,
    width: usize,
    /// Values per output channel plane.
    plane: usize,
    /// The block's first channel at this row's first pixel.
    out: *mut f32,
    /// Which of the block's channels to store.
    store: Range<usize>,
}

/// The kernels of one level, chosen once per run from a [`Level`].
#[derive(Clone, Copy)]
struct Kernels {
    row: unsafe fn(&Row<'_>),
    level: Level,
}

impl Kernels {
    fn of(level: Level) -> Kernels {
        let row = match level.simd() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => avx512::row,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => avx2::row,
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => neon::row,
            _ => portable_row,
        };
        Kernels { row, level }
    }

    /// One output row of one block of output channels.
    ///
    /// # Safety
    /// As [`portable_row`]: `row.out` must be valid for writes at the
    /// row's pixels of channels `row.store`. (The CPU has the kernel's
    /// instruction set: `of` chose it for a `Level`.)
    unsafe fn row(&self, row: &Row<'_>) {
        // SAFETY: forwarded.
        unsafe { (self.row)(row) }
    }
}

/// # Safety
/// `row.out` must be valid for writes at the row's pixels of channels
/// `row.store`.
unsafe fn portable_row(row: &Row<'_>) {
    let mut acc = vec![0f32; row.width];
    for o in row.store.clone() {
        acc.fill(row.bias[o]);
        for (t, &start) in row.offsets.iter().enumerate() {
            let w = row.w[t * BLOCK + o];
            for (a, x) in acc.iter_mut().zip(&row.scratch[start..start + row.width]) {
                *a += w * x;
            }
        }
        for (x, a) in acc.iter().enumerate() {
            let v = row.clamp.map_or(*a, |(lo, hi)| a.max(lo).min(hi));
            // SAFETY: forwarded.
            unsafe { *row.out.wrapping_add(o * row.plane + x) = v };
        }
    }
}

// Indexed loops over the accumulators on purpose, as in pointwise.rs:
// they keep every accumulator in a register.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx512.rs"]
mod avx512;

// Indexed loops over the accumulators on purpose, as in pointwise.rs:
// they keep every accumulator in a register.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx2.rs"]
mod avx2;

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/neon.rs"]
mod neon;

/// Bitwise, so an operator equals itself even with NaN in its constants.
impl PartialEq for Stem {
    fn eq(&self, other: &Stem) -> bool {
        self.geometry == other.geometry
            && self.out_channels == other.out_channels
            && self.batched == other.batched
            && same_clamp(self.clamp, other.clamp)
            && self.hard_swish == other.hard_swish
            && same_bits(&self.weights, &other.weights)
            && same_bits(&self.bias, &other.bias)
            && self.pool == other.pool
    }
}

impl Eq for Stem {}

impl Op for Stem {
    fn name(&self) -> StaticName {
        "Stem(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {} channels, clamp {:?}, hard swish {}, max pool {:?}",
            self.geometry, self.out_channels, self.clamp, self.hard_swish, self.pool
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Stem {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        conv_eval(
            &inputs[0],
            &self.output(),
            self.out_channels,
            self.batched,
            |src, dst| self.compute(src, dst),
        )
    }
}

impl TypedOp for Stem {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        conv_output_facts(inputs, &self.output(), self.out_channels, self.batched)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = self.geometry;
        let per_image = self.out_channels * g.out_hw.0 * g.out_hw.1 * self.taps();
        conv_cost(inputs, self.batched, per_image)
    }

    as_op!();
}

/// Joins each stem to the project's max pool when that pool alone reads
/// it (SqueezeNet's). Runs after `maxpool::install`.
pub(crate) fn install_pools(model: &mut TypedModel) -> TractResult<usize> {
    join_pools(
        model,
        "onnx-lambda stem and max pool",
        |stem: &Stem, pool, _| {
            let (g, p) = (stem.geometry, pool.geometry());
            let joins = stem.pool.is_none()
                && p.in_hw == g.out_hw
                && p.channels == stem.out_channels
                && pool.batched() == stem.batched;
            let band = maxpool::band_rows(BLOCK * g.out_hw.1, &p);
            joins.then(|| stem.with_pool(p, band))
        },
    )
}

/// Replaces every convolution this module handles (see the module docs)
/// in a decluttered graph, with the clamp after it when there is one.
/// Returns how many it replaced.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(layer) = conv_layer(model, node, conv, |group, channels, _| {
            group == 1 && channels <= MAX_INPUT_CHANNELS
        })?
        .filter(|layer| layer.geometry.kernel <= MAX_KERNEL) else {
            continue;
        };
        let (clamp, last) = following_clamp(model, id)?;
        let hard_swish = hardswish::following(model, last);
        let last = hard_swish.unwrap_or(last);
        let batched = conv.pool_spec.data_format == DataFormat::NCHW;
        let op = Stem::new(
            layer.geometry,
            layer.out_channels,
            &layer.weights,
            &layer.bias,
            clamp,
            batched,
        )
        .with_hard_swish(hard_swish.is_some());
        let (input, name) = (node.inputs[0], node.name.clone());
        replace_with(model, "onnx-lambda stem", &[input], (&name, op), last)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{
        bundled_decluttered, levels, max_pool, noise, pool_over, run_optimized, ALL_LEVELS,
        JOINED_POOLS,
    };

    /// The textbook definition, one output at a time.
    fn reference(op: &Stem, weights: &[f32], bias: &[f32], n: usize, input: &[f32]) -> Vec<f32> {
        let g = op.geometry;
        let (c, (h, w), (ho, wo), k) = (g.channels, g.in_hw, g.out_hw, g.kernel);
        let m = op.out_channels;
        let mut out = vec![0f32; n * m * ho * wo];
        for i in 0..n {
            for o in 0..m {
                for y in 0..ho {
                    for x in 0..wo {
                        let mut acc = bias[o];
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (y * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                    let ix = (x * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let v =
                                        input[((i * c + ci) * h + iy as usize) * w + ix as usize];
                                    acc += weights[((o * c + ci) * k + ky) * k + kx] * v;
                                }
                            }
                        }
                        let mut acc = op.clamp.map_or(acc, |(lo, hi)| acc.max(lo).min(hi));
                        if op.hard_swish {
                            acc *= (acc / 6.0 + 0.5).clamp(0.0, 1.0);
                        }
                        out[((i * m + o) * ho + y) * wo + x] = acc;
                    }
                }
            }
        }
        out
    }

    /// A square `k`x`k` layer on `c` channels of `hw`, stride `s` and
    /// padding `p` on every side.
    fn geometry(c: usize, (h, w): (usize, usize), (k, s, p): (usize, usize, usize)) -> Geometry {
        Geometry {
            channels: c,
            in_hw: (h, w),
            out_hw: ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1),
            kernel: k,
            stride: (s, s),
            pad: (p, p),
        }
    }

    /// A case's geometry, weights, bias and input, seeded by its number:
    /// `(images, in, out, h, w, kernel, stride, pad)`.
    #[allow(clippy::type_complexity)]
    fn case_data(
        case: u32,
        (n, c, m, h, w, k, s, p): (usize, usize, usize, usize, usize, usize, usize, usize),
    ) -> (Geometry, Vec<f32>, Vec<f32>, Vec<f32>) {
        (
            geometry(c, (h, w), (k, s, p)),
            noise(m * c * k * k, case + 1),
            noise(m, case + 2),
            noise(n * c * h * w, case + 3),
        )
    }

    #[test]
    fn matches_the_definition_on_odd_shapes_strides_and_pads() {
        // (images, in, out, h, w, kernel, stride, pad)
        for (case, (n, c, m, h, w, k, s, p)) in (0u32..).zip([
            (1, 3, 32, 15, 15, 3, 2, 1),
            (2, 1, 5, 9, 20, 3, 1, 1),
            (1, 4, 17, 8, 37, 5, 2, 2),
            (1, 2, 16, 7, 16, 3, 1, 0),
            (1, 3, 3, 33, 35, 3, 2, 0),
        ]) {
            let (g, weights, bias, input) = case_data(case, (n, c, m, h, w, k, s, p));
            // MobileNetV3's stem: a `HardSwish`, here after a clamp too.
            for (clamp, hard_swish) in [
                (None, false),
                (Some((0.0, 0.5)), false),
                (None, true),
                (Some((-4.0, 4.0)), true),
            ] {
                let op = Stem::new(g, m, &weights, &bias, clamp, true).with_hard_swish(hard_swish);
                let want = reference(&op, &weights, &bias, n, &input);
                for simd in levels("stem", ALL_LEVELS) {
                    let mut got = vec![f32::NAN; want.len()];
                    op.compute_with(&input, &mut got, simd).unwrap();
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{g:?} -> {m} {clamp:?} {hard_swish} {simd:?} at {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// Stems then max pools of 3x3 stride 2 (in ceil mode, as
    /// SqueezeNet's, and padded), 2x2 stride 2 and 3x3 stride 1, in bands
    /// of 1 and 2 pooled rows up to the whole output, partial blocks of
    /// channels, two images: against both definitions at every level.
    #[test]
    fn with_a_max_pool_matches_the_definitions() {
        let mut cases = 0;
        for (case, (n, c, m, h, w, k, s, p)) in (0u32..).zip([
            (2, 3, 20, 29, 31, 3, 2, 0),
            (1, 1, 16, 12, 17, 3, 1, 1),
            (1, 4, 33, 19, 15, 5, 2, 2),
        ]) {
            let (g, weights, bias, input) = case_data(case, (n, c, m, h, w, k, s, p));
            let op = Stem::new(g, m, &weights, &bias, Some((0.0, f32::INFINITY)), true);
            let conv = reference(&op, &weights, &bias, n, &input);
            for &(pk, ps, pp, ceil) in &JOINED_POOLS {
                let pool = pool_over((m, g.out_hw), (pk, ps, pp), ceil);
                let want = max_pool(&pool, n * m, &conv);
                for band in [1, 2, pool.out_hw.0] {
                    let op = op.with_pool(pool, band);
                    for simd in levels("stem with max pool", ALL_LEVELS) {
                        let mut got = vec![f32::NAN; want.len()];
                        op.compute_with(&input, &mut got, simd).unwrap();
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                                "{g:?} -> {m}, {pool:?} band {band} {simd:?} at {i}: {a} vs {b}"
                            );
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases >= 36, "{cases}");
    }

    /// SqueezeNet's head, smaller: ONNX `Conv`, `Relu`, ceil-mode
    /// `MaxPool` become one operator whose results are tract's.
    #[test]
    fn install_joins_a_stem_to_its_pool() {
        use crate::ops::testing::onnx;
        let nodes = vec![
            onnx::node(
                "Conv",
                &["x", "w", "b"],
                "c",
                vec![onnx::ints("strides", &[2, 2])],
            ),
            onnx::node("Relu", &["c"], "r", vec![]),
            onnx::max_pool("r", "y", (3, 2), vec![onnx::int("ceil_mode", 1)]),
        ];
        let weights = vec![
            onnx::weights("w", vec![24, 3, 3, 3], 1),
            onnx::weights("b", vec![24], 2),
        ];
        let model = onnx::decluttered(nodes, weights, &[1, 3, 57, 50], 17);
        let x = Tensor::from_shape(&[1, 3, 57, 50], &noise(3 * 57 * 50, 7)).unwrap();
        let want = run_optimized(model.clone(), &x);
        let mut ours = model;
        crate::ops::install(&mut ours).unwrap();
        let names: Vec<String> = ours.nodes.iter().map(|n| n.op.name().to_string()).collect();
        assert!(!names.iter().any(|n| n.contains("MaxPool")), "{names:?}");
        let joined = ours
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<Stem>())
            .filter(|s| s.pool.is_some());
        assert_eq!(joined.count(), 1, "{names:?}");
        let got = run_optimized(ours, &x);
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Two threads split the output channels, partial blocks included.
    #[test]
    fn threads_write_what_one_thread_writes() {
        let g = Geometry {
            channels: 3,
            in_hw: (40, 40),
            out_hw: (20, 20),
            kernel: 3,
            stride: (2, 2),
            pad: (1, 1),
        };
        let m = 40;
        let op = Stem::new(
            g,
            m,
            &noise(m * 27, 7),
            &noise(m, 8),
            Some((0.0, 6.0)),
            true,
        );
        let input = noise(2 * 3 * 40 * 40, 9);
        let mut one = vec![f32::NAN; 2 * m * 400];
        op.compute(&input, &mut one).unwrap();
        let mut two = vec![f32::NAN; one.len()];
        crate::ops::OperatorPool::new(2)
            .run(|| op.compute(&input, &mut two))
            .unwrap();
        assert!(same_bits(&one, &two)); // And joined to a pool, in bands of 3 pooled rows.
        let pooled = op.with_pool(pool_over((m, g.out_hw), (3, 2, 1), false), 3);
        let mut one = vec![f32::NAN; 2 * m * 100];
        pooled.compute(&input, &mut one).unwrap();
        let mut two = vec![f32::NAN; one.len()];
        crate::ops::OperatorPool::new(2)
            .run(|| pooled.compute(&input, &mut two))
            .unwrap();
        assert!(one.iter().all(|v| v.is_finite()));
        assert!(same_bits(&one, &two));
    }

    #[test]
    fn takes_the_stem_of_the_bundled_model_and_matches_tract() {
        let model = bundled_decluttered();
        let mut ours = model.clone();
        assert_eq!(install(&mut ours).unwrap(), 1);
        let input = Tensor::from_shape(&[1, 3, 224, 224], &noise(3 * 224 * 224, 11)).unwrap();
        let (want, got) = (run_optimized(model, &input), run_optimized(ours, &input));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

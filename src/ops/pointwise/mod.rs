//! Our own 1x1 convolution, put in place of tract's matrix product.
//!
//! Why: on MobileNetV2 the 34 pointwise (1x1) convolutions are 90% of the
//! arithmetic. tract runs them as a packed matrix product: every layer first
//! re-packs its activations into tract's panel layout (`OptMatMulPack`,
//! about 11% of inference), and the large early layers ran at 20-55 GMAC/s
//! (`onnx-lambda profile --by-node`, docs/operators.md).
//!
//! How: a 1x1 convolution on an NCHW image is `out[M x S] = W[M x K] ·
//! x[K x S]` with `S` the pixels, and both `x` and `out` are row-major with
//! the pixels contiguous. So the activations need no packing at all: a
//! register tile of 8 output channels by up to 48 pixels reads, for each
//! input channel, 3 contiguous vectors of `x` and 8 weights (broadcast from
//! a copy of `W` packed once at load time, 8 channels interleaved), and
//! does 24 FMAs. Bias, ReLU6 (or MobileNetV3's `HardSwish`) and the
//! residual `Add` of an inverted residual block are applied to the tile in
//! registers before its only store.
//! Masked loads and stores take the last, partial vector of a row, so no
//! lane reads or writes outside the tensors.
//!
//! [`install`] swaps the operator in on the decluttered graph, where tract
//! has already turned each 1x1 convolution into an `EinSum` (`IHW,OI->OHW`)
//! followed by its bias `Add`. It runs where AVX2 and FMA (x86_64) or
//! NEON (aarch64) are present: elsewhere (old x86) tract's kernels stay.

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::{
    following_affine, following_clamp, following_per_axis, following_residual, hardswish,
    par_planes, replace_with, same_bits, same_clamp, Level, Simd,
};

/// Output channels interleaved in the packed weights (one AVX-512 tile).
pub(crate) const PANEL: usize = 8;

/// Most vectors of pixels one tile covers.
const MAX_VECS: usize = 3;

/// The sizes of one layer's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Images in a run (each its own product).
    pub images: usize,
    /// Output channels.
    pub m: usize,
    /// Input channels.
    pub k: usize,
    /// Pixels per channel plane.
    pub pixels: usize,
}

/// What a layer applies to the product before its store.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue {
    /// Clamp after the bias (the ReLU6 of an expansion layer).
    pub pre: Option<(f32, f32)>,
    /// ONNX's `HardSwish` after that (MobileNetV3's activation): see
    /// [`following_hard_swish`].
    pub hard_swish: bool,
    /// Whether a second input, of the output's shape, is added after that
    /// (the residual connection of an inverted residual block).
    pub residual: bool,
    /// Clamp after the residual.
    pub post: Option<(f32, f32)>,
}

/// `out = clamp(clamp(W · x + bias) + residual)` per image, on f32 tensors
/// laid out `[images, K, pixels]` into `[images, M, pixels]` (whatever the
/// axes are called: the shapes are kept to check inputs and name outputs).
#[derive(Debug, Clone)]
pub(crate) struct Pointwise {
    dims: Dims,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
    /// `W` in panels of [`PANEL`] output channels: panel `p`, input channel
    /// `k`, lane `r` holds `W[p * PANEL + r][k]`; missing channels are zero.
    weights: Arc<[f32]>,
    /// Bias, zero-padded to whole panels.
    bias: Arc<[f32]>,
    epilogue: Epilogue,
}

/// A layer's weights as its graph stores them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// `W[m][k]`, row-major: a 1x1 convolution's `[M, K, 1, 1]`.
    Rows(&'a [f32]),
    /// `W[k][m]`, row-major: a channels-last linear layer's `[K, M]`,
    /// whose rows hold each panel's lanes side by side.
    Columns(&'a [f32]),
}

impl Weights<'_> {
    /// In panels of [`PANEL`] output channels (see [`Pointwise`]).
    pub(super) fn packed(self, m: usize, k: usize) -> Vec<f32> {
        let mut packed = vec![0f32; m.div_ceil(PANEL) * PANEL * k];
        self.pack_into(m, k, &mut packed);
        packed
    }

    /// [`Weights::packed`] into `packed`, zeros (`m` rounded up to whole
    /// panels, by `k`), for a caller that packs several matrices into one
    /// buffer.
    pub(super) fn pack_into(self, m: usize, k: usize, packed: &mut [f32]) {
        assert_eq!(packed.len(), m.div_ceil(PANEL) * PANEL * k, "packed");
        match self {
            Weights::Rows(w) => {
                assert_eq!(w.len(), m * k, "weights");
                for (row, w) in w.chunks_exact(k.max(1)).enumerate().take(m) {
                    let panel = &mut packed[row / PANEL * PANEL * k..][..PANEL * k];
                    for (kk, v) in w.iter().enumerate() {
                        panel[kk * PANEL + row % PANEL] = *v;
                    }
                }
            }
            // Panel by panel, so the writes run in order and the reads
            // are strided runs of a panel's width.
            Weights::Columns(w) => {
                assert_eq!(w.len(), m * k, "weights");
                for (p, panel) in packed.chunks_exact_mut(PANEL * k.max(1)).enumerate() {
                    let lanes = (m - p * PANEL).min(PANEL);
                    for (kk, out) in panel.chunks_exact_mut(PANEL).enumerate() {
                        out[..lanes].copy_from_slice(&w[kk * m + p * PANEL..][..lanes]);
                    }
                }
            }
        }
    }
}

impl Pointwise {
    /// `bias` has `m` values.
    pub(crate) fn new(
        dims: Dims,
        (in_shape, out_shape): (&[usize], &[usize]),
        weights: Weights<'_>,
        bias: &[f32],
        epilogue: Epilogue,
    ) -> Pointwise {
        let Dims { m, k, .. } = dims;
        assert_eq!(bias.len(), m, "bias");
        assert_eq!(
            in_shape.iter().product::<usize>(),
            dims.images * k * dims.pixels
        );
        assert_eq!(
            out_shape.iter().product::<usize>(),
            dims.images * m * dims.pixels
        );
        let panels = m.div_ceil(PANEL);
        let packed = weights.packed(m, k);
        let mut padded = bias.to_vec();
        padded.resize(panels * PANEL, 0.0);
        Pointwise {
            dims,
            in_shape: in_shape.into(),
            out_shape: out_shape.into(),
            weights: packed.into(),
            bias: padded.into(),
            epilogue,
        }
    }

    pub(crate) fn dims(&self) -> Dims {
        self.dims
    }

    pub(crate) fn in_shape(&self) -> &[usize] {
        &self.in_shape
    }

    pub(crate) fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    pub(crate) fn has_residual(&self) -> bool {
        self.epilogue.residual
    }

    /// The operator with a `HardSwish` after its bias and clamp (a stem's
    /// rows, `stem.rs`); it has no residual.
    pub(crate) fn with_hard_swish(mut self, hard_swish: bool) -> Pointwise {
        assert!(!self.epilogue.residual, "a HardSwish before a residual");
        self.epilogue.hard_swish = hard_swish;
        self
    }

    /// Whether this CPU runs the operator (AVX2 and FMA, or NEON).
    pub(crate) fn available() -> TractResult<()> {
        Isa::of(Level::detect()).map(|_| ())
    }

    /// Output channels `channels` of one image, as `channels.len()` planes
    /// in `out`, for an operator that consumes the planes as they come
    /// (`fused.rs`). No residual: that would be the whole tensor's.
    pub(crate) fn compute_channels(
        &self,
        x: &[f32],
        channels: Range<usize>,
        out: &mut [f32],
    ) -> TractResult<()> {
        let Dims { k, m, pixels, .. } = self.dims;
        ensure!(!self.epilogue.residual && x.len() == k * pixels && channels.end <= m);
        ensure!(
            out.len() == channels.len() * pixels,
            "pointwise channel planes"
        );
        let isa = Isa::of(Level::detect())?;
        let job = Image {
            x,
            residual: None,
            // Rows before `channels.start` are never written.
            out: out.as_mut_ptr().wrapping_sub(channels.start * pixels),
            prefetch_out: false,
        };
        self.image(isa, &job, channels);
        Ok(())
    }

    /// Whether [`Pointwise::compute_blocked`] runs at `level` (x86: the
    /// AVX2 tile at both levels).
    pub(crate) fn blocks_at(level: Level) -> bool {
        Isa::of(level).is_ok_and(|isa| isa.blocked.is_some())
    }

    /// Output channels of `panels` (one or two whole panels) of one image,
    /// channel-blocked for a depthwise layer that reads them so
    /// (`fused.rs`): `out` holds one block per panel, and in each, pixel
    /// `i`'s [`PANEL`] channels, epilogue applied, are one vector at
    /// `at[i]`, none where `at[i]` is `usize::MAX`. Input channel `k` is
    /// the `pixels` values of `x` from `rows[k]` (a stem's taps in its
    /// phase scratch, `stem.rs`), or from `k * pixels` without `rows`. An
    /// error unless [`Pointwise::blocks_at`] `level`.
    pub(crate) fn compute_blocked(
        &self,
        (x, rows): (&[f32], Option<&[usize]>),
        panels: Range<usize>,
        at: &[usize],
        out: &mut [f32],
        level: Level,
    ) -> TractResult<()> {
        let Dims { k, m, pixels, .. } = self.dims;
        let Some(run) = Isa::of(level)?.blocked else {
            bail!("no channel-blocked tile at {level:?}");
        };
        ensure!(!self.epilogue.residual);
        match rows {
            Some(rows) => ensure!(
                rows.len() == k
                    && rows
                        .iter()
                        .all(|r| r.checked_add(pixels).is_some_and(|e| e <= x.len())),
                "input rows inside the input"
            ),
            None => ensure!(x.len() == k * pixels, "input size"),
        }
        ensure!(
            matches!(panels.len(), 1 | 2) && (panels.end - 1) * PANEL < m,
            "one or two panels of the layer"
        );
        let block = out.len() / panels.len();
        ensure!(
            at.len() == pixels && block >= PANEL,
            "one position per pixel"
        );
        // A plain compare over the positions, which LLVM vectorises: with
        // an overflow-checked sum this check was 9% of a 112x112 pair.
        let last = block - PANEL;
        ensure!(
            at.iter().all(|&a| a == usize::MAX || a <= last),
            "channel-blocked positions inside the block"
        );
        let job = Blocked {
            k,
            panels: panels.len(),
            w: self.weights[panels.start * PANEL * k..].as_ptr(),
            bias: self.bias[panels.start * PANEL..].as_ptr(),
            x: x.as_ptr(),
            ld: pixels,
            rows,
            at,
            out: out.as_mut_ptr(),
            block,
            pre: self.epilogue.pre,
            hard_swish: self.epilogue.hard_swish,
            post: self.epilogue.post,
        };
        // SAFETY: `Isa::of` chose the kernel for a `Level` this CPU has;
        // it reads `k` rows of `pixels` values of `x` (where checked
        // above), the panels' weights
        // and biases (padded to whole panels), and writes `PANEL` values at
        // each position of each panel's block, checked above to be inside.
        unsafe { run(&job) };
        Ok(())
    }

    /// Computes `output` from `input` (and the residual, when the epilogue
    /// has one), splitting the output channels across tract's executor
    /// when one is installed.
    pub(crate) fn compute(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> TractResult<()> {
        self.compute_with(input, residual, output, Level::detect())
    }

    /// [`Pointwise::compute`] with the given instruction set.
    fn compute_with(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        level: Level,
    ) -> TractResult<()> {
        let Dims {
            images,
            m,
            k,
            pixels,
        } = self.dims;
        ensure!(input.len() == images * k * pixels, "pointwise input size");
        ensure!(output.len() == images * m * pixels, "pointwise output size");
        ensure!(
            residual.map(<[f32]>::len) == self.epilogue.residual.then_some(output.len()),
            "pointwise residual size"
        );
        let isa = Isa::of(level)?;
        if output.is_empty() {
            return Ok(());
        }
        let macs = images * m * k * pixels;
        if images == 1 && m <= pixels {
            return self.by_strips(isa, input, residual, output, macs);
        }
        par_planes(output, (pixels, m, PANEL), macs, |rows, chunk| {
            // The chunk's first row is global row `rows.start`; rows
            // before it belong to other threads and are never written.
            let base = chunk.as_mut_ptr().wrapping_sub(rows.start * pixels);
            for image in rows.start / m..rows.end.div_ceil(m) {
                let own = rows.start.max(image * m) - image * m
                    ..rows.end.min((image + 1) * m) - image * m;
                let job = Image {
                    x: &input[image * k * pixels..][..k * pixels],
                    residual: residual.map(|r| r[image * m * pixels..].as_ptr()),
                    out: base.wrapping_add(image * m * pixels),
                    prefetch_out: true,
                };
                self.image(isa, &job, own);
            }
            Ok(())
        })
    }

    /// One image whose pixels outnumber its output channels, split over
    /// the pool by strips of pixels. Split by panels of channels instead,
    /// every thread read all of `x` once per panel it took: a 144 -> 24
    /// layer at 56x56 (3 panels) read 1.8 MB three times over, and took
    /// 0.29-0.34 ms on two cores against 0.33 on one. By strips, each
    /// thread reads its own part of `x` once: 0.17 ms on two cores, the
    /// 96 -> 24 layer 0.19-0.26 -> 0.10 (`profile --by-node --split 2`,
    /// three alternating runs); one image on two cores 7.74 -> 7.17 ms
    /// (`bench --batch-size 1`, medians of 6 alternating runs; AMD EPYC
    /// Zen 4). One thread runs the same strips in the same order.
    fn by_strips(
        &self,
        isa: Isa,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        macs: usize,
    ) -> TractResult<()> {
        let Dims { m, pixels, .. } = self.dims;
        let out = SharedOut(output.as_mut_ptr());
        let mut units = vec![(); strips(pixels, isa).count()];
        par_chunks_mut(&mut units, 1, macs, |first, chunk| {
            let job = Image {
                x: input,
                residual: residual.map(<[f32]>::as_ptr),
                out: out.get(),
                prefetch_out: true,
            };
            for strip in strips(pixels, isa).skip(first).take(chunk.len()) {
                self.strip(isa, &job, strip, 0..m);
            }
            Ok(())
        })
    }

    /// Channels `rows` of one image. When the weights outweigh the
    /// activations (more channels than pixels: the 7x7 and 14x14 layers) a
    /// panel of weights stays in cache while every strip of pixels passes;
    /// otherwise a strip of `x` stays while every panel passes.
    fn image(&self, isa: Isa, job: &Image<'_>, rows: Range<usize>) {
        let Dims { m, pixels, .. } = self.dims;
        if rows.is_empty() {
            return;
        }
        let first_panel = rows.start / PANEL * PANEL;
        if m > pixels {
            for p0 in (first_panel..rows.end).step_by(PANEL) {
                let panel = rows.start.max(p0)..rows.end.min(p0 + PANEL);
                for strip in strips(pixels, isa) {
                    self.strip(isa, job, strip, panel.clone());
                }
            }
        } else {
            for strip in strips(pixels, isa) {
                self.strip(isa, job, strip, rows.clone());
            }
        }
    }

    /// Channels `rows` of one strip of pixels, tile by tile.
    fn strip(&self, isa: Isa, job: &Image<'_>, strip: Strip, rows: Range<usize>) {
        let Dims { k, pixels, .. } = self.dims;
        // Every tile is a panel of output channels (AVX2 holds half of one
        // in registers at a time).
        let run = match strip.kind {
            Kind::Vectors { .. } => isa.tile,
            Kind::Columns => isa.columns,
        };
        for r0 in (rows.start / PANEL * PANEL..rows.end).step_by(PANEL) {
            let at = r0 * pixels + strip.first;
            let tile = Tile {
                k,
                taps: &[0],
                w: self.weights[r0 / PANEL * PANEL * k + r0 % PANEL..].as_ptr(),
                bias: self.bias[r0..].as_ptr(),
                x: job.x[strip.first..].as_ptr(),
                ld: pixels,
                out_ld: pixels,
                out: job.out.wrapping_add(at),
                residual: job.residual.map(|r| r.wrapping_add(at)),
                store: rows.start.max(r0) - r0..rows.end.min(r0 + PANEL) - r0,
                strip,
                prefetch_out: job.prefetch_out,
                pre: self.epilogue.pre,
                hard_swish: self.epilogue.hard_swish,
                post: self.epilogue.post,
            };
            // SAFETY: `Isa::of` chose the kernels for a `Level` this CPU
            // has; the tile's reads stay inside `x`, the weights and the bias
            // (masked past the row's end), and it writes only rows `store`
            // of the strip's pixels, which this chunk owns.
            unsafe { run(&tile) };
        }
    }
}

/// How far ahead of the tile the weights are prefetched, in floats (2 KiB:
/// 64 input channels of a panel). A layer's weights come from L3 or memory
/// once per image, and the tile reads them at 32 bytes per input channel,
/// too slowly and across too many 4 KiB pages for the hardware prefetcher
/// to run ahead: with this, the 7x7 layers went from 70 to 105 GMAC/s and
/// the 14x14 from 100 to 115, the whole model 4.7-5.0 -> 4.0-4.4 ms
/// (`profile --by-node --threads 1`, AMD EPYC Zen 5, five runs alternating
/// with the same build without it). 1 and 4 KiB ahead measured the same.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PREFETCH_AHEAD: usize = 512;

/// How far ahead of each store the AVX2 tile prefetches the output, in
/// floats: the same row of the next strip. In the larger layers a strip's
/// tiles write to every output row in turn, too many streams for the
/// hardware prefetcher, and each store waited for its line (the output of
/// 24 -> 144 channels at 56x56 is 1.8 MB, beyond L2). With it the 1x1
/// layers went 7.73 -> 7.43 ms in all and the 112x112 layer 0.46 -> 0.32
/// (`profile --by-node --threads 1`, AMD EPYC Zen 2, three runs
/// alternating). Not in the joined expansion (`fused.rs`), whose output
/// is an L2 scratch: there it cost 0.1 ms. The residual, read at the same
/// places, is prefetched the same way: ResNet-50's 64 -> 256 layers at
/// 56x56 that add one went 2.5-2.8 -> 1.4-1.7 ms, its 1x1 layers 57.0 ->
/// 50.2 ms in all (`--simd avx2`, per-node minima of 3 alternating runs,
/// AMD EPYC Zen 4). The AVX-512 tile prefetches at its start instead,
/// both the next tile of rows and the next strip (`prefetch_next`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const OUT_AHEAD: usize = MAX_VECS * 8;

/// Columns of pixels left after whole vectors below which they are done
/// as [`Kind::Columns`]: a tile of 8 channels by up to 7 pixels costs 1 to
/// 7 FMAs per input channel where a masked vector tile costs 8 (AVX-512;
/// 2 halves of 4 with AVX2), so 49 pixels cost 48 + 1 rather than 64.
const COLUMN_TAIL: usize = 8;

/// A run of pixels that one kind of tile covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Strip {
    pub(super) first: usize,
    pub(super) cols: usize,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Vectors of pixels by a tile of channels; the last vector is masked
    /// to `tail` lanes.
    Vectors { vecs: usize, tail: usize },
    /// One vector of 8 channels per pixel.
    Columns,
}

/// The strips that cover `pixels`: whole strips of [`MAX_VECS`] vectors,
/// then what is left as vectors (the last masked) or as columns. Where
/// that would leave one vector after whole strips, the last two strips
/// share the vectors (3 + 1 as 2 + 2): a one-vector AVX2 tile has 4
/// accumulators, and with the FMA's 4-cycle latency it runs one FMA a
/// cycle where two pipes are free (a 56-pixel row is 7 vectors).
pub(super) fn strips(pixels: usize, isa: Isa) -> impl Iterator<Item = Strip> {
    let rest = pixels % isa.lanes;
    let columns = if rest < COLUMN_TAIL { rest } else { 0 };
    let vectors = pixels - columns;
    let count = vectors.div_ceil(isa.lanes);
    let whole = count / MAX_VECS;
    let shared = count % MAX_VECS == 1 && whole > 0;
    let sizes = (0..whole)
        .map(move |i| {
            if shared && i + 1 == whole {
                MAX_VECS - 1
            } else {
                MAX_VECS
            }
        })
        .chain(match count % MAX_VECS {
            0 => None,
            1 if shared => Some(2),
            left => Some(left),
        });
    let tail = (columns > 0).then_some(Strip {
        first: vectors,
        cols: columns,
        kind: Kind::Columns,
    });
    sizes
        .scan(0, move |first, vecs| {
            let at = *first;
            let cols = (vectors - at).min(vecs * isa.lanes);
            *first += cols;
            Some(Strip {
                first: at,
                cols,
                kind: Kind::Vectors {
                    vecs,
                    tail: cols - (vecs - 1) * isa.lanes,
                },
            })
        })
        .chain(tail)
}

/// The output of a layer split by strips of pixels: each thread writes
/// only its strips' columns of every channel.
pub(super) struct SharedOut(pub(super) *mut f32);

// SAFETY: the threads given this pointer write disjoint strips of pixels.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(super) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// One image's operands.
struct Image<'a> {
    x: &'a [f32],
    residual: Option<*const f32>,
    /// Channel 0, pixel 0 of this image's output.
    out: *mut f32,
    /// See [`OUT_AHEAD`].
    prefetch_out: bool,
}

/// An instruction set's tile: its shape and its function.
#[derive(Clone, Copy)]
pub(super) struct Isa {
    /// f32 lanes per vector.
    pub(super) lanes: usize,
    pub(super) tile: unsafe fn(&Tile<'_>),
    /// [`Kind::Columns`] tiles (AVX2 + FMA for both x86 levels).
    pub(super) columns: unsafe fn(&Tile<'_>),
    /// Channel-blocked panels ([`Pointwise::compute_blocked`]): AVX2 + FMA
    /// for both x86 levels.
    pub(super) blocked: Option<unsafe fn(&Blocked<'_>)>,
}

impl Isa {
    /// The kernels of `level`: a `Level` is one this CPU has, so they may
    /// run wherever the `Isa` goes.
    pub(super) fn of(level: Level) -> TractResult<Isa> {
        match level.simd() {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Ok(Isa {
                lanes: 16,
                tile: avx512::tile,
                columns: avx2::columns,
                blocked: Some(avx2::blocked),
            }),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => Ok(Isa {
                lanes: 8,
                tile: avx2::tile,
                columns: avx2::columns,
                blocked: Some(avx2::blocked),
            }),
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => Ok(Isa {
                lanes: neon::LANES,
                tile: neon::tile,
                columns: neon::columns,
                blocked: None,
            }),
            _ => bail!("the pointwise operator needs AVX2 and FMA, or NEON"),
        }
    }
}

/// One register tile: a tile of output channels by one strip of pixels,
/// all input channels.
pub(super) struct Tile<'a> {
    pub(super) k: usize,
    /// Where each kernel tap's input channel 0 starts, from `x`: one zero
    /// for a 1x1 convolution, one offset per tap for `conv`. The tiles run
    /// channel by channel, every tap of a channel before the next channel
    /// (each filter's own order): a channel's taps read the same few lines
    /// of its rows one after the other, from L1. Tap by tap, each tap
    /// read every channel's lines again (64-512 channels of 3 rows: more
    /// than L1), and a 3x3 layer ran at 75-93% of the FMA peak against
    /// 96-99% (the AVX2 loop alone on one core, AMD EPYC Zen 4).
    pub(super) taps: &'a [usize],
    /// The tile's first channel in the packed weights; the next tap, then
    /// the next input channel, is [`PANEL`] further.
    pub(super) w: *const f32,
    /// The tile's first channel's bias.
    pub(super) bias: *const f32,
    /// Input channel 0 at the strip's first pixel; the next is `ld` further.
    pub(super) x: *const f32,
    /// Values between two input channels of `x`.
    pub(super) ld: usize,
    /// Values between two output channels of `out` and `residual`.
    pub(super) out_ld: usize,
    /// The tile's first channel at the strip's first pixel.
    pub(super) out: *mut f32,
    pub(super) residual: Option<*const f32>,
    /// Which of the tile's channels to store.
    pub(super) store: Range<usize>,
    pub(super) strip: Strip,
    /// Whether to prefetch the output and residual, see [`OUT_AHEAD`].
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) prefetch_out: bool,
    pub(super) pre: Option<(f32, f32)>,
    pub(super) hard_swish: bool,
    pub(super) post: Option<(f32, f32)>,
}

/// One or two panels of output channels by every pixel, written
/// channel-blocked (see [`Pointwise::compute_blocked`]). Only x86 has a
/// kernel that reads it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Blocked<'a> {
    pub(super) k: usize,
    /// 1 or 2.
    pub(super) panels: usize,
    /// The first panel's weights: input channel `k`'s [`PANEL`] at `w + k *
    /// PANEL`; the second panel's `PANEL * k` further.
    pub(super) w: *const f32,
    /// The panels' biases, [`PANEL`] each.
    pub(super) bias: *const f32,
    /// Input channel 0, pixel 0; the next channel is `ld` further, or
    /// each channel at its own offset from `x` in `rows`.
    pub(super) x: *const f32,
    pub(super) ld: usize,
    pub(super) rows: Option<&'a [usize]>,
    /// Per pixel, where its vector goes in a panel's block, or `usize::MAX`.
    pub(super) at: &'a [usize],
    /// The first panel's block; the second's is `block` further.
    pub(super) out: *mut f32,
    pub(super) block: usize,
    pub(super) pre: Option<(f32, f32)>,
    pub(super) hard_swish: bool,
    pub(super) post: Option<(f32, f32)>,
}

mod channels_last;

// Indexed loops over the accumulators on purpose: written with iterators
// (and the epilogue inline), LLVM kept every accumulator in memory and the
// tiles ran at a third of the speed.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx512.rs"]
mod avx512;

// Indexed loops over the accumulators on purpose: written with iterators
// (and the epilogue inline), LLVM kept every accumulator in memory and the
// tiles ran at a third of the speed.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx2.rs"]
mod avx2;

// Indexed loops over the accumulators, as in the x86 tiles.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "aarch64")]
#[path = "aarch64/neon.rs"]
mod neon;

/// Bitwise, so an operator equals itself even with NaN in its constants.
impl PartialEq for Pointwise {
    fn eq(&self, other: &Pointwise) -> bool {
        self.dims == other.dims
            && self.in_shape == other.in_shape
            && self.out_shape == other.out_shape
            && same_bits(&self.weights, &other.weights)
            && same_bits(&self.bias, &other.bias)
            && same_clamp(self.epilogue.pre, other.epilogue.pre)
            && self.epilogue.hard_swish == other.epilogue.hard_swish
            && self.epilogue.residual == other.epilogue.residual
            && same_clamp(self.epilogue.post, other.epilogue.post)
    }
}

impl Eq for Pointwise {}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "Pointwise(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}, {:?}", self.dims, self.epilogue)])
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // `compute` writes every element (each tile stores all its rows'
        // pixels, the last vector masked).
        let shapes = (&*self.in_shape, &*self.out_shape);
        eval_with_residual(
            "pointwise",
            &inputs,
            self.epilogue.residual,
            shapes,
            |x, r, y| self.compute(x, r, y),
        )
    }
}

/// `eval` of an operator whose epilogue may add a residual (`Pointwise`,
/// `conv::Conv`): checks the input's shape and the residual's, and runs
/// `compute(input, residual, output)` into an uninitialised output, which
/// it must write whole.
pub(crate) fn eval_with_residual(
    what: &str,
    inputs: &[TValue],
    residual: bool,
    (in_shape, out_shape): (&[usize], &[usize]),
    compute: impl FnOnce(&[f32], Option<&[f32]>, &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    ensure!(inputs.len() == 1 + usize::from(residual));
    ensure!(
        inputs[0].shape() == in_shape,
        "{what} input {:?} is not {in_shape:?}",
        inputs[0].shape()
    );
    // SAFETY: see the contract above: `compute` writes every element.
    let mut output = unsafe { Tensor::uninitialized::<f32>(out_shape)? };
    let src = inputs[0].try_as_plain_ram()?;
    let residual = match inputs.get(1) {
        Some(r) => {
            ensure!(r.shape() == out_shape, "{what} residual shape");
            Some(r.try_as_plain_ram()?)
        }
        None => None,
    };
    let residual = residual.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
    let mut dst = output.try_as_plain_ram_mut()?;
    compute(src.as_slice::<f32>()?, residual, dst.as_slice_mut::<f32>()?)?;
    Ok(tvec!(output.into_tvalue()))
}

impl TypedOp for Pointwise {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let Dims {
            images,
            m,
            k,
            pixels,
        } = self.dims;
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            (images * m * k * pixels).to_dim()
        )))
    }

    as_op!();
}

/// What follows node `id` that a tile's store can apply: a clamp, then a
/// residual `Add` and the clamp after it; with the residual's other
/// operand (the operator's second input) and the last node taken in.
pub(crate) fn following_epilogue(
    model: &TypedModel,
    id: usize,
) -> TractResult<(Epilogue, Option<OutletId>, usize)> {
    let (pre, after_pre) = following_clamp(model, id)?;
    let Some((other, add)) = following_residual(model, after_pre)? else {
        return Ok((
            Epilogue {
                pre,
                ..Epilogue::default()
            },
            None,
            after_pre,
        ));
    };
    let (post, last) = following_clamp(model, add)?;
    let epilogue = Epilogue {
        pre,
        residual: true,
        post,
        ..Epilogue::default()
    };
    Ok((epilogue, Some(other), last))
}

/// The epilogue with the `HardSwish` that reads node `last` alone, when
/// nothing but a clamp came before it, and the last node taken
/// (`hardswish.rs`). A layer that takes it has no tract node left between
/// it and its depthwise layer, so the two can join (`fused.rs`).
fn following_hard_swish(model: &TypedModel, epilogue: Epilogue, last: usize) -> (Epilogue, usize) {
    if epilogue.residual || epilogue.hard_swish || epilogue.post.is_some() {
        return (epilogue, last);
    }
    match hardswish::following(model, last) {
        Some(id) => {
            let epilogue = Epilogue {
                hard_swish: true,
                ..epilogue
            };
            (epilogue, id)
        }
        None => (epilogue, last),
    }
}

/// A bias and clamp after the residual `Add`, when nothing came between
/// the product and that `Add`. tract's declutter splits a product whose
/// input is a `Concat` into one product per part (`concat_then_einsum`)
/// and sums them before the bias: `(a + b) + bias` then ReLU, as SqueezeNet
/// and GoogLeNet read. The last part's tile takes it as `(a + bias) + b`,
/// the same sum in another order, and the clamp after it; otherwise bias
/// and ReLU stayed a pass of their own (`OptBinChain(Add+Max)`, 7% of
/// SqueezeNet's time).
fn late_bias(
    model: &TypedModel,
    layer: &Layer,
    taken: (Option<Vec<f32>>, Epilogue, usize),
) -> TractResult<(Option<Vec<f32>>, Epilogue, usize)> {
    let (bias, epilogue, last) = taken;
    if bias.is_some() || !epilogue.residual || epilogue.pre.is_some() || epilogue.post.is_some() {
        return Ok((bias, epilogue, last));
    }
    let (late, after) = following_bias(model, last, layer)?;
    if late.is_none() {
        return Ok((bias, epilogue, last));
    }
    let (post, last) = following_clamp(model, after)?;
    Ok((late, Epilogue { post, ..epilogue }, last))
}

/// Fewest pixels per plane worth a tile: below one vector (the classifier's
/// matrix-vector product) tract's kernels are better.
const MIN_PIXELS: usize = 16;

/// Replaces every 1x1 convolution this module handles (see the module docs)
/// in a decluttered graph, with the bias, clamps and residual `Add` after
/// it. Returns how many it replaced; none on an x86 CPU without AVX2 and FMA.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    if Pointwise::available().is_err() {
        return Ok(0);
    }
    let mut replaced = channels_last::install(model)?;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(einsum) = node.op_as::<EinSum>() else {
            continue;
        };
        let Some(mut layer) = describe(model, node, einsum)? else {
            continue;
        };
        // The bias, and a batch norm's scale and shift when the ONNX file
        // left it unfolded (DenseNet's): the scale folds into the
        // weights' rows.
        let channels = (&layer.out_shape[..], layer.channel_axis);
        let (affine, after_bias) = following_affine(model, id, channels)?;
        let bias = affine.map(|(scale, shift)| {
            let k = layer.dims.k;
            for (row, s) in layer.weights.chunks_exact_mut(k).zip(&scale) {
                row.iter_mut().for_each(|w| *w *= s);
            }
            shift
        });
        let (epilogue, residual, last) = following_epilogue(model, after_bias)?;
        let (bias, epilogue, last) = late_bias(model, &layer, (bias, epilogue, last))?;
        let (epilogue, last) = following_hard_swish(model, epilogue, last);
        let bias = bias.unwrap_or_else(|| vec![0.0; layer.dims.m]);
        let shapes = (&layer.in_shape[..], &layer.out_shape[..]);
        let op = Pointwise::new(
            layer.dims,
            shapes,
            Weights::Rows(&layer.weights),
            &bias,
            epilogue,
        );
        let mut inputs = tvec![node.inputs[0]];
        inputs.extend(residual);
        let name = node.name.clone();
        replace_with(model, "onnx-lambda pointwise", &inputs, (&name, op), last)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

/// A 1x1 convolution as tract's declutter leaves it.
struct Layer {
    dims: Dims,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
    /// Position of the channel axis in the output.
    channel_axis: usize,
    /// `W[m][k]`, row-major (`W[k][m]` in `channels_last`'s layers).
    weights: Vec<f32>,
}

/// An `EinSum` of f32 activations by constant f32 weights, as both kinds
/// of 1x1 layer read it.
struct Product {
    konst: Arc<Tensor>,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
    /// The activations', the weights' and the output's axes, a letter each.
    letters: [Vec<char>; 3],
}

/// The product `node` computes, if its shapes are known, its weights are
/// a constant and everything is f32, unquantised.
fn f32_product(
    model: &TypedModel,
    node: &TypedNode,
    einsum: &EinSum,
) -> TractResult<Option<Product>> {
    let facts = model.node_input_facts(node.id)?;
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (ins, outs) = einsum.axes.to_strs();
    let (Some(konst), Some(in_shape), Some(out_shape)) = (
        facts.get(1).and_then(|f| f.konst.clone()),
        facts[0].shape.as_concrete(),
        out_fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    if einsum.q_params.is_some()
        || node.inputs.len() != 2
        || einsum.operating_dt != f32::datum_type()
        || facts[0].datum_type != f32::datum_type()
        || konst.datum_type() != f32::datum_type()
        || ins.len() != 2
        || outs.len() != 1
    {
        return Ok(None);
    }
    let letters = [&ins[0], &ins[1], &outs[0]].map(|s| s.chars().collect::<Vec<char>>());
    Ok(Some(Product {
        konst,
        in_shape: in_shape.into(),
        out_shape: out_shape.into(),
        letters,
    }))
}

/// The layer an `EinSum` computes, if it is `[images..., K, pixels...] x
/// [M, K] -> [images..., M, pixels...]` with constant f32 weights (axes of
/// size 1 before `K` may be dropped), else `None`.
fn describe(model: &TypedModel, node: &TypedNode, einsum: &EinSum) -> TractResult<Option<Layer>> {
    let Some(Product {
        konst,
        in_shape,
        out_shape,
        letters: [a, b, o],
    }) = f32_product(model, node, einsum)?
    else {
        return Ok(None);
    };
    let (in_shape, out_shape) = (&in_shape[..], &out_shape[..]);
    let Some(axes) = matrix_axes(&a, &b, &o, in_shape) else {
        return Ok(None);
    };
    let (k, m) = (
        in_shape[axes.k_in.clone()].iter().product::<usize>(),
        out_shape[axes.m_out],
    );
    let pixels: usize = in_shape[axes.k_in.end..].iter().product();
    let images: usize = in_shape[..axes.k_in.start].iter().product();
    if konst.len() != m * k || pixels < MIN_PIXELS || m == 0 || k == 0 {
        return Ok(None);
    }
    // `W[m][k]`, `k` running over the contracted axes in the activations'
    // order (their memory order).
    let view = konst.to_plain_array_view::<f32>()?;
    if view.shape()[axes.weight_order[0]] != m {
        return Ok(None);
    }
    let weights = row_major(view.permuted_axes(tract_ndarray::IxDyn(&axes.weight_order)))?;
    Ok(Some(Layer {
        dims: Dims {
            images,
            m,
            k,
            pixels,
        },
        in_shape: in_shape.into(),
        out_shape: out_shape.into(),
        channel_axis: axes.m_out,
        weights,
    }))
}

/// The matrix's values row by row: a copy when they are stored so (the
/// bundled model), else a 2-D walk. Walked as a dynamic-rank view, the 2.2
/// M weights of MobileNetV2's 1x1 layers took 3 ms of every cold start
/// (`perf`); only weights with their contracted axes split in several (a
/// channel shuffle's) still walk so.
fn row_major(view: tract_ndarray::ArrayViewD<'_, f32>) -> TractResult<Vec<f32>> {
    if let Some(values) = view.as_slice() {
        return Ok(values.to_vec());
    }
    if view.ndim() == 2 {
        let view = view.into_dimensionality::<tract_ndarray::Ix2>()?;
        return Ok(view.iter().copied().collect());
    }
    Ok(view.iter().copied().collect())
}

/// Where a 1x1 convolution's axes are, in an `EinSum`'s terms.
struct MatrixAxes {
    /// The contracted axes (`K`, one or several adjacent ones: a channel
    /// shuffle's reshape splits the channels in two) in the activations.
    k_in: Range<usize>,
    /// `M` in the output.
    m_out: usize,
    /// The weights' axes in the order `M`, then the contracted axes as
    /// the activations hold them: read so, the weights are `W[m][k]`.
    weight_order: Vec<usize>,
}

/// `a` (activations), `b` (weights) and `o` (output), one letter per axis:
/// `a = P K S`, `b` = `M` and `K`'s letters in any order, `o = P' M S`,
/// where `K` is one or more adjacent axes, `S` (the pixels) is the same in
/// both and `P'` is `P` less axes of size 1.
fn matrix_axes(a: &[char], b: &[char], o: &[char], in_shape: &[usize]) -> Option<MatrixAxes> {
    let once = |s: &[char]| s.iter().all(|c| s.iter().filter(|d| *d == c).count() == 1);
    if a.len() != in_shape.len() || !once(a) || !once(b) || !once(o) {
        return None;
    }
    // Contracted: in the weights too. An axis of size 1 that the output
    // drops (ShuffleNet's first blocks: `NIHW,OI->OHW`) is in `P`.
    let contracted = |c: &char| a.contains(c) && b.contains(c) && !o.contains(c);
    let k_start = a.iter().position(contracted)?;
    let k_end = k_start + a[k_start..].iter().take_while(|c| contracted(c)).count();
    let ms: Vec<char> = b
        .iter()
        .copied()
        .filter(|c| o.contains(c) && !a.contains(c))
        .collect();
    let [mc] = ms[..] else { return None };
    let all_k = a[k_end..].iter().all(|c| !contracted(c));
    if !all_k || b.len() != k_end - k_start + 1 || !a[k_start..k_end].iter().all(|c| b.contains(c))
    {
        return None;
    }
    let m_out = o.iter().position(|&c| c == mc)?;
    let kept: Vec<char> = a[..k_start]
        .iter()
        .copied()
        .filter(|c| o.contains(c))
        .collect();
    let dropped_are_ones = a[..k_start]
        .iter()
        .zip(in_shape)
        .all(|(c, &d)| o.contains(c) || d == 1);
    let weight_order = std::iter::once(mc)
        .chain(a[k_start..k_end].iter().copied())
        .map(|c| b.iter().position(|&d| d == c))
        .collect::<Option<Vec<usize>>>()?;
    (a[k_end..] == o[m_out + 1..] && o[..m_out] == kept[..] && dropped_are_ones).then_some(
        MatrixAxes {
            k_in: k_start..k_end,
            m_out,
            weight_order,
        },
    )
}

/// The per-channel constant `Add` right after node `id` (the bias), as one
/// value per output channel, and the node the chain now ends at.
fn following_bias(
    model: &TypedModel,
    id: usize,
    layer: &Layer,
) -> TractResult<(Option<Vec<f32>>, usize)> {
    following_per_channel(model, id, layer, "Add")
}

/// The per-channel constant operand of a binary `op` right after node
/// `id`, and the node the chain now ends at.
fn following_per_channel(
    model: &TypedModel,
    id: usize,
    layer: &Layer,
    op: &str,
) -> TractResult<(Option<Vec<f32>>, usize)> {
    following_per_axis(model, id, op, (&layer.out_shape, layer.channel_axis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{
        bundled_decluttered, noise, run_plain, run_plain_all, VECTOR_LEVELS,
    };
    use tract_onnx::tract_core::axes::AxesMapping;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math;

    /// The definition, one output at a time.
    fn reference(d: Dims, w: &[f32], b: &[f32], e: Epilogue, x: &[f32], res: &[f32]) -> Vec<f32> {
        let clamp = |v: f32, c: Option<(f32, f32)>| c.map_or(v, |(lo, hi)| v.max(lo).min(hi));
        let mut out = vec![0f32; d.images * d.m * d.pixels];
        for i in 0..d.images {
            for m in 0..d.m {
                for p in 0..d.pixels {
                    let mut acc = b[m];
                    for k in 0..d.k {
                        acc += w[m * d.k + k] * x[(i * d.k + k) * d.pixels + p];
                    }
                    let at = (i * d.m + m) * d.pixels + p;
                    let mut v = clamp(acc, e.pre);
                    if e.hard_swish {
                        v *= (v / 6.0 + 0.5).clamp(0.0, 1.0);
                    }
                    if e.residual {
                        v += res[at];
                    }
                    out[at] = clamp(v, e.post);
                }
            }
        }
        out
    }

    /// The levels with a pointwise kernel: none is portable.
    fn levels() -> Vec<Level> {
        let levels = crate::ops::testing::levels("pointwise", VECTOR_LEVELS);
        assert!(levels.iter().all(|s| Isa::of(*s).is_ok()));
        levels
    }

    fn epilogues() -> [Epilogue; 6] {
        [
            Epilogue::default(),
            Epilogue {
                hard_swish: true,
                ..Epilogue::default()
            },
            Epilogue {
                pre: Some((-1.0, 2.0)),
                hard_swish: true,
                ..Epilogue::default()
            },
            Epilogue {
                pre: Some((0.0, 6.0)),
                ..Epilogue::default()
            },
            Epilogue {
                residual: true,
                ..Epilogue::default()
            },
            Epilogue {
                pre: Some((-0.5, 0.5)),
                residual: true,
                post: Some((0.0, 1.0)),
                ..Epilogue::default()
            },
        ]
    }

    fn layer(d: Dims, e: Epilogue, seed: u32) -> (Pointwise, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (w, b) = (noise(d.m * d.k, seed), noise(d.m, seed + 1));
        let in_shape = [d.images, d.k, d.pixels];
        let out_shape = [d.images, d.m, d.pixels];
        let op = Pointwise::new(d, (&in_shape, &out_shape), Weights::Rows(&w), &b, e);
        (op, w, b, noise(d.images * d.k * d.pixels, seed + 2))
    }

    #[test]
    fn matches_the_definition_on_odd_shapes_at_every_level() {
        let mut cases = 0;
        for (images, m, k, pixels) in [
            (1, 1, 1, 1),
            (2, 3, 5, 17),
            (1, 8, 16, 47),
            (1, 13, 7, 48),
            (2, 17, 33, 49),
            (1, 24, 3, 100),
            (3, 9, 40, 101),
            (1, 40, 12, 23),
            (2, 20, 9, 7),
            // Column tails of 2, 3 and 6 pixels, input channels not a
            // multiple of the columns' unrolling.
            (1, 8, 11, 18),
            (1, 5, 9, 19),
            (1, 9, 13, 22),
            // More input channels than stay in L1 for AVX2's second half
            // of a panel: the halves take turns, the last turn shorter;
            // a last panel of 4 rows has one half.
            (1, 12, 300, 37),
            (2, 5, 257, 30),
        ] {
            let d = Dims {
                images,
                m,
                k,
                pixels,
            };
            for e in epilogues() {
                let (op, w, b, x) = layer(d, e, cases + 3);
                let res = noise(images * m * pixels, cases + 5);
                let want = reference(d, &w, &b, e, &x, &res);
                for simd in levels() {
                    let mut got = vec![f32::NAN; want.len()];
                    let r = e.residual.then_some(&res[..]);
                    op.compute_with(&x, r, &mut got, simd).unwrap();
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{d:?} {e:?} {simd:?} at {i}: {a} vs {b}"
                        );
                    }
                }
                cases += 1;
            }
        }
        assert!(!levels().is_empty() || !cfg!(target_arch = "x86_64") || cases == 0);
    }

    /// The AVX2 tile's fast loop assumes whole last vectors (its masked
    /// loop spills); this is what makes that the loop that runs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_strips_end_in_whole_vectors_and_cover_every_pixel_once() {
        let Some(avx2) = Level::available()
            .into_iter()
            .find(|l| l.simd() == Simd::Avx2)
        else {
            return;
        };
        let isa = Isa::of(avx2).unwrap();
        for pixels in 1..400 {
            let (mut next, mut ones) = (0, 0);
            for strip in strips(pixels, isa) {
                assert_eq!(strip.first, next, "{pixels} pixels");
                next += strip.cols;
                if let Kind::Vectors { tail, vecs } = strip.kind {
                    assert_eq!(tail, isa.lanes, "{pixels} pixels: {strip:?}");
                    ones += usize::from(vecs == 1);
                }
            }
            assert_eq!(next, pixels);
            // A one-vector strip only where the vectors are fewer than 2.
            assert!(ones == 0 || pixels < 2 * isa.lanes, "{pixels} pixels");
        }
    }

    /// Two threads split the channels (whole panels when they can, single
    /// rows when they cannot), or one image's strips of pixels when it has
    /// fewer channels than pixels, and write exactly what one thread writes.
    #[test]
    fn threads_cover_every_channel_and_pixel_once() {
        if Pointwise::available().is_err() {
            return; // tract's kernels run the 1x1 layers on this CPU.
        }
        let pool = crate::ops::OperatorPool::new(2);
        // Channels before pixels (13, 96) and after (24, 96 over 50 pixels);
        // one image with fewer channels than pixels splits by strips of
        // pixels, anything else by panels of channels.
        for (images, m, pixels) in [1, 3].into_iter().flat_map(|i| {
            [(24, 150), (13, 150), (96, 150), (96, 50), (8, 300)].map(|(m, p)| (i, m, p))
        }) {
            let d = Dims {
                images,
                m,
                k: 20,
                pixels,
            };
            // The last: a clamp, the residual and a clamp.
            let e = epilogues()[5];
            let (op, _, _, x) = layer(d, e, m as u32);
            let res = noise(d.images * m * d.pixels, 9);
            let mut one = vec![f32::NAN; res.len()];
            op.compute(&x, Some(&res), &mut one).unwrap();
            let mut two = vec![f32::NAN; res.len()];
            pool.run(|| op.compute(&x, Some(&res), &mut two)).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&two), "{images} x m {m} pixels {pixels}");
        }
    }

    /// A graph with every shape of chain the installer fuses, and some it
    /// must not: the results are the same before and after. The product
    /// is scaled per channel (a batch norm's `Mul`) when `transposed`.
    fn chain(expr: (&str, &str), shape: [usize; 4], transposed: bool, shared: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let skip = model
            .add_source("skip", f32::fact([shape[0], 6, shape[2], shape[3]]))
            .unwrap();
        let w = noise(6 * shape[1], 7);
        let w = if transposed {
            Tensor::from_shape(&[shape[1], 6], &w).unwrap()
        } else {
            Tensor::from_shape(&[6, shape[1]], &w).unwrap()
        };
        let w = model.add_const("w", w).unwrap();
        let axes = AxesMapping::from_strs(&[expr.0, expr.1], &["NOHW"]).unwrap();
        let mut wire = model
            .wire_node("mm", EinSum::new(axes, f32::datum_type()), &[x, w])
            .unwrap()[0];
        if transposed {
            let s = Tensor::from_shape(&[1, 6, 1, 1], &noise(6, 9)).unwrap();
            let s = model.add_const("s", s).unwrap();
            wire = model.wire_node("scale", math::mul(), &[wire, s]).unwrap()[0];
        }
        let b = Tensor::from_shape(&[1, 6, 1, 1], &noise(6, 8)).unwrap();
        let b = model.add_const("b", b).unwrap();
        wire = model.wire_node("bias", math::add(), &[wire, b]).unwrap()[0];
        let lo = model.add_const("lo", tensor4(&[[[[0f32]]]])).unwrap();
        wire = model.wire_node("max", math::max(), &[wire, lo]).unwrap()[0];
        let hi = model.add_const("hi", tensor4(&[[[[0.5f32]]]])).unwrap();
        wire = model.wire_node("min", math::min(), &[hi, wire]).unwrap()[0];
        let mut outputs = vec![];
        if shared {
            outputs.push(wire);
        }
        wire = model
            .wire_node("residual", math::add(), &[skip, wire])
            .unwrap()[0];
        outputs.push(wire);
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    fn run(model: &TypedModel, shape: [usize; 4]) -> Vec<Vec<f32>> {
        let x = Tensor::from_shape(&shape, &noise(shape.iter().product(), 3)).unwrap();
        let skip_shape = [shape[0], 6, shape[2], shape[3]];
        let skip = Tensor::from_shape(&skip_shape, &noise(skip_shape.iter().product(), 4)).unwrap();
        run_plain_all(model, &[&x, &skip])
    }

    #[test]
    fn install_fuses_bias_clamp_and_residual_and_keeps_the_results() {
        if levels().is_empty() {
            return;
        }
        for (expr, transposed) in [(("NIHW", "OI"), false), (("NIHW", "IO"), true)] {
            for shared in [false, true] {
                let shape = [2, 5, 4, 9];
                let model = chain(expr, shape, transposed, shared);
                let want = run(&model, shape);
                let mut ours = model.clone();
                assert_eq!(install(&mut ours).unwrap(), 1);
                let binary = ours
                    .nodes
                    .iter()
                    .filter(|n| n.op_as::<TypedBinOp>().is_some());
                assert_eq!(
                    binary.count(),
                    usize::from(shared),
                    "{expr:?} shared {shared}"
                );
                let ops: Vec<&Pointwise> = ours
                    .nodes
                    .iter()
                    .filter_map(|n| n.op_as::<Pointwise>())
                    .collect();
                assert_eq!(ops[0].epilogue.pre, Some((0.0, 0.5)));
                // The clamp's output is also a model output: the residual
                // stays with tract.
                assert_eq!(ops[0].epilogue.residual, !shared, "shared {shared}");
                let got = run(&ours, shape);
                for (g, w) in got.iter().zip(&want) {
                    for (a, b) in g.iter().zip(w) {
                        assert!((a - b).abs() < 1e-5, "{expr:?} shared {shared}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// A 1x1 layer, its bias and a `HardSwish` (MobileNetV3's), as tract
    /// reads them: one operator, tract's results. A `HardSwish` after the
    /// residual `Add` is not the tile's (it applies it before): it stays.
    #[test]
    fn install_takes_the_hard_swish_after_the_bias() {
        if levels().is_empty() {
            return;
        }
        for after_residual in [false, true] {
            let shape = [2, 5, 4, 19];
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape)).unwrap();
            let skip = model.add_source("skip", f32::fact([2, 6, 4, 19])).unwrap();
            // Wide enough values that every side of the gate is reached.
            let w: Vec<f32> = noise(6 * 5, 7).iter().map(|v| 8.0 * v).collect();
            let w = model
                .add_const("w", Tensor::from_shape(&[6, 5], &w).unwrap())
                .unwrap();
            let axes = AxesMapping::from_strs(&["NIHW", "OI"], &["NOHW"]).unwrap();
            let mut wire = model
                .wire_node("mm", EinSum::new(axes, f32::datum_type()), &[x, w])
                .unwrap()[0];
            let b = Tensor::from_shape(&[1, 6, 1, 1], &noise(6, 8)).unwrap();
            let b = model.add_const("b", b).unwrap();
            wire = model.wire_node("bias", math::add(), &[wire, b]).unwrap()[0];
            if after_residual {
                wire = model
                    .wire_node("residual", math::add(), &[skip, wire])
                    .unwrap()[0];
            }
            let hs = tract_onnx::tract_core::ops::nn::hard_swish();
            wire = model.wire_node("hs", hs, &[wire]).unwrap()[0];
            if !after_residual {
                wire = model
                    .wire_node("residual", math::add(), &[skip, wire])
                    .unwrap()[0];
            }
            model.select_output_outlets(&[wire]).unwrap();
            let want = run(&model, shape);
            let mut ours = model.clone();
            assert_eq!(install(&mut ours).unwrap(), 1);
            let op = ours
                .nodes
                .iter()
                .find_map(|n| n.op_as::<Pointwise>())
                .unwrap();
            assert_eq!(
                op.epilogue.hard_swish, !after_residual,
                "after the residual {after_residual}"
            );
            let left = ours.nodes.iter().filter(|n| {
                n.op_as::<tract_onnx::tract_core::ops::element_wise::ElementWiseOp>()
                    .is_some()
            });
            assert_eq!(left.count(), usize::from(after_residual));
            let got = run(&ours, shape);
            for (a, b) in got[0].iter().zip(&want[0]) {
                assert!(
                    (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                    "{after_residual}: {a} vs {b}"
                );
            }
        }
    }

    /// A product over a `Concat` of `parts` inputs as tract's declutter
    /// leaves it (`concat_then_einsum`): one product per part, summed,
    /// then the bias and the ReLU: `((a + b) + c) + bias`, `max 0`.
    fn split_product(parts: usize, shape: [usize; 4]) -> TypedModel {
        let mut model = TypedModel::default();
        let mut sum = None;
        for part in 0..parts {
            let x = model
                .add_source(format!("x{part}"), f32::fact(shape))
                .unwrap();
            let w = Tensor::from_shape(&[6, shape[1]], &noise(6 * shape[1], part as u32)).unwrap();
            let w = model.add_const(format!("w{part}"), w).unwrap();
            let axes = AxesMapping::from_strs(&["NIHW", "OI"], &["NOHW"]).unwrap();
            let product = EinSum::new(axes, f32::datum_type());
            let y = model
                .wire_node(format!("mm{part}"), product, &[x, w])
                .unwrap()[0];
            sum = Some(match sum {
                None => y,
                Some(s) => model
                    .wire_node(format!("add{part}"), math::add(), &[s, y])
                    .unwrap()[0],
            });
        }
        let b = Tensor::from_shape(&[1, 6, 1, 1], &noise(6, 8)).unwrap();
        let b = model.add_const("b", b).unwrap();
        let wire = model
            .wire_node("bias", math::add(), &[sum.unwrap(), b])
            .unwrap()[0];
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let y = model.wire_node("relu", math::max(), &[wire, zero]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// The sum of a split product, its bias and its ReLU all go into the
    /// tiles: no tract node is left, and the results are tract's.
    #[test]
    fn takes_the_bias_and_relu_after_a_split_products_sum() {
        if levels().is_empty() {
            return;
        }
        for parts in [2, 3, 4] {
            let shape = [1, 5, 4, 9];
            let model = split_product(parts, shape);
            let inputs: Vec<Tensor> = (0..parts)
                .map(|p| {
                    let v = noise(shape.iter().product(), 10 + p as u32);
                    Tensor::from_shape(&shape, &v).unwrap()
                })
                .collect();
            let inputs: Vec<&Tensor> = inputs.iter().collect();
            let run = |m: &TypedModel| run_plain(m, &inputs);
            let want = run(&model);
            let mut ours = model.clone();
            assert_eq!(install(&mut ours).unwrap(), parts);
            let left: Vec<_> = ours
                .nodes
                .iter()
                .filter(|n| n.op_as::<TypedBinOp>().is_some())
                .map(|n| n.name.clone())
                .collect();
            assert!(left.is_empty(), "{parts} parts: tract still runs {left:?}");
            let got = run(&ours);
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{parts} parts: {a} vs {b}");
            }
        }
    }

    /// ShuffleNet's 1x1 layers after a channel shuffle: tract folds the
    /// shuffle's reshape into the product, so the channels are two axes,
    /// contracted together against weights `[O, a, I]`, with the batch
    /// axis dropped; and the batch axis of 1 dropped before one channel
    /// axis. Taken, and the results are tract's.
    #[test]
    fn takes_products_over_channels_split_in_two_axes() {
        if levels().is_empty() {
            return;
        }
        for (expr, shape, w_shape) in [
            (("aIHW", "OaI"), [5, 2, 4, 9], &[6, 5, 2][..]),
            (("IaHW", "OaI"), [2, 5, 4, 9], &[6, 5, 2]),
            (("IaHW", "IOa"), [2, 5, 4, 9], &[2, 6, 5]),
            // ShuffleNet's first blocks: a batch axis of 1 the output
            // drops, before the channels (tract's `OptMatMul` ran them).
            (("NIHW", "OI"), [1, 10, 4, 9], &[6, 10]),
        ] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape)).unwrap();
            let w = Tensor::from_shape(w_shape, &noise(60, 1)).unwrap();
            let w = model.add_const("w", w).unwrap();
            let axes = AxesMapping::from_strs(&[expr.0, expr.1], &["OHW"]).unwrap();
            let y = model
                .wire_node("mm", EinSum::new(axes, f32::datum_type()), &[x, w])
                .unwrap();
            model.select_output_outlets(&y).unwrap();
            let input = Tensor::from_shape(&shape, &noise(360, 2)).unwrap();
            let run = |m: &TypedModel| run_plain(m, &[&input]);
            let want = run(&model);
            let mut ours = model;
            assert_eq!(install(&mut ours).unwrap(), 1, "{expr:?}");
            let got = run(&ours);
            assert_eq!(got.len(), 6 * 36);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{expr:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn leaves_what_it_cannot_run_to_tract() {
        // Too few pixels (a classifier's matrix-vector product), and a
        // product over the pixels rather than the channels.
        for (shape, expr) in [
            ([1, 5, 1, 3], ("NIHW", "OI")),
            ([1, 5, 4, 9], ("NWHI", "OW")),
        ] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape)).unwrap();
            let dim = if expr.0 == "NIHW" { shape[1] } else { shape[3] };
            let w = Tensor::from_shape(&[6, dim], &noise(6 * dim, 1)).unwrap();
            let w = model.add_const("w", w).unwrap();
            let out = if expr.0 == "NIHW" { "NOHW" } else { "NIHO" };
            let axes = AxesMapping::from_strs(&[expr.0, expr.1], &[out]).unwrap();
            let y = model
                .wire_node("mm", EinSum::new(axes, f32::datum_type()), &[x, w])
                .unwrap();
            model.select_output_outlets(&y).unwrap();
            assert_eq!(install(&mut model).unwrap(), 0, "{shape:?} {expr:?}");
        }
    }

    /// A panel written channel-blocked holds each pixel's channels of the
    /// definition at that pixel's position, writes nothing else, and a
    /// position past the block is refused, not written.
    #[test]
    fn channel_blocked_panels_match_the_definition_at_their_positions() {
        let d = Dims {
            images: 1,
            m: 20,
            k: 7,
            pixels: 29,
        };
        let e = Epilogue {
            pre: Some((-0.2, 0.3)),
            hard_swish: true,
            ..Epilogue::default()
        };
        let (op, w, b, x) = layer(d, e, 7);
        let want = reference(d, &w, &b, e, &x, &[]);
        // Pixel i at vector 2i + 1; every fifth pixel nowhere.
        let at: Vec<usize> = (0..d.pixels)
            .map(|i| {
                if i % 5 == 4 {
                    usize::MAX
                } else {
                    (2 * i + 1) * PANEL
                }
            })
            .collect();
        let mut ran = 0;
        let block = (2 * d.pixels + 1) * PANEL;
        for level in levels() {
            // One panel or two, the last one partial (20 channels).
            for panels in [0..1, 1..2, 2..3, 0..2, 1..3] {
                let mut out = vec![f32::NAN; panels.len() * block];
                let result = op.compute_blocked((&x, None), panels.clone(), &at, &mut out, level);
                if !Pointwise::blocks_at(level) {
                    assert!(result.is_err(), "{level:?}");
                    assert!(out.iter().all(|v| v.is_nan()), "{level:?}: wrote");
                    continue;
                }
                result.unwrap();
                ran += 1;
                for (i, v) in out.chunks_exact(PANEL).enumerate() {
                    let (panel, i) = (panels.start + i / (block / PANEL), i % (block / PANEL));
                    let pixel = (i % 2 == 1).then_some(i / 2).filter(|p| p % 5 != 4);
                    for (lane, v) in v.iter().enumerate() {
                        let c = panel * PANEL + lane;
                        match pixel {
                            None => assert!(v.is_nan(), "{level:?}: vector {i} written"),
                            Some(p) if c < d.m => {
                                let r = want[c * d.pixels + p];
                                assert!((v - r).abs() <= 1e-5, "{level:?}: {c} at {p}: {v} vs {r}");
                            }
                            // Channels past the layer: zero weights and bias.
                            Some(_) => assert_eq!(*v, 0.0),
                        }
                    }
                }
                // The same rows read at their own offsets (a stem's taps):
                // scattered, in reverse order, with gaps; one past the
                // input's end refused.
                let gap = d.pixels + 3;
                let rows: Vec<usize> = (0..d.k).map(|r| (d.k - 1 - r) * gap + 2).collect();
                let mut spread = vec![f32::NAN; d.k * gap + 2];
                for (r, &at) in rows.iter().enumerate() {
                    spread[at..at + d.pixels].copy_from_slice(&x[r * d.pixels..][..d.pixels]);
                }
                let mut by_rows = vec![f32::NAN; out.len()];
                let input = (&spread[..], Some(&rows[..]));
                op.compute_blocked(input, panels.clone(), &at, &mut by_rows, level)
                    .unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&by_rows), bits(&out), "{level:?}: by rows");
                let mut past = rows.clone();
                past[3] = spread.len() - d.pixels + 1;
                let input = (&spread[..], Some(&past[..]));
                let refused = op.compute_blocked(input, panels.clone(), &at, &mut by_rows, level);
                assert!(refused.is_err(), "{level:?}: a row past the input");
                let mut short = vec![0.0; panels.len() * block - 3 * PANEL];
                let refused =
                    op.compute_blocked((&x, None), panels.clone(), &at, &mut short, level);
                assert!(refused.is_err(), "{level:?}: {panels:?}");
                assert!(
                    short.iter().all(|&v| v == 0.0),
                    "{level:?}: wrote past a refusal"
                );
            }
            let past = op.compute_blocked((&x, None), 2..4, &at, &mut vec![0.0; 2 * block], level);
            assert!(past.is_err(), "{level:?}: panels past the layer");
        }
        let x86 = levels().iter().any(|l| l.simd() == Simd::Avx2);
        assert_eq!(ran > 0, x86, "the x86 levels write blocked panels");
    }

    /// Weights stored as columns (a linear layer's `[K, M]`) pack into the
    /// panels their rows would, partial last panel included.
    #[test]
    fn columns_pack_as_their_rows() {
        for (m, k) in [(1, 1), (8, 3), (13, 70), (96, 384)] {
            let rows = noise(m * k, 3);
            let columns: Vec<f32> = (0..k)
                .flat_map(|kk| (0..m).map(move |o| (o, kk)))
                .map(|(o, kk)| rows[o * k + kk])
                .collect();
            let (a, b) = (Weights::Rows(&rows), Weights::Columns(&columns));
            assert_eq!(a.packed(m, k), b.packed(m, k), "{m}x{k}");
        }
    }

    /// On the bundled MobileNetV2: every 1x1 convolution is ours, with the
    /// ReLU6 of the 17 expansions and the 10 residual connections fused.
    #[test]
    fn takes_every_pointwise_layer_of_the_bundled_model() {
        if levels().is_empty() {
            return;
        }
        let mut model = bundled_decluttered();
        assert_eq!(install(&mut model).unwrap(), 34);
        let ops: Vec<&Pointwise> = model
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<Pointwise>())
            .collect();
        let count = |f: fn(&Epilogue) -> bool| ops.iter().filter(|op| f(&op.epilogue)).count();
        assert_eq!(count(|e| e.pre == Some((0.0, 6.0))), 17);
        assert_eq!(count(|e| e.residual), 10);
        assert_eq!(count(|e| e.post.is_some()), 0);
    }
}

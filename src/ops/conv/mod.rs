//! Our own general convolution: any kernel size, stride, dilation and
//! padding (asymmetric included), groups of at least a tile of output
//! channels, with its bias, the clamp after it (ReLU, ReLU6) and a
//! residual `Add` (and clamp) after that, as ResNet's blocks end. It takes
//! the convolutions the specialised operators leave: the dense 3x3 layers
//! of ResNet, SqueezeNet, DenseNet, GoogLeNet and RegNet (grouped), the 7x7
//! stems, ConvNeXt's patchify layers.
//!
//! Why: tract runs these as an im2col copy (after a `Pad` node) and a
//! packed matrix product. The copy writes `kernel area` times the input.
//!
//! How: as a direct convolution that reuses the 1x1 operator's register
//! tiles (`pointwise`). The input is copied once into a zero-padded buffer
//! split by stride phase: phase `(py, px)` holds the padded pixels
//! `(i * stride + py, j * stride + px)`, each phase plane `wp` columns
//! wide. Then for every kernel tap, output pixel `(y, x)` reads the pixel
//! `(y, x)` of one phase plane shifted by a fixed offset, so the
//! convolution is a sum over taps of 1x1 products on shifted planes, and
//! the pointwise tile runs it with its accumulators held across the taps.
//! The output is computed on the phase planes' grid, `wp` columns per row
//! (the columns past the output width are discarded), so a tile runs
//! along whole rows of pixels; the copy back into the output's own width
//! is the only other pass. Bias, clamps and residual are applied in
//! registers, or in that copy. Small planes with many channels (ResNet's
//! 7x7 layers) take the input as tap columns, repacked strip by strip
//! so that every tile reads it contiguously (`Conv::tiles`).
//!
//! A max pool that alone reads a layer's output joins it (`pooled`): the
//! output is then computed and pooled a band of rows at a time.
//!
//! It runs where `pointwise` does (AVX2 and FMA, or NEON); elsewhere
//! tract's convolution stays.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv as TractConv;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use crate::ops::depthwise::Geometry;
use crate::ops::pointwise::{
    eval_with_residual, following_epilogue, strips, Epilogue, Isa, Kind, SharedOut, Strip, Tile,
    Weights, PANEL,
};
use crate::ops::{replace_with, same_bits, same_clamp, weights_oihw, Level};

mod pooled;
mod winograd;
pub(crate) use pooled::install as install_pools;
use winograd::Winograd;

/// What one convolution computes, in the ONNX attributes' terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    pub images: usize,
    pub groups: usize,
    /// Input channels, all groups.
    pub c_in: usize,
    /// Output channels, all groups.
    pub c_out: usize,
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// Zero rows above and columns left of the input (those below and
    /// right follow from the output size).
    pub pad: (usize, usize),
}

impl Shape {
    fn c_in_group(&self) -> usize {
        self.c_in / self.groups
    }

    fn c_out_group(&self) -> usize {
        self.c_out / self.groups
    }

    fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    fn phases(&self) -> usize {
        self.stride.0 * self.stride.1
    }

    /// Furthest shift of a tap, in phase rows and columns.
    fn reach(&self) -> (usize, usize) {
        (
            (self.kernel.0 - 1) * self.dilation.0 / self.stride.0,
            (self.kernel.1 - 1) * self.dilation.1 / self.stride.1,
        )
    }

    /// Columns of a phase plane: the output row and the furthest tap.
    /// At stride 1 a row's right padding can be the next row's left
    /// padding, as the rows follow each other in the plane: a tap past a
    /// row's end reads the next row's zeros. That drops `min(left,
    /// right)` columns a row (3x3 layers with padding 1: 14 + 1 rather
    /// than 14 + 2, one computed pixel in 15 rather than 2 in 16
    /// discarded), while the row keeps room for its own left padding and
    /// pixels, and for the output row and the furthest tap.
    fn wp(&self) -> usize {
        let (wo, reach) = (self.out_hw.1, self.reach().1);
        let full = wo + reach;
        if self.stride.1 != 1 {
            return full;
        }
        let (w, pad) = (self.in_hw.1, self.pad.1);
        let shared = (pad + w).max(full.saturating_sub(pad)).max(wo).max(reach);
        full.min(shared)
    }

    fn macs(&self) -> usize {
        self.images * self.c_out * self.c_in_group() * self.taps() * self.out_hw.0 * self.out_hw.1
    }

    fn out_pixels(&self) -> usize {
        self.out_hw.0 * self.out_hw.1
    }

    /// The input layout for this layer: see [`Layout`].
    /// Tap columns where the furthest tap's columns are over a fifth of a
    /// row as wide as output and tap (the measured choice before rows
    /// shared their padding: 7x7 planes, where the grid now wastes 1 column
    /// in 8, still ran 13% faster on columns), and for rows under 8
    /// pixels; both only where a group's output channels make the copy
    /// cheap against the products. ResNet's stride-2 3x3 layers to 7x7 ran
    /// 13% faster on columns; RegNet's grouped ones (8 channels a group)
    /// 40% slower, and its stride-1 grouped 7x7 layers 0.23 -> 0.08 ms
    /// each on the grid (`profile --by-node --threads 1 --simd avx2`,
    /// minima of 4 alternating runs, AMD EPYC Zen 4): the copy is `taps`
    /// times the input for 8 output channels.
    fn layout(&self) -> Layout {
        let (wo, reach) = (self.out_hw.1, self.reach().1);
        let columns = self.groups * self.taps() * self.c_in_group() * self.out_pixels();
        let wide_groups = self.c_out_group() >= MIN_COLUMNS_GROUP_OUT;
        if (reach * 4 > wo || wo < 8) && wide_groups && columns * 4 <= MAX_COLUMNS_BYTES {
            Layout::Columns
        } else {
            Layout::Grid
        }
    }

    /// Values between two input channels of a tap, in `layout`: a
    /// channel's planes (its phases, or its taps' columns) follow each
    /// other, so a tile that takes every tap of a channel in turn reads
    /// one run of memory.
    fn ld(&self, layout: Layout) -> usize {
        match layout {
            Layout::Grid => self.phases() * self.grid_ld(),
            Layout::Columns => self.taps() * self.out_pixels(),
        }
    }

    /// Values of one group's input, in `layout`.
    fn group_len(&self, layout: Layout) -> usize {
        self.c_in_group() * self.ld(layout)
    }

    /// Pixels each output channel's tiles compute, in `layout`.
    fn computed(&self, layout: Layout) -> usize {
        match layout {
            Layout::Grid => self.out_hw.0 * self.wp(),
            Layout::Columns => self.out_pixels(),
        }
    }

    /// Values of one phase plane: every row a tap reads, and one more for
    /// the discarded columns of the last output row, which run past it.
    fn grid_ld(&self) -> usize {
        (self.out_hw.0 + self.reach().0 + 1) * self.wp()
    }

    /// Where tap `(ky, kx)` reads, from its channel's first plane.
    fn tap_offset(&self, layout: Layout, ky: usize, kx: usize) -> usize {
        match layout {
            Layout::Grid => {
                let (dy, dx) = (ky * self.dilation.0, kx * self.dilation.1);
                let phase = (dy % self.stride.0) * self.stride.1 + dx % self.stride.1;
                phase * self.grid_ld() + dy / self.stride.0 * self.wp() + dx / self.stride.1
            }
            Layout::Columns => (ky * self.kernel.1 + kx) * self.out_pixels(),
        }
    }
}

/// How a layer's input is copied before the tiles read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Zero-padded phase planes (the module docs): a copy the size of the
    /// input, and `wp - wo` discarded columns an output row.
    Grid,
    /// Each tap's window copied out, `[channel][tap][output pixel]` (an
    /// im2col): `taps` times the output's pixels, none discarded. For
    /// small planes, where the discarded columns cost most (a 7x7 output
    /// computes 9 columns a row on the grid) and the copy is small.
    Columns,
}

/// Fewest output channels a group for tap columns (narrow rows, small
/// planes): the copy is `taps` times the input, the products that many
/// times the group's output channels.
const MIN_COLUMNS_GROUP_OUT: usize = 32;

/// Largest [`Layout::Columns`] copy, in bytes: it is read once per panel
/// of output channels, and should stay in L2.
const MAX_COLUMNS_BYTES: usize = 2 << 20;

/// A convolution with bias and the pointwise epilogue (clamp, residual,
/// clamp), on f32 NCHW (or CHW) tensors.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    shape: Shape,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
    /// Per group, panels of [`PANEL`] output channels; in a panel, tap by
    /// tap, input channel by input channel, the panel's channels side by
    /// side (missing ones zero): the pointwise layout with the taps' input
    /// channels one after the other.
    weights: Arc<[f32]>,
    /// Per group, zero-padded to whole panels.
    bias: Arc<[f32]>,
    layout: Layout,
    /// Where each tap's input starts in `layout`.
    taps: Arc<[usize]>,
    epilogue: Epilogue,
    /// The max pool joined after it, over its output (`pooled`).
    pool: Option<Geometry>,
    /// The filters transformed for F(2x2, 3x3), where it computes the
    /// layer (`winograd`); `weights` and `taps` are then empty.
    winograd: Option<Winograd>,
}

impl Conv {
    /// `weights` are `[c_out][c_in / groups][kh][kw]`, `bias` has `c_out`
    /// values.
    pub(crate) fn new(
        shape: Shape,
        (in_shape, out_shape): (&[usize], &[usize]),
        weights: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
    ) -> Conv {
        if winograd::fits(&shape) {
            return Conv::winograd(shape, (in_shape, out_shape), weights, bias, epilogue);
        }
        Conv::with_layout(
            shape,
            (in_shape, out_shape),
            weights,
            bias,
            epilogue,
            shape.layout(),
        )
    }

    /// F(2x2, 3x3) rather than the direct tiles: `shape` must fit it.
    fn winograd(
        shape: Shape,
        shapes: (&[usize], &[usize]),
        weights: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
    ) -> Conv {
        assert_eq!(bias.len(), shape.c_out, "bias");
        let mut padded = bias.to_vec();
        padded.resize(shape.c_out.div_ceil(PANEL) * PANEL, 0.0);
        Conv {
            shape,
            in_shape: shapes.0.into(),
            out_shape: shapes.1.into(),
            weights: Arc::new([]),
            bias: padded.into(),
            layout: Layout::Grid,
            taps: Arc::new([]),
            epilogue,
            pool: None,
            winograd: Some(Winograd::new(&shape, weights)),
        }
    }

    fn with_layout(
        shape: Shape,
        (in_shape, out_shape): (&[usize], &[usize]),
        weights: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
        layout: Layout,
    ) -> Conv {
        let s = shape;
        let (kh, kw) = s.kernel;
        let (ci, co) = (s.c_in_group(), s.c_out_group());
        assert_eq!(weights.len(), s.c_out * ci * kh * kw, "weights");
        assert_eq!(bias.len(), s.c_out, "bias");
        let panels = co.div_ceil(PANEL);
        // Each filter `[channel][tap]` is a row of `k` weights, in the
        // order the tiles take them (see `Tile::taps`).
        let k = ci * kh * kw;
        let mut packed = Vec::with_capacity(s.groups * panels * PANEL * k);
        let mut padded = vec![0f32; s.groups * panels * PANEL];
        for g in 0..s.groups {
            let filters = &weights[g * co * k..][..co * k];
            packed.extend(Weights::Rows(filters).packed(co, k));
            padded[g * panels * PANEL..][..co].copy_from_slice(&bias[g * co..][..co]);
        }
        let taps: Vec<usize> = (0..kh)
            .flat_map(|ky| (0..kw).map(move |kx| s.tap_offset(layout, ky, kx)))
            .collect();
        Conv {
            shape,
            in_shape: in_shape.into(),
            out_shape: out_shape.into(),
            weights: packed.into(),
            bias: padded.into(),
            layout,
            taps: taps.into(),
            epilogue,
            pool: None,
            winograd: None,
        }
    }

    /// `residual` has the output's shape, when the epilogue has one.
    pub(crate) fn compute(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> TractResult<()> {
        self.compute_with(input, residual, output, Level::detect())
    }

    fn compute_with(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        level: Level,
    ) -> TractResult<()> {
        if let Some(pool) = self.pool {
            ensure!(residual.is_none(), "conv with a max pool takes no residual");
            let band = pooled::band_rows(&self.shape, &pool);
            return self.compute_pooled(input, output, level, (pool, band));
        }
        let s = self.shape;
        let (h, w) = s.in_hw;
        let (ho, wo) = s.out_hw;
        ensure!(input.len() == s.images * s.c_in * h * w, "conv input size");
        ensure!(
            output.len() == s.images * s.c_out * ho * wo,
            "conv output size"
        );
        ensure!(
            residual.map(<[f32]>::len) == self.epilogue.residual.then_some(output.len()),
            "conv residual size"
        );
        let isa = Isa::of(level)?;
        if let Some(winograd) = &self.winograd {
            for image in 0..s.images {
                let (x, y) = (s.c_in * h * w, s.c_out * ho * wo);
                let res = residual.map(|r| &r[image * y..][..y]);
                let out = &mut output[image * y..][..y];
                let e = (&self.bias[..], self.epilogue);
                winograd.compute(&s, isa, e, &input[image * x..][..x], res, out)?;
            }
            return Ok(());
        }
        let layout = self.layout;
        // The output grid, where the tiles write before the copy back:
        // `ho` rows of `wp` columns a channel.
        let ld = ho * s.wp();
        // Both copies write every value of `x`; the tiles write the rows
        // of `grid` that the copy back reads.
        let mut x = scratch(s.groups * s.group_len(layout))?;
        let mut x = x.try_as_plain_ram_mut()?;
        let x = x.as_slice_mut::<f32>()?;
        let path = Path::of(&s, layout, isa);
        let mut grid = scratch(if path == Path::Grid { s.c_out * ld } else { 0 })?;
        let mut grid = grid.try_as_plain_ram_mut()?;
        let grid = grid.as_slice_mut::<f32>()?;
        for image in 0..s.images {
            let planes = &input[image * s.c_in * h * w..][..s.c_in * h * w];
            let out = &mut output[image * s.c_out * ho * wo..][..s.c_out * ho * wo];
            let res = residual.map(|r| &r[image * s.c_out * ho * wo..][..s.c_out * ho * wo]);
            match layout {
                Layout::Columns => tap_columns(&s, planes, x),
                Layout::Grid => split_phases(&s, planes, x),
            }
            match path {
                Path::Whole => {
                    let runs = strips(ho * wo, isa).map(|r| (r.first, r.first, r));
                    self.tiles(isa, x, (out, ho * wo, res), &runs.collect::<Vec<_>>());
                }
                Path::Rows => {
                    let runs = (0..ho).flat_map(|y| {
                        strips(wo, isa).map(move |r| (y * s.wp() + r.first, y * wo + r.first, r))
                    });
                    self.tiles(isa, x, (out, ho * wo, res), &runs.collect::<Vec<_>>());
                }
                Path::Grid => {
                    let runs = strips(ho * s.wp(), isa).map(|r| (r.first, r.first, r));
                    // The residual is in the output's layout, not the grid's:
                    // the copy adds it.
                    self.tiles(isa, x, (grid, ld, None), &runs.collect::<Vec<_>>());
                    self.copy_back(grid, out, res);
                }
            }
        }
        Ok(())
    }

    /// One image's output grid (`ho` rows of `wp` columns a channel) into
    /// `out`, its discarded columns dropped, adding `residual` (laid out as
    /// `out`) and its clamp when given.
    fn copy_back(&self, grid: &[f32], out: &mut [f32], residual: Option<&[f32]>) {
        let s = self.shape;
        let ((ho, wo), wp, post) = (s.out_hw, s.wp(), self.epilogue.post);
        let _ = par_chunks_mut(out, ho * wo, out.len(), |first, chunk| {
            for (c, plane) in chunk.chunks_exact_mut(ho * wo).enumerate() {
                let from = &grid[(first + c) * ho * wp..];
                let rows = plane.chunks_exact_mut(wo).zip(from.chunks(wp));
                for (y, (row, from)) in rows.enumerate() {
                    row.copy_from_slice(&from[..wo]);
                    let Some(res) = residual else { continue };
                    let res = &res[(first + c) * ho * wo + y * wo..][..wo];
                    for (v, r) in row.iter_mut().zip(res) {
                        let sum = *v + r;
                        *v = post.map_or(sum, |(lo, hi)| sum.max(lo).min(hi));
                    }
                }
            }
            Ok(())
        });
    }

    /// Every output channel of one image into `y` (`out_ld` values per
    /// channel), split over the pool by tiles, adding `residual` (laid out
    /// as `y`) and its clamp when given. Each run is a strip of pixels,
    /// read from its offset in every plane of `x` and written at its
    /// offset in every channel of `y`.
    fn tiles(
        &self,
        isa: Isa,
        x: &[f32],
        (y, out_ld, residual): (&mut [f32], usize, Option<&[f32]>),
        runs: &[Run],
    ) {
        let s = self.shape;
        let dest = Dest {
            out: SharedOut(y.as_mut_ptr()),
            ld: out_ld,
            residual,
        };
        // Weights or pixels outer, whichever is larger, as in `pointwise`.
        let weights_outer = s.c_out_group() > s.computed(self.layout);
        if weights_outer && self.layout == Layout::Columns {
            return self.packed_tiles(isa, x, &dest, runs);
        }
        // The input read where it lies.
        let (ci, ld) = (s.c_in_group(), s.ld(self.layout));
        let row_tiles = s.c_out_group().div_ceil(PANEL);
        let per_group = row_tiles * runs.len();
        let mut units = vec![(); s.groups * per_group];
        let _ = par_chunks_mut(&mut units, 1, s.macs() / s.images.max(1), |first, chunk| {
            for unit in first..first + chunk.len() {
                let (g, rest) = (unit / per_group, unit % per_group);
                let (t, run) = if weights_outer {
                    (rest / runs.len(), runs[rest % runs.len()])
                } else {
                    (rest % row_tiles, runs[rest / row_tiles])
                };
                let input = Input {
                    taps: &self.taps,
                    x: &x[g * s.group_len(self.layout) + run.0..],
                    ld,
                    k: ci,
                };
                self.tile(isa, &dest, (g, t * PANEL), run, input);
            }
            Ok(())
        });
    }

    /// [`Conv::tiles`] for weights outer on tap columns: every tile of
    /// weights reads all the input, which is repacked run by run, one
    /// contiguous row of the run's pixels per tap and channel (the same
    /// values in another order). Read in place, a tile's loads stride
    /// across planes that, for ResNet's 512 channels at 7x7 (900 KB), do
    /// not stay in L2. On the grid the repacking would copy each pixel
    /// once per tap: there the input is read in place.
    fn packed_tiles(&self, isa: Isa, x: &[f32], dest: &Dest<'_>, runs: &[Run]) {
        let s = self.shape;
        let k_all = s.c_in_group() * s.taps();
        let width = |strip: &Strip| match strip.kind {
            Kind::Vectors { vecs, .. } => vecs * isa.lanes,
            Kind::Columns => strip.cols,
        };
        let starts: Vec<usize> = runs
            .iter()
            .scan(0, |at, r| {
                let start = *at;
                *at += k_all * width(&r.2);
                Some(start)
            })
            .collect();
        let per_group: usize = runs.iter().map(|r| k_all * width(&r.2)).sum();
        let mut packed = vec![0f32; s.groups * per_group];
        let _ = par_chunks_mut(
            &mut packed,
            per_group.max(1),
            s.groups * per_group,
            |first, chunk| {
                for (n, group) in chunk.chunks_exact_mut(per_group).enumerate() {
                    for (run, &start) in runs.iter().zip(&starts) {
                        let w = width(&run.2);
                        self.pack(x, first + n, run, &mut group[start..][..k_all * w], w);
                    }
                }
                Ok(())
            },
        );
        let row_tiles = s.c_out_group().div_ceil(PANEL);
        let mut units = vec![(); s.groups * row_tiles];
        let _ = par_chunks_mut(&mut units, 1, s.macs() / s.images.max(1), |first, chunk| {
            for unit in first..first + chunk.len() {
                let (g, t) = (unit / row_tiles, unit % row_tiles);
                for (&run, &start) in runs.iter().zip(&starts) {
                    let input = Input {
                        taps: &[0],
                        x: &packed[g * per_group + start..],
                        ld: width(&run.2),
                        k: k_all,
                    };
                    self.tile(isa, dest, (g, t * PANEL), run, input);
                }
            }
            Ok(())
        });
    }

    /// One register tile: output channels from `r0` of group `g`, all
    /// input channels, one run, its input read from `input`.
    fn tile(&self, isa: Isa, dest: &Dest<'_>, (g, r0): (usize, usize), run: Run, input: Input<'_>) {
        let s = self.shape;
        let co = s.c_out_group();
        let panels = co.div_ceil(PANEL);
        let k_all = s.c_in_group() * s.taps();
        let (_, to, strip) = run;
        let w_at = (g * panels + r0 / PANEL) * PANEL * k_all + r0 % PANEL;
        let at = (g * co + r0) * dest.ld + to;
        let tile = Tile {
            k: input.k,
            taps: input.taps,
            w: self.weights[w_at..].as_ptr(),
            bias: self.bias[g * panels * PANEL + r0..].as_ptr(),
            x: input.x.as_ptr(),
            ld: input.ld,
            out_ld: dest.ld,
            out: dest.out.get().wrapping_add(at),
            residual: dest.residual.map(|r| r[at..].as_ptr()),
            store: 0..PANEL.min(co - r0),
            strip,
            prefetch_out: true,
            pre: self.epilogue.pre,
            hard_swish: false,
            post: dest.residual.and(self.epilogue.post),
        };
        let run = match strip.kind {
            Kind::Vectors { .. } => isa.tile,
            Kind::Columns => isa.columns,
        };
        // SAFETY: `Isa::of` chose kernels this CPU has. The tile reads,
        // for every tap and input channel of `input`, the run's pixels (in
        // `Layout::Grid`, shifted by at most the plane's last row, which
        // `Shape::grid_ld` leaves room for; repacked, `width` values a
        // channel), and its panel's weights and bias (padded to whole
        // panels); it writes rows `store` of its own run of `y`, which no
        // other unit writes, reading the same places of `residual`.
        unsafe { run(&tile) };
    }

    /// Copies one run's pixels of group `g`, for every tap and input
    /// channel, into `panel`: `width` values a row, one row per tap and
    /// channel as the weights hold them.
    fn pack(&self, x: &[f32], g: usize, &(from, _, strip): &Run, panel: &mut [f32], width: usize) {
        let s = self.shape;
        let ci = s.c_in_group();
        let ld = s.ld(self.layout);
        let base = g * s.group_len(self.layout) + from;
        let taps = self.taps.len();
        for c in 0..ci {
            for (t, &tap) in self.taps.iter().enumerate() {
                let src = &x[base + tap + c * ld..][..strip.cols];
                panel[(c * taps + t) * width..][..strip.cols].copy_from_slice(src);
            }
        }
    }
}

/// How the tiles run over an image's output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Path {
    /// Strips over the whole plane, straight into the output: tap
    /// columns, and a grid as wide as the output (no tap reaches past a
    /// row: ConvNeXt's patchify layers), are laid out as the output is.
    Whole,
    /// Strips row by row, straight into the output ([`rows_beat_grid`]).
    Rows,
    /// Strips over the grid's whole rows, discarded columns included,
    /// then a copy into the output.
    Grid,
}

impl Path {
    fn of(s: &Shape, layout: Layout, isa: Isa) -> Path {
        if layout == Layout::Columns || s.wp() == s.out_hw.1 {
            Path::Whole
        } else if rows_beat_grid(s, isa) {
            Path::Rows
        } else {
            Path::Grid
        }
    }
}

/// A strip of pixels, where it starts in the input planes and where in
/// the output channels.
type Run = (usize, usize, Strip);

/// Where the tiles write: `ld` values per output channel, with the
/// residual (laid out as the output) when the epilogue adds one.
struct Dest<'a> {
    out: SharedOut,
    ld: usize,
    residual: Option<&'a [f32]>,
}

/// Where a tile reads its input: for each tap (an offset from `x`),
/// `k` input channels `ld` apart.
#[derive(Clone, Copy)]
struct Input<'a> {
    taps: &'a [usize],
    x: &'a [f32],
    ld: usize,
    k: usize,
}

/// Whether `Layout::Grid` should compute output row by output row,
/// straight into the output, rather than on the phase grid's whole rows
/// (and copy): when a row's strips cost less than the grid's discarded
/// columns and tails do. A column tile's pixel counts twice a vector
/// lane: it loads a weight vector and a pixel for each FMA, and its few
/// accumulators wait on the FMA latency (`pointwise`'s column tiles). An
/// AVX2 tile of 2 vectors counts 9/8 of a lane: its halves' 8
/// accumulators leave the loop's own instructions less room beside the
/// FMAs than 12 do. With 8 lanes (AVX2) rows win where the output width
/// is a multiple of 24 (56-pixel rows end in two tiles of 2 vectors, and
/// ResNet's 56x56 layers ran 5-8% slower on rows than on the grid); with
/// 16, rows of 56 or 28 end in half-empty vectors.
fn rows_beat_grid(s: &Shape, isa: Isa) -> bool {
    // In eighths of a lane.
    let cost = |pixels: usize| -> usize {
        strips(pixels, isa)
            .map(|r| match r.kind {
                Kind::Vectors { vecs: 2, .. } if isa.lanes == 8 => 2 * 9 * isa.lanes,
                Kind::Vectors { vecs, .. } => vecs * 8 * isa.lanes,
                Kind::Columns => 16 * r.cols,
            })
            .sum()
    };
    let (ho, wo) = s.out_hw;
    // Cost per useful pixel, compared without division.
    cost(wo) * ho <= cost(ho * s.wp())
}

/// A buffer of `len` values that its user writes before reading.
fn scratch(len: usize) -> TractResult<Tensor> {
    // SAFETY: every f32 bit pattern is a value; see the callers for why
    // nothing is read before it is written.
    unsafe { Tensor::uninitialized::<f32>(&[len]) }
}

/// Copies one image's input into `x` as [`Layout::Columns`]: for each
/// group, channel and tap, the input pixel each output pixel reads
/// through that tap (zero in the padding).
fn tap_columns(s: &Shape, input: &[f32], x: &mut [f32]) {
    let (h, w) = s.in_hw;
    let (ho, wo) = s.out_hw;
    let (ci, taps) = (s.c_in_group(), s.taps());
    let _ = par_chunks_mut(x, ho * wo, x.len(), |first, chunk| {
        for (n, column) in chunk.chunks_exact_mut(ho * wo).enumerate() {
            let plane = first + n;
            let (g, c, tap) = (plane / (ci * taps), plane / taps % ci, plane % taps);
            let (ky, kx) = (tap / s.kernel.1, tap % s.kernel.1);
            let from = &input[(g * ci + c) * h * w..][..h * w];
            let copy = RowCopy::new(wo, w, kx * s.dilation.1, s.stride.1, s.pad.1);
            for (y, row) in column.chunks_exact_mut(wo).enumerate() {
                let iy = (y * s.stride.0 + ky * s.dilation.0).checked_sub(s.pad.0);
                let Some(iy) = iy.filter(|&r| r < h) else {
                    row.fill(0.0);
                    continue;
                };
                copy.fill(row, &from[iy * w..][..w]);
            }
        }
        Ok(())
    });
}

/// Copies one image's input into `x` as [`Layout::Grid`]: for each
/// group, channel and stride phase, the zero-padded phase plane.
fn split_phases(s: &Shape, input: &[f32], x: &mut [f32]) {
    let (h, w) = s.in_hw;
    let (sh, sw) = s.stride;
    let (wp, ld, ci) = (s.wp(), s.grid_ld(), s.c_in_group());
    let _ = par_chunks_mut(x, ld, x.len(), |first, chunk| {
        for (n, plane) in chunk.chunks_exact_mut(ld).enumerate() {
            let index = first + n;
            let (g, c, phase) = (
                index / (ci * s.phases()),
                index / s.phases() % ci,
                index % s.phases(),
            );
            let (py, px) = (phase / sw, phase % sw);
            let from = &input[(g * ci + c) * h * w..][..h * w];
            let copy = RowCopy::new(wp, w, px, sw, s.pad.1);
            for (i, row) in plane.chunks_exact_mut(wp).enumerate() {
                let Some(iy) = (i * sh + py).checked_sub(s.pad.0).filter(|&r| r < h) else {
                    row.fill(0.0);
                    continue;
                };
                copy.fill(row, &from[iy * w..][..w]);
            }
        }
        Ok(())
    });
}

/// Which columns of a copied row come from an input row and which are
/// zero padding: the same for every row of a plane, so worked out once a
/// plane rather than once a row (ResNet-50's stride-2 3x3 layer at 56x56
/// copies 15,000 rows of 29 pixels).
#[derive(Debug, Clone, Copy)]
struct RowCopy {
    /// Columns before `lo` and from `hi` on are zero.
    lo: usize,
    hi: usize,
    /// The input column that column `lo` reads.
    from: usize,
    step: usize,
}

impl RowCopy {
    /// Column `j` of a `len`-column row reads input column `j * step +
    /// first - pad`, where that is one of the `width` columns.
    fn new(len: usize, width: usize, first: usize, step: usize, pad: usize) -> RowCopy {
        let lo = pad.saturating_sub(first).div_ceil(step).min(len);
        let hi = (pad + width)
            .saturating_sub(first)
            .div_ceil(step)
            .clamp(lo, len);
        RowCopy {
            lo,
            hi,
            from: (lo * step + first).saturating_sub(pad),
            step,
        }
    }

    /// Fills `row` from `src` (a row of the `width` columns): zeros, one
    /// copy (strided for `step > 1`), zeros, so that the stride-1 rows of
    /// every layer are a `memcpy`.
    fn fill(&self, row: &mut [f32], src: &[f32]) {
        let RowCopy { lo, hi, from, step } = *self;
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        let middle = &mut row[lo..hi];
        let Some(last) = middle.len().checked_sub(1) else {
            return;
        };
        let src = &src[from..][..last * step + 1];
        match step {
            1 => middle.copy_from_slice(src),
            2 => {
                // Whole pairs, then the last pixel alone: over
                // `chunks_exact` the loop is vectorised (a shuffle keeps
                // every other value).
                let (pairs, end) = middle.split_at_mut(last);
                for (v, pair) in pairs.iter_mut().zip(src.chunks_exact(2)) {
                    *v = pair[0];
                }
                end[0] = src[last * 2];
            }
            _ => {
                for (v, s) in middle.iter_mut().zip(src.iter().step_by(step)) {
                    *v = *s;
                }
            }
        }
    }
}

/// Bitwise, so an operator equals itself even with NaN in its constants.
impl PartialEq for Conv {
    fn eq(&self, other: &Conv) -> bool {
        self.shape == other.shape
            && self.in_shape == other.in_shape
            && self.out_shape == other.out_shape
            && same_bits(&self.weights, &other.weights)
            && same_bits(&self.bias, &other.bias)
            && same_clamp(self.epilogue.pre, other.epilogue.pre)
            && self.epilogue.residual == other.epilogue.residual
            && same_clamp(self.epilogue.post, other.epilogue.post)
            && self.layout == other.layout
            && self.pool == other.pool
            && match (&self.winograd, &other.winograd) {
                (Some(a), Some(b)) => same_bits(a.weights(), b.weights()),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl Eq for Conv {}

impl Op for Conv {
    fn name(&self) -> StaticName {
        "Conv(onnx-lambda)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let layout = match self.winograd {
            Some(_) => "Winograd F(2x2, 3x3)".to_string(),
            None => format!("{:?}", self.layout),
        };
        Ok(vec![format!(
            "{:?}, {layout}, {:?}, max pool {:?}",
            self.shape, self.epilogue, self.pool
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Conv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // `compute` writes every element (each output row is copied whole
        // from the grid, or written whole by its strips).
        let shapes = (&*self.in_shape, &*self.out_shape);
        eval_with_residual(
            "conv",
            &inputs,
            self.epilogue.residual,
            shapes,
            |x, r, y| self.compute(x, r, y),
        )
    }
}

impl TypedOp for Conv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            self.shape.macs().to_dim()
        )))
    }

    as_op!();
}

/// Replaces every convolution of the decluttered graph that this operator
/// runs (see the module docs) and the specialised ones left, with the
/// clamp, residual `Add` and clamp after it. Returns how many it replaced;
/// none on an x86 CPU without AVX2 and FMA.
pub(crate) fn install(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<TractConv>() else {
            continue;
        };
        let Some(layer) = describe(model, node, conv)? else {
            continue;
        };
        let (epilogue, residual, last) = following_epilogue(model, id)?;
        let shapes = (&layer.in_shape[..], &layer.out_shape[..]);
        let op = Conv::new(layer.shape, shapes, &layer.weights, &layer.bias, epilogue);
        let mut inputs = tvec![node.inputs[0]];
        inputs.extend(residual);
        let name = node.name.clone();
        replace_with(model, "onnx-lambda conv", &inputs, (&name, op), last)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

/// Whether this CPU runs the operator (AVX2 and FMA, or NEON).
pub(crate) fn available() -> bool {
    Isa::of(Level::detect()).is_ok()
}

/// Fewest output channels per group worth a tile: below it (depthwise
/// layers, channel multipliers of 1 or 2) most of each tile's rows would
/// be zero.
const MIN_GROUP_OUT: usize = 4;

struct Layer {
    shape: Shape,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// The layer a tract `Conv` computes, if it is a 2-D f32 NCHW (or CHW)
/// convolution with constant weights and bias, a fixed input shape, and
/// at least [`MIN_GROUP_OUT`] output channels per group; else `None`.
fn describe(model: &TypedModel, node: &TypedNode, conv: &TractConv) -> TractResult<Option<Layer>> {
    let spec = &conv.pool_spec;
    let input = model.outlet_fact(node.inputs[0])?;
    let output = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (c_in, c_out, groups) = (spec.input_channels, spec.output_channels, conv.group);
    if conv.q_params.is_some()
        || input.datum_type != f32::datum_type()
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
        || groups == 0
        || !c_in.is_multiple_of(groups)
        || !c_out.is_multiple_of(groups)
        || c_out / groups < MIN_GROUP_OUT
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let (Some(shape), Some(out_shape)) = (input.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    let batched = spec.data_format == DataFormat::NCHW;
    let rank = 3 + usize::from(batched);
    if shape.len() != rank || shape[rank - 3] != c_in || out_shape.len() != rank {
        return Ok(None);
    }
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let hw = &shape[rank - 2..];
    let padding = spec.computed_padding(hw);
    let (strides, dilations) = (spec.strides(), spec.dilations());
    let s = Shape {
        images: if batched { shape[0] } else { 1 },
        groups,
        c_in,
        c_out,
        in_hw: (hw[0], hw[1]),
        out_hw: (padding[0].convoluted, padding[1].convoluted),
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride: (strides[0], strides[1]),
        dilation: (dilations[0], dilations[1]),
        pad: (padding[0].pad_before, padding[1].pad_before),
    };
    if s.out_hw.0 == 0
        || s.out_hw.1 == 0
        || s.kernel.0 == 0
        || s.kernel.1 == 0
        || [s.stride.0, s.stride.1, s.dilation.0, s.dilation.1].contains(&0)
        || out_shape[rank - 3..] != [c_out, s.out_hw.0, s.out_hw.1]
    {
        return Ok(None);
    }
    let Some(weights) = weights_oihw(
        &kernel,
        conv.kernel_fmt,
        [c_out, c_in / groups, s.kernel.0, s.kernel.1],
    )?
    else {
        return Ok(None);
    };
    let bias = bias.cast_to::<f32>()?;
    let bias = match bias.try_as_plain_ram()?.as_slice::<f32>()? {
        b if b.len() == c_out => b.to_vec(),
        [b] => vec![*b; c_out],
        _ => return Ok(None),
    };
    Ok(Some(Layer {
        shape: s,
        in_shape: shape.into(),
        out_shape: out_shape.into(),
        weights,
        bias,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{levels, noise, VECTOR_LEVELS};

    /// The definition, one output at a time.
    pub(super) fn reference(
        s: &Shape,
        w: &[f32],
        b: &[f32],
        e: Epilogue,
        x: &[f32],
        res: &[f32],
    ) -> Vec<f32> {
        let clamp = |v: f32, c: Option<(f32, f32)>| c.map_or(v, |(lo, hi)| v.max(lo).min(hi));
        let (h, wd) = s.in_hw;
        let (ho, wo) = s.out_hw;
        let (kh, kw) = s.kernel;
        let (ci, co) = (s.c_in_group(), s.c_out_group());
        let mut out = Vec::with_capacity(s.images * s.c_out * ho * wo);
        for n in 0..s.images {
            for o in 0..s.c_out {
                let g = o / co;
                for y in 0..ho {
                    for xo in 0..wo {
                        let mut acc = b[o];
                        for i in 0..ci {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (y * s.stride.0 + ky * s.dilation.0) as isize
                                        - s.pad.0 as isize;
                                    let ix = (xo * s.stride.1 + kx * s.dilation.1) as isize
                                        - s.pad.1 as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                        continue;
                                    }
                                    let c = g * ci + i;
                                    let v =
                                        x[((n * s.c_in + c) * h + iy as usize) * wd + ix as usize];
                                    acc += w[((o * ci + i) * kh + ky) * kw + kx] * v;
                                }
                            }
                        }
                        let y = clamp(acc, e.pre);
                        out.push(if e.residual {
                            clamp(y + res[out.len()], e.post)
                        } else {
                            y
                        });
                    }
                }
            }
        }
        out
    }

    /// `op`'s output against [`reference`] at `level`, to 1e-4 relative.
    pub(super) fn assert_matches_definition(
        op: &Conv,
        (w, b): (&[f32], &[f32]),
        (x, res): (&[f32], &[f32]),
        level: Level,
        what: &str,
    ) {
        let (s, e) = (&op.shape, op.epilogue);
        let want = reference(s, w, b, e, x, res);
        let mut got = vec![f32::NAN; want.len()];
        let residual = e.residual.then_some(res);
        op.compute_with(x, residual, &mut got, level).unwrap();
        for (i, (a, want)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{level:?} {s:?} {what} {e:?} at {i}: {a} vs {want}"
            );
        }
    }

    /// No epilogue, a ReLU, a clamp, and ResNet's block end (ReLU,
    /// residual, ReLU) and a residual alone.
    pub(super) fn epilogues() -> [Epilogue; 5] {
        let relu = Some((0.0, f32::INFINITY));
        [
            Epilogue::default(),
            Epilogue {
                pre: relu,
                ..Epilogue::default()
            },
            Epilogue {
                pre: Some((-0.25, 0.5)),
                ..Epilogue::default()
            },
            Epilogue {
                pre: relu,
                residual: true,
                post: relu,
                ..Epilogue::default()
            },
            Epilogue {
                residual: true,
                ..Epilogue::default()
            },
        ]
    }

    /// Output size for padding `pad` before and `after` after.
    fn out_len(
        len: usize,
        k: usize,
        stride: usize,
        dilation: usize,
        pad: usize,
        after: usize,
    ) -> usize {
        (len + pad + after - (k - 1) * dilation - 1) / stride + 1
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn shape(
        images: usize,
        groups: usize,
        (c_in, c_out): (usize, usize),
        in_hw: (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        dilation: (usize, usize),
        pads: [usize; 4],
    ) -> Shape {
        Shape {
            images,
            groups,
            c_in,
            c_out,
            in_hw,
            out_hw: (
                out_len(in_hw.0, kernel.0, stride.0, dilation.0, pads[0], pads[2]),
                out_len(in_hw.1, kernel.1, stride.1, dilation.1, pads[1], pads[3]),
            ),
            kernel,
            stride,
            dilation,
            pad: (pads[0], pads[1]),
        }
    }

    /// Kernel sizes 1 to 7 and rectangular, strides 1 to 3 and unequal,
    /// dilation, asymmetric and oversized padding, groups, output
    /// channels that are not whole tiles or panels, odd widths from 1
    /// pixel to several strips, two images: against the definition at
    /// every vector level, in both layouts, with and without clamps and a
    /// residual.
    #[test]
    fn matches_the_definition_at_every_level() {
        let cases = [
            shape(
                1,
                1,
                (3, 16),
                (23, 29),
                (7, 7),
                (2, 2),
                (1, 1),
                [3, 3, 3, 3],
            ),
            shape(2, 1, (5, 13), (9, 11), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            shape(
                1,
                1,
                (16, 24),
                (14, 14),
                (3, 3),
                (2, 2),
                (1, 1),
                [0, 0, 1, 1],
            ),
            shape(1, 2, (8, 8), (17, 19), (3, 3), (2, 2), (2, 2), [2, 1, 0, 3]),
            shape(
                1,
                3,
                (12, 18),
                (13, 7),
                (3, 5),
                (1, 2),
                (1, 1),
                [1, 2, 1, 2],
            ),
            shape(2, 4, (32, 32), (7, 7), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            shape(
                1,
                1,
                (16, 32),
                (15, 15),
                (1, 1),
                (2, 2),
                (1, 1),
                [0, 0, 0, 0],
            ),
            shape(1, 1, (4, 9), (1, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            shape(1, 1, (6, 7), (20, 60), (2, 4), (3, 1), (2, 1), [4, 0, 0, 5]),
            shape(
                1,
                1,
                (64, 8),
                (30, 30),
                (3, 3),
                (1, 1),
                (3, 3),
                [3, 3, 3, 3],
            ),
            // Taps in turns of 2 (AVX2's halves of a panel take turns
            // over 64 input channels); a last panel of 4 rows.
            shape(
                1,
                1,
                (30, 12),
                (9, 10),
                (3, 3),
                (1, 1),
                (1, 1),
                [1, 1, 1, 1],
            ),
            // More output channels than pixels: the input packed.
            shape(2, 1, (80, 68), (7, 7), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            // Patchify layers (ConvNeXt's stem and downsamplers): no tap
            // reaches past its row, the grid is the output's width.
            shape(2, 1, (3, 24), (16, 20), (4, 4), (4, 4), (1, 1), [0; 4]),
            shape(1, 1, (8, 16), (14, 14), (2, 2), (2, 2), (1, 1), [0; 4]),
        ];
        let mut paths = std::collections::HashSet::new();
        for level in levels("conv", VECTOR_LEVELS) {
            for (n, s) in cases.iter().enumerate() {
                paths.insert(Path::of(s, Layout::Grid, Isa::of(level).unwrap()));
                let k = s.c_in_group() * s.kernel.0 * s.kernel.1;
                let w = noise(s.c_out * k, 11 + n as u32);
                let b = noise(s.c_out, 12 + n as u32);
                let x = noise(s.images * s.c_in * s.in_hw.0 * s.in_hw.1, 13 + n as u32);
                let res = noise(s.images * s.c_out * s.out_pixels(), 14 + n as u32);
                let variants = [Layout::Grid, Layout::Columns]
                    .into_iter()
                    .flat_map(|l| epilogues().map(|e| (l, e)));
                for (layout, e) in variants {
                    let op = Conv::with_layout(*s, (&[], &[]), &w, &b, e, layout);
                    let what = format!("{layout:?}");
                    assert_matches_definition(&op, (&w, &b), (&x, &res), level, &what);
                }
            }
        }
        if available() {
            assert_eq!(paths.len(), 3, "every path on the grid ran: {paths:?}");
        }
    }

    /// Grid rows share their padding at stride 1 only where both sides
    /// have zeros to share, and never drop below the output row or the
    /// furthest tap (`matches_the_definition_at_every_level` checks the
    /// values on such grids).
    #[test]
    fn grid_rows_share_padding_only_where_both_sides_have_it() {
        let wp = |kernel: usize, stride: usize, pads: [usize; 4]| {
            let s = shape(
                1,
                1,
                (4, 4),
                (9, 14),
                (3, kernel),
                (1, stride),
                (1, 1),
                pads,
            );
            (s.wp(), s.out_hw.1)
        };
        // 3x3, padding 1: 14 + 1 columns, not 14 + 2.
        assert_eq!(wp(3, 1, [1, 1, 1, 1]), (15, 14));
        // Padding on one side only: nothing to share.
        assert_eq!(wp(3, 1, [1, 0, 1, 2]), (16, 14));
        assert_eq!(wp(3, 1, [1, 2, 1, 0]), (16, 14));
        // 5x5, padding 2: 14 + 2.
        assert_eq!(wp(5, 1, [1, 2, 1, 2]), (16, 14));
        // Padding wider than the tap reaches: the output row is wider.
        assert_eq!(wp(3, 1, [1, 4, 1, 4]), (20, 20));
        // Stride 2: the phase planes keep the full width.
        assert_eq!(wp(3, 2, [1, 1, 1, 1]), (8, 7));
    }

    /// The layouts measured fastest: tap columns for 7x7 outputs of a
    /// stride-1 3x3 layer and of a wide stride-2 one, the grid for a
    /// grouped stride-2 layer of 8 channels a group and for 14x14.
    #[test]
    fn narrow_or_small_planes_take_tap_columns_when_groups_are_wide() {
        let layout = |groups, c, hw, stride| {
            let s = shape(1, groups, (c, c), hw, (3, 3), stride, (1, 1), [1; 4]);
            s.layout()
        };
        assert_eq!(layout(1, 512, (7, 7), (1, 1)), Layout::Columns);
        assert_eq!(layout(1, 256, (14, 14), (2, 2)), Layout::Columns);
        assert_eq!(layout(55, 440, (14, 14), (2, 2)), Layout::Grid);
        assert_eq!(layout(1, 256, (14, 14), (1, 1)), Layout::Grid);
        // Small planes too: columns only for wide groups.
        assert_eq!(layout(55, 440, (7, 7), (1, 1)), Layout::Grid);
        assert_eq!(layout(4, 128, (7, 7), (1, 1)), Layout::Columns);
    }

    /// `RowCopy` against its definition, column by column, over rows
    /// shorter and longer than the source, paddings wider than the row,
    /// steps 1 to 3 from every phase and from further taps (`first` past
    /// the step, as a dilated tap's column).
    #[test]
    fn row_copy_reads_each_column_from_its_pixel_or_zero() {
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        for (len, step, first, pad) in (0..14).flat_map(|len| {
            (1..4).flat_map(move |step| {
                (0..step + 3).flat_map(move |first| (0..12).map(move |pad| (len, step, first, pad)))
            })
        }) {
            for src_len in [0, 1, 5, 9] {
                let src = &src[..src_len];
                let mut row = vec![f32::NAN; len];
                RowCopy::new(len, src_len, first, step, pad).fill(&mut row, src);
                let want: Vec<f32> = (0..len)
                    .map(|j| {
                        (j * step + first)
                            .checked_sub(pad)
                            .and_then(|i| src.get(i))
                            .copied()
                            .unwrap_or(0.0)
                    })
                    .collect();
                assert_eq!(row, want, "len {len} step {step} first {first} pad {pad}");
            }
        }
    }

    /// Split over two threads (tiles, the copies in and out), every
    /// output is written once and equals the one-thread result bit for
    /// bit, in both layouts and with weights or pixels outer.
    #[test]
    fn two_threads_give_the_bits_of_one() {
        if !available() {
            return; // tract runs these layers on this CPU.
        }
        let pool = crate::ops::OperatorPool::new(2);
        let cases = [
            shape(2, 1, (8, 200), (6, 6), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            shape(1, 1, (80, 68), (7, 7), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            shape(
                1,
                2,
                (16, 16),
                (40, 33),
                (3, 3),
                (2, 2),
                (1, 1),
                [1, 1, 1, 1],
            ),
        ];
        for s in cases {
            let w = noise(s.c_out * s.c_in_group() * s.taps(), 3);
            let b = noise(s.c_out, 4);
            let x = noise(s.images * s.c_in * s.in_hw.0 * s.in_hw.1, 5);
            let len = s.images * s.c_out * s.out_pixels();
            let res = noise(len, 6);
            for layout in [Layout::Grid, Layout::Columns] {
                let e = epilogues()[3];
                let op = Conv::with_layout(s, (&[], &[]), &w, &b, e, layout);
                let mut one = vec![f32::NAN; len];
                op.compute(&x, Some(&res), &mut one).unwrap();
                let mut two = vec![f32::NAN; len];
                pool.run(|| op.compute(&x, Some(&res), &mut two)).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(one.iter().all(|v| v.is_finite()), "{s:?} {layout:?}");
                assert_eq!(bits(&one), bits(&two), "{s:?} {layout:?}");
            }
        }
    }
}

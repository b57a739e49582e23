//! Stride-1 3x3 convolutions as Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016): each 2x2 block of output pixels is computed from the 4x4 input
//! pixels under it with 16 products per input and output channel instead
//! of 36, 2.25 times fewer multiply-adds than the direct convolution, the
//! one way past the FMA peak that both the direct tiles and ONNX Runtime's
//! are held to.
//!
//! How: the filters are transformed once, at load (`U = G g Gᵀ`, 16 values
//! per filter); per image, a block of tile rows at a time, the input tiles
//! are transformed (`V = Bᵀ d B`), the 16 points are 16 independent matrix
//! products `M[p] = U[p] · V[p]` over the block's tiles, which the 1x1
//! operator's register tiles run (`pointwise`), and the output transform
//! (`Y = Aᵀ M A`) adds the bias and applies the epilogue on its way into the
//! output. The transforms are additions only (their coefficients are 0,
//! ±1, and ±1/2 in `G`, applied in f64 at load), so the result differs from
//! the direct sum by a few rounding steps per output, well inside the
//! 1e-4 the zoo is held to against ONNX Runtime.
//!
//! The input tiles overlap by 2 pixels: the input rows are read split into
//! even and odd columns (`RowCopy` with step 2, which also writes the
//! padding), so that every column of the transform is a plain vector
//! operation over the tiles of a row.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

use super::{scratch, RowCopy, Shape};
use crate::ops::pointwise::{strips, Epilogue, Isa, Kind, SharedOut, Tile, Weights, PANEL};

/// Values of a transformed 4x4 tile, one matrix product each.
const POINTS: usize = 16;

/// Fewest input and output channels. The input transform costs the same
/// per input channel whatever the output's count, and the output
/// transform per output channel, while the products saved grow with
/// both: SqueezeNet's 16 -> 64 layer at 55x55 took 1.32 ms against 1.03
/// direct, its 48 -> 192 at 13x13 0.63 against 0.56, its 64 -> 256 0.86
/// against 0.92; DenseNet's 128 -> 32 layers 25.8 ms against 29.3 over
/// all 58 (`profile --by-node --threads 1`, AVX2, AMD EPYC Zen 4).
const MIN_IN: usize = 64;
const MIN_OUT: usize = 32;

/// Tiles one block's products run over at least, in whole tile rows:
/// enough vectors of pixels for whole register tiles (32 to 256 measured
/// alike on ResNet-18 once blocks are large, see [`BLOCK_BYTES`]).
const BLOCK_TILES: usize = 64;

/// Bytes of one block's transformed input and products together. Each
/// block reads all the transformed filters (ResNet's 512-channel layers:
/// 16 MiB), so blocks are large: the 7x7 layers of ResNet-18 went 3.5 ->
/// 2.3 ms, the 14x14 2.7 -> 2.1, from 512 KiB to 1 or 2 MiB (2 MiB
/// measured 3% faster over the network than 1; 8 MiB, whole planes, the
/// same as 1).
const BLOCK_BYTES: usize = 2 << 20;

/// Whether F(2x2, 3x3) computes this layer: 3x3, stride 1, no dilation,
/// one group, enough channels on both sides.
pub(super) fn fits(s: &Shape) -> bool {
    s.kernel == (3, 3)
        && s.stride == (1, 1)
        && s.dilation == (1, 1)
        && s.groups == 1
        && s.c_in >= MIN_IN
        && s.c_out >= MIN_OUT
}

/// The transformed filters of one layer.
#[derive(Debug, Clone)]
pub(super) struct Winograd {
    /// For each of the [`POINTS`], the `[c_out][c_in]` matrix packed in
    /// panels as the pointwise tiles read it, [`Winograd::point_len`]
    /// values apart.
    weights: Arc<[f32]>,
}

impl Winograd {
    /// `weights` are `[c_out][c_in][3][3]`.
    pub(super) fn new(s: &Shape, weights: &[f32]) -> Winograd {
        let (ci, co) = (s.c_in, s.c_out);
        assert_eq!(weights.len(), co * ci * 9, "weights");
        // U = G g Gᵀ with G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2],
        // [0, 0, 1]], in f64, rounded once.
        let g_of = |a: [f64; 3]| {
            [
                a[0],
                (a[0] + a[1] + a[2]) / 2.0,
                (a[0] - a[1] + a[2]) / 2.0,
                a[2],
            ]
        };
        let mut points = vec![0f32; POINTS * co * ci];
        for (f, g) in weights.chunks_exact(9).enumerate() {
            let row = |r: usize| std::array::from_fn(|c| f64::from(g[r * 3 + c]));
            let (g0, g1, g2) = (row(0), row(1), row(2));
            // G g, row by row of the tile, then each row times Gᵀ.
            let gg: [[f64; 3]; 4] = [
                g0,
                std::array::from_fn(|c| (g0[c] + g1[c] + g2[c]) / 2.0),
                std::array::from_fn(|c| (g0[c] - g1[c] + g2[c]) / 2.0),
                g2,
            ];
            for (r, a) in gg.into_iter().enumerate() {
                for (c, u) in g_of(a).into_iter().enumerate() {
                    points[(r * 4 + c) * co * ci + f] = u as f32;
                }
            }
        }
        let mut packed = vec![0f32; POINTS * Self::point_len(s)];
        let each = packed.chunks_exact_mut(Self::point_len(s));
        for (u, packed) in points.chunks_exact(co * ci).zip(each) {
            Weights::Rows(u).pack_into(co, ci, packed);
        }
        Winograd {
            weights: packed.into(),
        }
    }

    pub(super) fn weights(&self) -> &[f32] {
        &self.weights
    }

    fn point_len(s: &Shape) -> usize {
        s.c_out.div_ceil(PANEL) * PANEL * s.c_in
    }

    /// Tile rows per block: [`BLOCK_TILES`] tiles or more (whole rows), at
    /// most [`BLOCK_BYTES`] of transformed input and products unless a row
    /// alone is more.
    fn block_rows(s: &Shape) -> usize {
        let (rows, cols) = tiles(s);
        let per_row = POINTS * (s.c_in + s.c_out) * cols * 4;
        let wanted = BLOCK_TILES.div_ceil(cols);
        let fit = (BLOCK_BYTES / per_row).max(1);
        wanted.min(fit).min(rows)
    }

    /// One image: `input` `[c_in][h][w]` into `out` `[c_out][ho][wo]`, with
    /// `bias` (at least `c_out` values) and `e`'s clamps and residual (laid
    /// out as `out`).
    pub(super) fn compute(
        &self,
        s: &Shape,
        isa: Isa,
        (bias, e): (&[f32], crate::ops::pointwise::Epilogue),
        input: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> TractResult<()> {
        let block = Self::block_rows(s);
        self.compute_in_blocks(s, isa, (bias, e), input, residual, out, block)
    }

    /// [`Winograd::compute`], `block` tile rows at a time.
    #[allow(clippy::too_many_arguments)]
    fn compute_in_blocks(
        &self,
        s: &Shape,
        isa: Isa,
        (bias, e): (&[f32], Epilogue),
        input: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        block: usize,
    ) -> TractResult<()> {
        let (rows, cols) = tiles(s);
        let tiles_max = block * cols;
        let mut units = vec![(); rows.div_ceil(block)];
        let out = SharedOut(out.as_mut_ptr());
        let macs = s.c_in * s.c_out * s.out_pixels() * 9;
        par_chunks_mut(&mut units, 1, macs, |first, chunk| {
            // Every value of `v` and `m` a block reads is written first in
            // that block: the input transform writes all of `v`'s
            // `tiles`, the products every row of `m` that the output
            // transform reads.
            let mut v = scratch(POINTS * s.c_in * tiles_max)?;
            let mut v = v.try_as_plain_ram_mut()?;
            let v = v.as_slice_mut::<f32>()?;
            let mut m = scratch(POINTS * s.c_out * tiles_max)?;
            let mut m = m.try_as_plain_ram_mut()?;
            let m = m.as_slice_mut::<f32>()?;
            for b in first..first + chunk.len() {
                let tile_rows = b * block..((b + 1) * block).min(rows);
                let n = tile_rows.len() * cols;
                transform_input(
                    isa,
                    s,
                    input,
                    tile_rows.clone(),
                    &mut v[..POINTS * s.c_in * n],
                );
                self.products(
                    s,
                    isa,
                    &v[..POINTS * s.c_in * n],
                    &mut m[..POINTS * s.c_out * n],
                );
                let block = OutputBlock {
                    s,
                    bias,
                    epilogue: e,
                    m: &m[..POINTS * s.c_out * n],
                    tile_rows,
                    residual,
                };
                // SAFETY: `out` is the image's output, and this block alone
                // writes the output rows of `tile_rows`.
                unsafe { transform_output(isa, &block, &out) };
            }
            Ok(())
        })
    }

    /// `m[p] = U[p] · v[p]` for every point, over the block's tiles.
    fn products(&self, s: &Shape, isa: Isa, v: &[f32], m: &mut [f32]) {
        let (ci, co) = (s.c_in, s.c_out);
        let n = v.len() / (POINTS * ci);
        let zeros = [0f32; PANEL];
        let point_len = Self::point_len(s);
        for p in 0..POINTS {
            let x = &v[p * ci * n..][..ci * n];
            let y = &mut m[p * co * n..][..co * n];
            let w = &self.weights[p * point_len..][..point_len];
            for r0 in (0..co).step_by(PANEL) {
                for strip in strips(n, isa) {
                    let tile = Tile {
                        k: ci,
                        taps: &[0],
                        w: w[r0 * ci..].as_ptr(),
                        bias: zeros.as_ptr(),
                        x: x[strip.first..].as_ptr(),
                        ld: n,
                        out_ld: n,
                        out: y[r0 * n + strip.first..].as_mut_ptr(),
                        residual: None,
                        store: 0..PANEL.min(co - r0),
                        strip,
                        prefetch_out: false,
                        pre: None,
                        hard_swish: false,
                        post: None,
                    };
                    let run = match strip.kind {
                        Kind::Vectors { .. } => isa.tile,
                        Kind::Columns => isa.columns,
                    };
                    // SAFETY: `Isa::of` chose kernels this CPU has. The
                    // tile reads `ci` rows of `n` values of `x` from the
                    // strip's first, its panel's weights (padded to whole
                    // panels) and `PANEL` zeros of bias, and writes rows
                    // `store` of its panel in `y`, the strip's pixels.
                    unsafe { run(&tile) };
                }
            }
        }
    }
}

/// Tile rows and columns: 2x2 output pixels a tile.
fn tiles(s: &Shape) -> (usize, usize) {
    (s.out_hw.0.div_ceil(2), s.out_hw.1.div_ceil(2))
}

/// The block's input tiles, `v[point][c_in][tile]`, with the tiles of
/// `tile_rows` row after row.
fn transform_input(
    isa: Isa,
    s: &Shape,
    input: &[f32],
    tile_rows: std::ops::Range<usize>,
    v: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = isa;
        // SAFETY: an `Isa` exists for AVX2 and FMA only, on x86_64.
        unsafe { avx2::transform_input(s, input, tile_rows, v) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        input_tiles(s, input, tile_rows, v);
    }
}

/// One block's products and what the output transform adds to them.
struct OutputBlock<'a> {
    s: &'a Shape,
    bias: &'a [f32],
    epilogue: Epilogue,
    /// `m[point][c_out][tile]`, the tiles of `tile_rows` row after row.
    m: &'a [f32],
    tile_rows: std::ops::Range<usize>,
    residual: Option<&'a [f32]>,
}

/// The block's output pixels from its products, with the bias and the
/// epilogue.
///
/// # Safety
/// As [`output_tiles`].
unsafe fn transform_output(isa: Isa, block: &OutputBlock<'_>, out: &SharedOut) {
    let _ = isa;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `transform_input`; `out` forwarded.
        unsafe { avx2::transform_output(block, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: forwarded.
        unsafe { output_tiles(block, out) };
    }
}

/// The transforms compiled for AVX2, where LLVM vectorises their loops
/// over a row's tiles 8 at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn transform_input(
        s: &Shape,
        input: &[f32],
        tile_rows: std::ops::Range<usize>,
        v: &mut [f32],
    ) {
        input_tiles(s, input, tile_rows, v);
    }

    /// # Safety
    /// As [`output_tiles`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transform_output(block: &OutputBlock<'_>, out: &SharedOut) {
        // SAFETY: forwarded.
        unsafe { output_tiles(block, out) };
    }
}

/// `V = Bᵀ d B` for every 4x4 input tile `d` of `tile_rows`, `Bᵀ` being
/// `[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`: rows
/// first, on each padded row's even and odd columns, then columns, where
/// tile `j` reads even columns `j, j + 1` and odd columns `j, j + 1`.
#[inline(always)]
fn input_tiles(s: &Shape, input: &[f32], tile_rows: std::ops::Range<usize>, v: &mut [f32]) {
    let (h, w) = s.in_hw;
    let (_, cols) = tiles(s);
    let n = tile_rows.len() * cols;
    let ci = s.c_in;
    // The padded row's even and odd columns: tile `j` starts at column 2j.
    let even = RowCopy::new(cols + 1, w, 0, 2, s.pad.1);
    let odd = RowCopy::new(cols + 1, w, 1, 2, s.pad.1);
    let len = cols + 1;
    let mut rows = vec![0f32; 8 * len];
    let mut t = vec![0f32; 8 * len];
    for c in 0..ci {
        let plane = &input[c * h * w..][..h * w];
        for (i, tr) in tile_rows.clone().enumerate() {
            read_rows(s, plane, 2 * tr, (&even, &odd), &mut rows);
            // Bᵀ d: rows 0 - 2, 1 + 2, 2 - 1, 1 - 3, on even then odd.
            for half in 0..2 {
                let d = &rows[half * 4 * len..][..4 * len];
                let (d0, d1, d2, d3) = (
                    &d[..len],
                    &d[len..2 * len],
                    &d[2 * len..3 * len],
                    &d[3 * len..],
                );
                let out = &mut t[half * 4 * len..][..4 * len];
                let (t0, rest) = out.split_at_mut(len);
                let (t1, rest) = rest.split_at_mut(len);
                let (t2, t3) = rest.split_at_mut(len);
                for (j, d) in d0.iter().zip(d1).zip(d2).zip(d3).enumerate() {
                    let (((&d0, &d1), &d2), &d3) = d;
                    t0[j] = d0 - d2;
                    t1[j] = d1 + d2;
                    t2[j] = d2 - d1;
                    t3[j] = d1 - d3;
                }
            }
            // (Bᵀ d) B: columns 0 - 2, 1 + 2, 2 - 1, 1 - 3 of each row,
            // columns 0 and 2 even, 1 and 3 odd.
            let at = i * cols;
            for r in 0..4 {
                let e = &t[r * len..][..len];
                let o = &t[(4 + r) * len..][..len];
                // One point at a time: each loop reads two of the row's
                // vectors and writes one run of `v`.
                let at = |q: usize| (4 * r + q) * ci * n + c * n + at;
                let (e0, e1, o0, o1) = (&e[..cols], &e[1..], &o[..cols], &o[1..]);
                // (a, b, whether a + b rather than a - b)
                let columns = [
                    (e0, e1, false),
                    (o0, e1, true),
                    (e1, o0, false),
                    (o0, o1, false),
                ];
                for (q, (a, b, add)) in columns.into_iter().enumerate() {
                    let dst = &mut v[at(q)..][..cols];
                    if add {
                        for ((d, a), b) in dst.iter_mut().zip(a).zip(b) {
                            *d = a + b;
                        }
                    } else {
                        for ((d, a), b) in dst.iter_mut().zip(a).zip(b) {
                            *d = a - b;
                        }
                    }
                }
            }
        }
    }
}

/// Padded input rows `top..top + 4` of one channel's `plane` into
/// `rows`: the four rows' even columns, then their odd columns, each
/// `rows.len() / 8` values.
#[inline(always)]
fn read_rows(
    s: &Shape,
    plane: &[f32],
    top: usize,
    (even, odd): (&RowCopy, &RowCopy),
    rows: &mut [f32],
) {
    let (h, w) = s.in_hw;
    let len = rows.len() / 8;
    let (e, o) = rows.split_at_mut(4 * len);
    for r in 0..4 {
        let (e, o) = (&mut e[r * len..][..len], &mut o[r * len..][..len]);
        match (top + r).checked_sub(s.pad.0).filter(|&y| y < h) {
            Some(y) => {
                let src = &plane[y * w..][..w];
                even.fill(e, src);
                odd.fill(o, src);
            }
            None => {
                e.fill(0.0);
                o.fill(0.0);
            }
        }
    }
}

/// `Y = Aᵀ M A` for every tile of `tile_rows`, `Aᵀ` being `[[1, 1, 1, 0],
/// [0, 1, -1, -1]]`, plus the bias, then the epilogue, into the output
/// pixels the tile covers (those past the output's last row or column
/// dropped).
///
/// # Safety
/// `out` is the image's output, `c_out` planes of `ho` rows of `wo`, and no
/// other thread writes the rows of `tile_rows`.
#[inline(always)]
unsafe fn output_tiles(block: &OutputBlock<'_>, out: &SharedOut) {
    let (s, bias, e, m, residual) = (block.s, block.bias, block.epilogue, block.m, block.residual);
    let tile_rows = block.tile_rows.clone();
    let (ho, wo) = s.out_hw;
    let (_, cols) = tiles(s);
    let n = tile_rows.len() * cols;
    let co = s.c_out;
    let clamp = |v: f32, c: Option<(f32, f32)>| c.map_or(v, |(lo, hi)| v.max(lo).min(hi));
    let mut sums = vec![0f32; 4 * cols];
    let mut pair = vec![0f32; 2 * cols];
    for o in 0..co {
        let b = bias[o];
        for (i, tr) in tile_rows.clone().enumerate() {
            let at = o * n + i * cols;
            let point = |p: usize| &m[p * co * n + at..][..cols];
            for a in 0..2 {
                let y = 2 * tr + a;
                if y >= ho {
                    break;
                }
                // Aᵀ M: row a of the tile, column by column.
                for q in 0..4 {
                    let (m0, m1, m2, m3) = (point(q), point(4 + q), point(8 + q), point(12 + q));
                    let sum = &mut sums[q * cols..][..cols];
                    let m = m0.iter().zip(m1).zip(m2).zip(m3);
                    if a == 0 {
                        for (d, (((m0, m1), m2), _)) in sum.iter_mut().zip(m) {
                            *d = m0 + m1 + m2;
                        }
                    } else {
                        for (d, (((_, m1), m2), m3)) in sum.iter_mut().zip(m) {
                            *d = m1 - m2 - m3;
                        }
                    }
                }
                // (Aᵀ M) A: the row's two pixels of each tile.
                let (s0, s1, s2, s3) = (
                    &sums[..cols],
                    &sums[cols..2 * cols],
                    &sums[2 * cols..3 * cols],
                    &sums[3 * cols..],
                );
                let (left, right) = pair.split_at_mut(cols);
                let sums = s0.iter().zip(s1).zip(s2).zip(s3);
                for ((l, r), (((s0, s1), s2), s3)) in
                    left.iter_mut().zip(right.iter_mut()).zip(sums)
                {
                    *l = s0 + s1 + s2 + b;
                    *r = s1 - s2 - s3 + b;
                }
                // SAFETY: `out` holds `c_out` planes of `ho` rows of `wo`
                // pixels, and only this block writes rows `2 * tile_rows`.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(out.get().add((o * ho + y) * wo), wo) };
                for (px, (l, r)) in row.chunks_exact_mut(2).zip(left.iter().zip(right.iter())) {
                    px[0] = *l;
                    px[1] = *r;
                }
                if wo % 2 == 1 {
                    row[wo - 1] = left[wo / 2];
                }
                if let Some(pre) = e.pre {
                    for v in row.iter_mut() {
                        *v = clamp(*v, Some(pre));
                    }
                }
                if let Some(res) = residual {
                    let res = &res[(o * ho + y) * wo..][..wo];
                    for (v, r) in row.iter_mut().zip(res) {
                        *v = clamp(*v + r, e.post);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::tests::{assert_matches_definition, epilogues, shape};
    use crate::ops::conv::{available, Conv};
    use crate::ops::testing::{levels, noise, VECTOR_LEVELS};

    /// Odd and even output sizes (a last tile row or column half outside),
    /// padding of 0, 1 and 2 and asymmetric, channel counts that are not
    /// whole panels, a block of one tile row and of several, a plane of
    /// one tile, two images: against the definition at every vector level,
    /// with and without clamps and a residual.
    #[test]
    fn matches_the_definition_at_every_level() {
        let cases = [
            shape(2, 1, (64, 32), (8, 8), (3, 3), (1, 1), (1, 1), [1; 4]),
            shape(1, 1, (67, 33), (13, 11), (3, 3), (1, 1), (1, 1), [1; 4]),
            shape(
                1,
                1,
                (64, 40),
                (9, 14),
                (3, 3),
                (1, 1),
                (1, 1),
                [0, 2, 1, 0],
            ),
            shape(1, 1, (72, 32), (7, 31), (3, 3), (1, 1), (1, 1), [0; 4]),
            shape(1, 1, (64, 36), (2, 3), (3, 3), (1, 1), (1, 1), [2, 1, 2, 2]),
            shape(1, 1, (300, 40), (30, 12), (3, 3), (1, 1), (1, 1), [1; 4]),
        ];
        for level in levels("conv (winograd)", VECTOR_LEVELS) {
            for (n, s) in cases.iter().enumerate() {
                assert!(fits(s), "{s:?}");
                let w = noise(s.c_out * s.c_in * 9, 21 + n as u32);
                let b = noise(s.c_out, 22 + n as u32);
                let x = noise(s.images * s.c_in * s.in_hw.0 * s.in_hw.1, 23 + n as u32);
                let res = noise(s.images * s.c_out * s.out_pixels(), 24 + n as u32);
                for e in epilogues() {
                    let op = Conv::new(*s, (&[], &[]), &w, &b, e);
                    assert!(op.winograd.is_some());
                    assert_matches_definition(&op, (&w, &b), (&x, &res), level, "winograd");
                }
            }
        }
    }

    /// Blocks of one tile row, of two, and of all but a last short one
    /// give the one-block result (to rounding: a block's tiles split into
    /// other register tiles, whose sums round differently).
    #[test]
    fn any_block_size_gives_the_result_of_one_block() {
        if !available() {
            return; // tract runs these layers on this CPU.
        }
        let s = shape(1, 1, (64, 40), (11, 13), (3, 3), (1, 1), (1, 1), [1; 4]);
        let (rows, _) = tiles(&s);
        let w = noise(s.c_out * s.c_in * 9, 7);
        let b = noise(s.c_out, 8);
        let x = noise(s.c_in * s.in_hw.0 * s.in_hw.1, 9);
        let op = Conv::new(s, (&[], &[]), &w, &b, epilogues()[1]);
        let winograd = op.winograd.as_ref().unwrap();
        let isa = Isa::of(crate::ops::Level::detect()).unwrap();
        let run = |block| {
            let mut y = vec![f32::NAN; s.c_out * s.out_pixels()];
            let e = (&op.bias[..], op.epilogue);
            winograd
                .compute_in_blocks(&s, isa, e, &x, None, &mut y, block)
                .unwrap();
            y
        };
        let whole = run(rows);
        assert!(whole.iter().all(|v| v.is_finite()));
        for block in [1, 2, rows - 1] {
            for (i, (a, b)) in run(block).iter().zip(&whole).enumerate() {
                let close = (a - b).abs() <= 1e-5 * (1.0 + b.abs());
                assert!(close, "blocks of {block} tile rows, at {i}: {a} vs {b}");
            }
        }
    }

    /// Only stride-1, undilated, ungrouped 3x3 layers with enough
    /// channels on both sides.
    #[test]
    fn fits_only_wide_stride_one_three_by_three() {
        let s = |c: (usize, usize), groups, kernel, stride, dilation| {
            shape(1, groups, c, (14, 14), kernel, stride, dilation, [1; 4])
        };
        assert!(fits(&s((64, 64), 1, (3, 3), (1, 1), (1, 1))));
        assert!(!fits(&s((64, 64), 2, (3, 3), (1, 1), (1, 1))));
        assert!(!fits(&s((64, 64), 1, (3, 3), (2, 2), (1, 1))));
        assert!(!fits(&s((64, 64), 1, (3, 3), (1, 1), (2, 2))));
        assert!(!fits(&s((64, 64), 1, (5, 5), (1, 1), (1, 1))));
        assert!(!fits(&s((8, 64), 1, (3, 3), (1, 1), (1, 1))));
        assert!(!fits(&s((64, 8), 1, (3, 3), (1, 1), (1, 1))));
        assert!(!fits(&s((48, 192), 1, (3, 3), (1, 1), (1, 1))));
    }

    /// Over two threads (blocks of tile rows), every output is written
    /// once and equals the one-thread result bit for bit.
    #[test]
    fn two_threads_give_the_bits_of_one() {
        if !available() {
            return; // tract runs these layers on this CPU.
        }
        let pool = crate::ops::OperatorPool::new(2);
        let s = shape(2, 1, (64, 40), (29, 20), (3, 3), (1, 1), (1, 1), [1; 4]);
        let w = noise(s.c_out * s.c_in * 9, 3);
        let b = noise(s.c_out, 4);
        let x = noise(s.images * s.c_in * s.in_hw.0 * s.in_hw.1, 5);
        let len = s.images * s.c_out * s.out_pixels();
        let res = noise(len, 6);
        let op = Conv::new(s, (&[], &[]), &w, &b, epilogues()[3]);
        let mut one = vec![f32::NAN; len];
        op.compute(&x, Some(&res), &mut one).unwrap();
        let mut two = vec![f32::NAN; len];
        pool.run(|| op.compute(&x, Some(&res), &mut two)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(one.iter().all(|v| v.is_finite()));
        assert_eq!(bits(&one), bits(&two));
    }
}

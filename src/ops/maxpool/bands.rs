//! Max pooling over its input a band of rows at a time, as the layer
//! before it computes them (`conv::pooled`, `stem`): that layer's output
//! is never written whole, only a band of it into a scratch that stays
//! in L2 (ResNet's stem writes 3.2 MB for a pool that keeps a quarter).

use std::mem::size_of;
use std::ops::Range;

use tract_onnx::prelude::*;

use super::{planes, Geometry, MaxPool};
use crate::ops::{replace_with, sole_successor, Level};

/// Bytes of the pooled layer's rows a band holds: with that layer's copy
/// of its input and its weights, inside a 1 MiB L2. Bands of 128 KB to
/// 1 MB ran ResNet-18's stem the same; 64 KB slower (docs/operators.md).
const BAND_BYTES: usize = 256 << 10;

/// Pooled rows a band computes when each input row of the pool is
/// `row_values` values (every plane's row): as many as [`BAND_BYTES`]
/// hold, at least one.
pub(crate) fn band_rows(row_values: usize, pool: &Geometry) -> usize {
    let row = row_values * size_of::<f32>() * pool.stride.0;
    (BAND_BYTES / row.max(1)).max(1)
}

/// Joins the project's max pool to each node of operator `O` whose output
/// it alone reads, where `join(op, pool, pooled shape)` makes the joined
/// operator (`None` leaves them apart). Runs after `maxpool::install`;
/// returns how many it joined.
pub(crate) fn join_pools<O: TypedOp>(
    model: &mut TypedModel,
    what: &str,
    join: impl Fn(&O, &MaxPool, &[usize]) -> Option<O>,
) -> TractResult<usize> {
    let mut joined = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<O>() else {
            continue;
        };
        let Some(next) = sole_successor(model, id) else {
            continue;
        };
        let Some(pool) = next.op_as::<MaxPool>() else {
            continue;
        };
        let fact = model.outlet_fact(OutletId::new(next.id, 0))?;
        let Some(joined_op) = fact
            .shape
            .as_concrete()
            .and_then(|shape| join(op, pool, shape))
        else {
            continue;
        };
        let (input, name, last) = (node.inputs[0], node.name.clone(), next.id);
        replace_with(model, what, &[input], (&name, joined_op), last)?;
        joined += 1;
    }
    model.compact()?;
    Ok(joined)
}

/// The bands of a pool `g`, `band` pooled rows each, in order.
pub(crate) struct Bands {
    pool: Geometry,
    band: usize,
    next: usize,
    /// The input rows the previous band held.
    held: Range<usize>,
}

/// One band: pooled rows, the input rows their windows read, and which
/// of those the previous band already holds.
pub(crate) struct Band {
    pub(crate) pooled: Range<usize>,
    /// Input rows held, from the top of each plane's scratch.
    pub(crate) rows: Range<usize>,
    /// Rows from `rows.start` to here are the previous band's last, moved
    /// to the top by [`Band::keep`]; the caller computes the rest.
    pub(crate) fresh: usize,
    /// Where `rows.start` was in the previous band's scratch, in rows.
    from: usize,
    /// The pool over just these rows.
    geometry: Geometry,
}

impl Bands {
    pub(crate) fn new(pool: Geometry, band: usize) -> Bands {
        Bands {
            pool,
            band: band.max(1),
            next: 0,
            held: 0..0,
        }
    }

    /// Input rows one band holds at most: a scratch plane's height.
    pub(crate) fn cap(&self) -> usize {
        let g = &self.pool;
        ((self.band - 1) * g.stride.0 + g.kernel).min(g.in_hw.0)
    }
}

impl Iterator for Bands {
    type Item = Band;

    fn next(&mut self) -> Option<Band> {
        let g = self.pool;
        let (h, (k, sy, py)) = (g.in_hw.0, (g.kernel, g.stride.0, g.pad.0));
        if self.next >= g.out_hw.0 || h == 0 {
            return None;
        }
        let pooled = self.next..(self.next + self.band).min(g.out_hw.0);
        self.next = pooled.end;
        // ONNX (ceil mode too) starts every window inside the input or
        // its leading padding, so the rows are never empty.
        let first = (pooled.start * sy).saturating_sub(py).min(h - 1);
        let end = ((pooled.end - 1) * sy + k)
            .saturating_sub(py)
            .clamp(first + 1, h);
        let fresh = self.held.end.clamp(first, end);
        let from = first.saturating_sub(self.held.start);
        self.held = first..end;
        let geometry = Geometry {
            in_hw: (end - first, g.in_hw.1),
            out_hw: (pooled.len(), g.out_hw.1),
            pad: (py.saturating_sub(pooled.start * sy), g.pad.1),
            ..g
        };
        Some(Band {
            pooled,
            rows: first..end,
            fresh,
            from,
            geometry,
        })
    }
}

impl Band {
    /// Moves the rows this band shares with the previous one to the top
    /// of each plane of `planes` (`len` values apart, rows `width` wide).
    pub(crate) fn keep(&self, planes: &mut [f32], len: usize, width: usize) {
        let kept = self.fresh - self.rows.start;
        if kept == 0 || self.from == 0 {
            return;
        }
        for plane in planes.chunks_exact_mut(len) {
            plane.copy_within(self.from * width..(self.from + kept) * width, 0);
        }
    }

    /// Pools one plane's held rows (`rows`, from its top) into the pooled
    /// rows of `out`, the whole output plane.
    pub(crate) fn pool(&self, rows: &[f32], out: &mut [f32], scratch: &mut Vec<f32>, level: Level) {
        let g = &self.geometry;
        let width = g.out_hw.1;
        let from = &rows[..g.in_hw.0 * g.in_hw.1];
        let to = &mut out[self.pooled.start * width..self.pooled.end * width];
        // SAFETY: `planes` compiled it for `level`, one this CPU has.
        unsafe { planes(level)(from, to, g, scratch, level) };
    }
}

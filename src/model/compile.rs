//! The compile step: the ONNX graph typed for a fixed batch, decluttered,
//! the project's operators put in (`crate::ops::install`), optimised by
//! tract, and checked to give `[batch, classes, ...]`.

use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;

use super::{ms_since, CompileTimes, Layout, Manifest, Plan};
use crate::error::ModelError;

/// Fixes the input to `batch` images of the manifest's size, optimises the
/// graph, and checks the output is `[batch, classes, ...]`.
pub(super) fn compile(
    mut graph: InferenceModel,
    manifest: &Manifest,
    batch: usize,
    own_kernels: bool,
) -> Result<(Arc<Plan>, usize, CompileTimes), ModelError> {
    let (h, w) = (
        manifest.input.height as usize,
        manifest.input.width as usize,
    );
    let shape: [usize; 4] = match manifest.input.layout {
        Layout::Nchw => [batch, 3, h, w],
        Layout::Nhwc => [batch, h, w, 3],
    };
    graph
        .set_input_fact(0, f32::fact(shape).into())
        .map_err(|e| ModelError::Shape(format!("cannot set input to {shape:?}: {e:#}")))?;
    let optimize = |e: anyhow::Error| ModelError::Optimize(format!("{e:#}"));
    let mut times = CompileTimes::default();
    let t = Instant::now();
    let mut typed = graph.into_typed().map_err(optimize)?;
    super::declutter::declutter(&mut typed).map_err(optimize)?;
    times.declutter_ms = ms_since(t);
    let t = Instant::now();
    if own_kernels {
        crate::ops::install(&mut typed).map_err(optimize)?;
    }
    times.own_kernels_ms = ms_since(t);
    let t = Instant::now();
    let typed = typed.into_optimized().map_err(optimize)?;
    times.optimize_ms = ms_since(t);
    let out_fact = typed
        .output_fact(0)
        .map_err(|e| ModelError::Shape(format!("{e:#}")))?;
    let out_shape = out_fact
        .shape
        .as_concrete()
        .ok_or_else(|| {
            ModelError::Shape(format!("output shape {:?} is not fixed", out_fact.shape))
        })?
        .to_vec();
    let total: usize = out_shape.iter().product();
    if out_shape.first() != Some(&batch) || !total.is_multiple_of(batch) || total / batch < 2 {
        return Err(ModelError::Shape(format!(
            "output shape {out_shape:?} is not [batch, classes, ...]"
        )));
    }
    let t = Instant::now();
    let plan = typed
        .into_runnable()
        .map_err(|e| ModelError::Optimize(format!("{e:#}")))?;
    times.plan_ms = ms_since(t);
    Ok((plan, total / batch, times))
}

//! What the operators' tests share: deterministic inputs, a model run once
//! through tract, and the bundled model as the compile step sees it.
#![cfg(test)]

use tract_onnx::prelude::*;

use crate::ops::{Level, Simd};

pub(crate) use crate::ops::noise;

/// `model` optimised and run once on `input`: its first output's values.
pub(crate) fn run_optimized(model: TypedModel, input: &Tensor) -> Vec<f32> {
    let out = model
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
        .run(tvec![input.clone().into()])
        .unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// The bundled MobileNetV2 at batch 1, as the loader's declutter leaves
/// it (where the operators are installed).
pub(crate) fn bundled_decluttered() -> TypedModel {
    let path = crate::config::bundled_model_path();
    let mut graph = tract_onnx::onnx().model_for_path(&path).unwrap();
    graph
        .set_input_fact(0, f32::fact([1, 3, 224, 224]).into())
        .unwrap();
    let mut model = graph.into_typed().unwrap();
    crate::model::declutter::declutter(&mut model).unwrap();
    model
}

/// The levels a kernel test runs: those in `kernels` (the levels the
/// operator has kernels for) that this CPU has, lowest first; it prints
/// them, so a run shows what was tested.
///
/// CI names the levels its machine has in `ONNX_LAMBDA_EXPECT_SIMD`
/// (`.ci/run` reads them from `/proc/cpuinfo`, not from the detection
/// under test): there, a level the machine has and the operator
/// implements must be among them, or the test fails instead of passing
/// with a kernel untested.
pub(crate) fn levels(what: &str, kernels: &[Simd]) -> Vec<Level> {
    let run: Vec<Level> = Level::available()
        .into_iter()
        .filter(|l| kernels.contains(&l.simd()))
        .collect();
    let names: Vec<&str> = run.iter().map(|l| l.simd().name()).collect();
    eprintln!("{what}: runs at {names:?}");
    if let Ok(expected) = std::env::var("ONNX_LAMBDA_EXPECT_SIMD") {
        for name in expected.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let level = Simd::parse(name).unwrap();
            assert!(
                !kernels.contains(&level) || run.iter().any(|l| l.simd() == level),
                "{what}: this machine has {name}, and its kernel would not run (only {names:?})"
            );
        }
    }
    run
}

/// Every level: for operators with a kernel at each.
pub(crate) const ALL_LEVELS: &[Simd] = &[Simd::Portable, Simd::Avx2, Simd::Avx512, Simd::Neon];
/// The vector levels: for operators without a portable kernel.
pub(crate) const VECTOR_LEVELS: &[Simd] = &[Simd::Avx2, Simd::Avx512, Simd::Neon];

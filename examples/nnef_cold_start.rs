//! Cold-start experiment behind the README's "Cold start and size": how long
//! tract takes to get the bundled model ready from its ONNX bytes, against
//! a pre-decluttered NNEF copy of it (what the package could ship instead).
//!
//! `cargo run --example nnef_cold_start` (the dev profile builds tract at
//! opt-level 3, so its times are tract's release times).
//!
//! Prints the median of 7 rounds for each stage, alternating the two paths.

use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::WithOnnx;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ONNX bytes to a decluttered model with the input fixed to one image.
fn from_onnx(bytes: &[u8]) -> TractResult<TypedModel> {
    let mut graph = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
    graph.set_input_fact(0, f32::fact([1, 3, 224, 224]).into())?;
    graph.into_typed()?.into_decluttered()
}

fn main() -> TractResult<()> {
    let onnx = std::fs::read(onnx_lambda::bundled_model_path())?;
    let nnef = tract_nnef::nnef().with_onnx();
    let tar = nnef.write_to_tar(&from_onnx(&onnx)?, Vec::new())?;
    let (mut onnx_ready, mut nnef_ready, mut optimize) = (vec![], vec![], vec![]);
    for _ in 0..7 {
        let t = Instant::now();
        let model = from_onnx(&onnx)?;
        onnx_ready.push(ms(t));
        let t = Instant::now();
        let _plan = model.into_optimized()?.into_runnable()?;
        optimize.push(ms(t));
        let t = Instant::now();
        let model = nnef.model_for_read(&mut &tar[..])?;
        nnef_ready.push(ms(t));
        let _plan = model.into_optimized()?.into_runnable()?;
    }
    println!(
        "bundled model: {} bytes of ONNX, {} bytes of NNEF (tar)",
        onnx.len(),
        tar.len()
    );
    println!("| stage | median of 7 |");
    println!("| --- | ---: |");
    println!(
        "| ONNX: parse, type, declutter | {:.1} ms |",
        median(onnx_ready)
    );
    println!(
        "| NNEF (decluttered): parse | {:.1} ms |",
        median(nnef_ready)
    );
    println!(
        "| then optimise + plan (either) | {:.1} ms |",
        median(optimize)
    );
    Ok(())
}

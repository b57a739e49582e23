//! The `onnx-lambda` binary: parses the command line, builds the model once
//! and hands it to the chosen door. All logic lives in the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use onnx_lambda::bench::{self, BenchOptions};
use onnx_lambda::{Classifier, InputLimits, LoadOptions, Model};

#[derive(Parser)]
#[command(
    name = "onnx-lambda",
    version,
    about = "ONNX image classification: CLI, benchmark, and (soon) Lambda/SQS/HTTP doors"
)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArgs {
    /// ONNX model file; its manifest is the same path with `.json`. Default: the bundled MobileNetV2.
    #[arg(long, global = true, env = "MODEL_URI", value_name = "PATH")]
    model: Option<PathBuf>,
    /// Largest encoded image accepted, in bytes.
    #[arg(long, global = true, env = "MAX_INPUT_BYTES", default_value_t = InputLimits::default().max_bytes)]
    max_input_bytes: u64,
    /// Largest decoded image accepted, in pixels (width x height).
    #[arg(long, global = true, env = "MAX_IMAGE_PIXELS", default_value_t = InputLimits::default().max_pixels)]
    max_image_pixels: u64,
    /// Images classified at once (default: one per core).
    #[arg(long, global = true, env = "THREADS")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files; prints one JSON object per file (JSON Lines).
    Predict {
        /// How many classes to report per image.
        #[arg(long, env = "TOP_K", default_value_t = 5)]
        top_k: usize,
        /// Image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Offline batch benchmark: throughput, latency percentiles, load time, peak memory.
    Bench {
        /// Images per batch call.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Measured passes over the images.
        #[arg(long, default_value_t = 10)]
        iterations: usize,
        /// Unmeasured passes first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Compile the model for this fixed batch size (1 is fastest; for comparison only).
        #[arg(long, default_value_t = 1)]
        plan_batch: usize,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Image files or folders (default: the bundled sample images).
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let plan_batch = match &cli.command {
        Command::Bench { plan_batch, .. } => *plan_batch,
        _ => 1,
    };
    let started = Instant::now();
    let path = cli
        .model
        .model
        .clone()
        .unwrap_or_else(onnx_lambda::model::bundled_model_path);
    let model = Model::load_path(
        &path,
        LoadOptions {
            batch_size: plan_batch,
        },
    )
    .with_context(|| format!("loading model {}", path.display()))?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let limits = InputLimits {
        max_bytes: cli.model.max_input_bytes,
        max_pixels: cli.model.max_image_pixels,
    };
    let mut classifier = Classifier::new(Arc::new(model), limits);
    if let Some(t) = cli.model.threads {
        classifier = classifier.with_threads(t);
    }
    match cli.command {
        Command::Predict { top_k, files } => predict(&classifier, &files, top_k),
        Command::Bench {
            batch_size,
            iterations,
            warmup,
            json,
            paths,
            ..
        } => {
            let files = image_files(&paths)?;
            let images = files
                .iter()
                .map(|f| {
                    Ok((
                        f.display().to_string(),
                        std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = BenchOptions {
                batch_size,
                iterations,
                warmup,
                progress: std::io::stderr().is_terminal(),
            };
            let report = bench::run(&classifier, &images, &options, load_ms);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Classifies files in chunks (bounded memory), printing JSON Lines in input order.
fn predict(classifier: &Classifier, files: &[PathBuf], top_k: usize) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in files.chunks(classifier.threads() * 4) {
        let read: Vec<std::io::Result<Vec<u8>>> = chunk.iter().map(std::fs::read).collect();
        let inputs: Vec<&[u8]> = read
            .iter()
            .map(|r| r.as_ref().map_or(&[][..], |b| b.as_slice()))
            .collect();
        let results = classifier.classify_batch(&inputs, top_k);
        for ((file, bytes), result) in chunk.iter().zip(&read).zip(results) {
            let line = match (bytes, result) {
                (Err(e), _) => {
                    failed = true;
                    serde_json::json!({"file": file, "error": {"code": "read_failed", "message": format!("cannot read {}: {e}", file.display())}})
                }
                (Ok(_), Ok(c)) => {
                    serde_json::json!({"file": file, "predictions": c.predictions, "timing_ms": c.timing_ms})
                }
                (Ok(_), Err(e)) => {
                    failed = true;
                    serde_json::json!({"file": file, "error": {"code": e.code(), "message": e.to_string()}})
                }
            };
            writeln!(out, "{line}")?;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

const IMAGE_EXTENSIONS: [&str; 13] = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "pnm", "pbm", "pgm", "ppm", "pam",
];

/// Expands folders into their image files (by extension, sorted); files are kept as given.
fn image_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let default = [sample_images_dir()];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    anyhow::ensure!(!files.is_empty(), "no image files found in {paths:?}");
    Ok(files)
}

/// The sample photos shipped with the repository.
fn sample_images_dir() -> PathBuf {
    let rel = Path::new("tests/data/images");
    if rel.is_dir() {
        rel.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

fn print_report(r: &bench::BenchReport) {
    println!("model            {}", r.model);
    println!(
        "images           {} x {} iterations = {} classified, {} errors",
        r.images, r.iterations, r.classified, r.errors
    );
    println!(
        "batch size       {} (fanned out over {} threads)",
        r.batch_size, r.threads
    );
    println!("throughput       {:.1} images/s", r.images_per_second);
    let p = |x: &bench::Percentiles| {
        format!(
            "p50 {:.1}  p95 {:.1}  p99 {:.1}  mean {:.1}",
            x.p50, x.p95, x.p99, x.mean
        )
    };
    println!("image latency    {} ms", p(&r.latency_ms));
    println!("batch latency    {} ms", p(&r.batch_latency_ms));
    println!(
        "stages (mean)    decode {:.1}  preprocess {:.1}  inference {:.1} ms",
        r.stage_mean_ms.decode, r.stage_mean_ms.preprocess, r.stage_mean_ms.inference
    );
    println!("model load       {:.0} ms", r.model_load_ms);
    println!(
        "peak RSS         {:.1} MiB",
        r.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    );
}

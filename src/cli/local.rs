//! `predict` and `bench`: the pipeline on local files, no server.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use onnx_lambda::bench::{self, BenchOptions, BenchReport, LambdaPricing, Percentiles};
use onnx_lambda::model::OpProfile;
use onnx_lambda::ops::{fma_peak, Simd};
use onnx_lambda::{
    Classifier, Config, ErrorBody, InputError, LoadOptions, ModelLoader, OperatorPool,
};
use serde_json::json;

use super::args::{BenchArgs, Overrides, PredictArgs, ProfileArgs};
use super::files::image_files;
use super::{configure, sdk_if_needed};

/// Loads the model (from S3 when configured) for a local command.
async fn classifier(config: &Config, options: LoadOptions) -> anyhow::Result<(Classifier, f64)> {
    let sdk = sdk_if_needed(config).await?;
    let loader = ModelLoader::new(sdk.as_ref().map(onnx_lambda::aws::s3_client));
    let started = Instant::now();
    let loaded = loader
        .load_with(config, options)
        .await
        .with_context(|| format!("loading the model from {}", config.model))?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok((Classifier::configured(loaded.model, config), load_ms))
}

/// `predict`: classifies files in chunks (bounded memory), printing JSON
/// Lines in input order; fails if any file failed.
pub async fn predict(overrides: &Overrides, args: PredictArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, args.top_k.as_ref())?;
    let (classifier, _) = classifier(&config, LoadOptions::default()).await?;
    let mut failed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in args.files.chunks(classifier.threads() * 4) {
        let lines = tokio::task::block_in_place(|| predict_chunk(&classifier, chunk, config.top_k));
        for (line, ok) in lines {
            failed |= !ok;
            writeln!(out, "{line}")?;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One JSON line per file, and whether it succeeded.
fn predict_chunk(
    classifier: &Classifier,
    files: &[PathBuf],
    top_k: usize,
) -> Vec<(serde_json::Value, bool)> {
    let limit = classifier.limits().max_bytes;
    let read: Vec<Result<Vec<u8>, ErrorBody>> =
        files.iter().map(|f| read_image(f, limit)).collect();
    let inputs: Vec<&[u8]> = read.iter().filter_map(|r| r.as_deref().ok()).collect();
    let mut results = classifier.classify_batch(&inputs, top_k).into_iter();
    files
        .iter()
        .zip(read)
        .map(|(file, bytes)| {
            let outcome = bytes.and_then(|_| {
                let result = results.next().expect("one result per image read");
                result.map_err(|e| ErrorBody::of(&e))
            });
            match outcome {
                Ok(c) => (
                    json!({"file": file, "predictions": c.predictions, "timing_ms": c.timing_ms}),
                    true,
                ),
                Err(error) => (json!({"file": file, "error": error}), false),
            }
        })
        .collect()
}

/// A file's bytes; a file over `MAX_INPUT_BYTES` is refused from its size,
/// without reading it.
fn read_image(file: &Path, limit: u64) -> Result<Vec<u8>, ErrorBody> {
    let cannot = |e: std::io::Error| {
        ErrorBody::new(
            "read_failed",
            format!("cannot read {}: {e}", file.display()),
        )
    };
    let meta = std::fs::metadata(file).map_err(cannot)?;
    if !meta.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file");
        return Err(cannot(e));
    }
    let size = meta.len();
    if size > limit {
        return Err(ErrorBody::of(&InputError::TooManyBytes {
            actual: size,
            limit,
        }));
    }
    std::fs::read(file).map_err(cannot)
}

/// `bench`: the offline batch benchmark.
pub async fn bench(overrides: &Overrides, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    if let Some(level) = args.simd {
        Simd::limit(level);
    }
    let options = LoadOptions {
        plan_batch: args.plan_batch,
        own_kernels: !args.tract_kernels,
    };
    let (classifier, load_ms) = classifier(&config, options).await?;
    let files = image_files(&args.paths)?;
    let images = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            Ok((f.display().to_string(), bytes))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = BenchOptions {
        batch_size: args.batch_size,
        iterations: args.iterations,
        warmup: args.warmup,
        progress: std::io::stderr().is_terminal(),
        pricing: pricing(&args),
    };
    let report =
        tokio::task::block_in_place(|| bench::run(&classifier, &images, &options, load_ms));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `profile`: per-operator time of the compiled model on one image-shaped
/// input, with the machine it ran on.
pub async fn profile(overrides: &Overrides, args: ProfileArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    if let Some(level) = args.simd {
        Simd::limit(level);
    }
    let options = LoadOptions {
        own_kernels: !args.tract_kernels,
        ..LoadOptions::default()
    };
    let (classifier, load_ms) = classifier(&config, options).await?;
    let model = classifier.model();
    let input = model.example_input();
    let compile = model.compile_times();
    let pool = (args.split > 1).then(|| OperatorPool::new(args.split));
    let rows = tokio::task::block_in_place(|| {
        model.profile(input, args.rounds, args.by_node, pool.as_ref())
    })?;
    let machine = bench::machine();
    // Measured after the rounds, on this thread: the CPU is warm, and the
    // operators of a split ran on as many cores, each with this peak.
    let peak = fma_peak();
    if args.json {
        println!(
            "{}",
            json!({
                "machine": machine,
                "rounds": args.rounds,
                "split": args.split,
                "peak": peak,
                "load": {"total_ms": load_ms, "compile": compile},
                "ops": rows,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("machine: {machine}");
    println!("model: {} ({} rounds)", model.info().source, args.rounds);
    println!(
        "load: {load_ms:.1} ms = read + sha256 + parse {:.1} + declutter {:.1} + own operators {:.1} + optimise {:.1} + plan {:.1} ms",
        compile.parse_ms, compile.declutter_ms, compile.own_kernels_ms, compile.optimize_ms, compile.plan_ms
    );
    println!(
        "peak: {:.1} GMAC/s per core ({} FMAs, {} chains in registers, best of 5){}\n",
        peak.gmacs,
        peak.simd,
        peak.chains,
        if args.split > 1 {
            format!("; x {} cores", args.split)
        } else {
            String::new()
        }
    );
    print_profile(&rows, peak.gmacs * args.split.max(1) as f64);
    Ok(ExitCode::SUCCESS)
}

/// The per-operator table, with each row's share of `peak` GMAC/s.
fn print_profile(rows: &[OpProfile], peak: f64) {
    let total_ms: f64 = rows.iter().map(|r| r.ms).sum();
    let total_macs: u64 = rows.iter().map(|r| r.macs).sum();
    let of_peak = |gmacs: f64| 100.0 * gmacs / peak.max(f64::MIN_POSITIVE);
    println!("| operator | nodes | ms per image | share | GMAC/s | of peak |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| `{}` | {} | {:.2} | {:.0}% | {:.1} | {:.0}% |",
            r.op,
            r.nodes,
            r.ms,
            100.0 * r.ms / total_ms.max(1e-9),
            r.gmacs_per_second(),
            of_peak(r.gmacs_per_second())
        );
    }
    let gmacs = total_macs as f64 / total_ms.max(1e-9) / 1e6;
    println!(
        "| **total** | {} | {:.2} | 100% | {:.1} | {:.0}% |",
        rows.iter().map(|r| r.nodes).sum::<usize>(),
        total_ms,
        gmacs,
        of_peak(gmacs)
    );
}

/// List prices for the flags, with any price the user overrides.
fn pricing(args: &BenchArgs) -> LambdaPricing {
    let memory_mb = args.memory_mb.unwrap_or_else(|| {
        std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(bench::MB_PER_VCPU)
    });
    let mut p = LambdaPricing::list(&args.arch, memory_mb, args.batch_size);
    if let Some(v) = args.price_gb_second {
        p.price_gb_second = v;
    }
    if let Some(v) = args.price_per_million_requests {
        p.price_per_million_requests = v;
    }
    p
}

fn print_report(r: &BenchReport) {
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
    let p = |x: &Percentiles| {
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
    println!("CPU per image    {:.2} ms", r.cpu_ms_per_image);
    let p = &r.pricing;
    println!(
        "Lambda cost      ${:.3} per million images ({} at {:.0} MB, ${}/GB-s, {} images per invocation)",
        r.usd_per_million_images, p.arch, p.memory_mb, p.price_gb_second, p.images_per_invocation
    );
    println!("machine          {}", r.machine);
}

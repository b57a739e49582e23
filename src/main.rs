//! The `onnx-lambda` binary: parses the command line, validates the
//! configuration, builds the model and SDK clients once, and hands them to
//! the chosen door. All logic lives in the library.
//!
//! With no subcommand inside Lambda (`AWS_LAMBDA_RUNTIME_API` is set, as for
//! a `bootstrap` in a custom runtime) it runs the Lambda handler.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use onnx_lambda::bench::{self, BenchOptions};
use onnx_lambda::config::{self, Config};
use onnx_lambda::lambda::App;
use onnx_lambda::model::source::{Location, ModelLoader};
use onnx_lambda::{Classifier, LoadOptions};

#[derive(Parser)]
#[command(
    name = "onnx-lambda",
    version,
    about = "ONNX image classification for AWS Lambda, SQS and the command line",
    after_help = "Every setting can also come from the environment (MODEL_URI, MODEL_MANIFEST_URI, MODEL_SHA256, \
                  MODEL_MAX_BYTES, TOP_K, MAX_INPUT_BYTES, MAX_IMAGE_PIXELS, THREADS, S3_INPUT_ALLOWLIST, \
                  MAX_REQUEST_BYTES, MAX_BATCH_IMAGES, RESULTS_QUEUE_URL); flags win. See README.md."
)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags that override the environment.
#[derive(Args)]
struct Overrides {
    /// Model location: s3://bucket/key[?versionId=V], file:///path or a path [env: MODEL_URI]
    #[arg(long, global = true, value_name = "URI")]
    model: Option<String>,
    /// Largest encoded image accepted, in bytes [env: MAX_INPUT_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    max_input_bytes: Option<String>,
    /// Largest decoded image accepted, in pixels [env: MAX_IMAGE_PIXELS]
    #[arg(long, global = true, value_name = "PIXELS")]
    max_image_pixels: Option<String>,
    /// Images classified at once (default: one per core) [env: THREADS]
    #[arg(long, global = true, value_name = "N")]
    threads: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files; prints one JSON object per file (JSON Lines).
    Predict {
        /// How many classes to report per image [env: TOP_K, default 5]
        #[arg(long, value_name = "N")]
        top_k: Option<String>,
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
    /// Serve the HTTP API (/predict, /health, /ready, /model, KServe V2 /v2) locally.
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
    },
    /// Process SQS jobs outside Lambda: long polling, results to RESULTS_QUEUE_URL.
    Worker {
        /// The job queue URL.
        #[arg(long)]
        queue: String,
        /// The results queue URL [env: RESULTS_QUEUE_URL]
        #[arg(long)]
        results_queue: Option<String>,
        /// Messages per receive (1 to 10).
        #[arg(long, default_value_t = 10)]
        batch_size: i32,
        /// Batches processed at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Visibility timeout in seconds, renewed while a batch runs.
        #[arg(long, default_value_t = 60)]
        visibility_timeout: i32,
        /// Long-poll wait in seconds (0 to 20).
        #[arg(long, default_value_t = 20)]
        wait_seconds: i32,
    },
    /// Upload images to S3 and enqueue one job per image.
    Submit {
        /// Bucket to upload to.
        #[arg(long)]
        bucket: String,
        /// Key prefix (e.g. `batch-42/`).
        #[arg(long, default_value = "")]
        prefix: String,
        /// The job queue URL.
        #[arg(long)]
        queue: String,
        /// Image files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Drain results into a JSON Lines file until N distinct jobs have results.
    Collect {
        /// The results queue URL.
        #[arg(long)]
        queue: String,
        /// Distinct job ids to wait for.
        #[arg(long)]
        expect: usize,
        /// Output file (JSON Lines).
        #[arg(long)]
        out: PathBuf,
        /// Give up after this many seconds without a new result.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Run as an AWS Lambda function (the default inside Lambda).
    Lambda,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => {
            eprintln!("error: no command given; try `onnx-lambda --help`");
            return ExitCode::from(2);
        }
    };
    init_tracing(matches!(command, Command::Lambda));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.overrides, command)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// JSON logs on stderr (CloudWatch takes both streams); `RUST_LOG` overrides
/// the level (info inside Lambda, warn on the command line).
fn init_tracing(lambda: bool) {
    let default = if lambda { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

/// The environment, then flags on top; every value validated.
fn configure(o: &Overrides, top_k: Option<&String>) -> anyhow::Result<Config> {
    let mut c = Config::from_env()?;
    if let Some(m) = &o.model {
        c.model = Location::parse("--model", m)?;
    }
    if let Some(v) = &o.max_input_bytes {
        c.limits.max_bytes = config::parse_positive("--max-input-bytes", v, "a number of bytes")?;
    }
    if let Some(v) = &o.max_image_pixels {
        c.limits.max_pixels =
            config::parse_positive("--max-image-pixels", v, "a number of pixels")?;
    }
    if let Some(v) = &o.threads {
        c.threads = Some(config::parse_positive("--threads", v, "a number of threads")? as usize);
    }
    if let Some(v) = top_k {
        c.top_k = config::parse_top_k("--top-k", v)?;
    }
    Ok(c)
}

/// The SDK configuration when anything needs AWS: an S3 model, or a door
/// that reads S3 inputs or writes SQS results. Loaded once.
async fn sdk_if_needed(config: &Config, door_needs_aws: bool) -> Option<aws_config::SdkConfig> {
    let on_s3 = |l: &Location| matches!(l, Location::S3 { .. });
    if door_needs_aws || on_s3(&config.model) || config.manifest.as_ref().is_some_and(on_s3) {
        Some(onnx_lambda::aws::sdk_config().await)
    } else {
        None
    }
}

async fn run(overrides: Overrides, command: Command) -> anyhow::Result<ExitCode> {
    let top_k = match &command {
        Command::Predict { top_k, .. } => top_k.as_ref(),
        _ => None,
    };
    let mut config = configure(&overrides, top_k)?;
    if let Command::Worker {
        results_queue: Some(q),
        ..
    } = &command
    {
        config.results_queue_url = Some(q.clone());
    }
    let needs_aws = !matches!(command, Command::Predict { .. } | Command::Bench { .. });
    let sdk = sdk_if_needed(&config, needs_aws).await;
    let s3 = sdk.as_ref().map(onnx_lambda::aws::s3_client);
    let sqs = sdk.as_ref().map(onnx_lambda::aws::sqs_client);
    match (&command, &s3, &sqs) {
        (
            Command::Submit {
                bucket,
                prefix,
                queue,
                paths,
            },
            Some(s3),
            Some(sqs),
        ) => {
            let files = image_files(paths)?;
            let summary = onnx_lambda::jobs::bulk::submit(
                s3,
                sqs,
                bucket,
                prefix,
                queue,
                &files,
                std::io::stderr().is_terminal(),
            )
            .await;
            println!("{}", serde_json::to_string(&summary)?);
            return Ok(if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        (
            Command::Collect {
                queue,
                expect,
                out,
                timeout,
            },
            _,
            Some(sqs),
        ) => {
            let summary = onnx_lambda::jobs::bulk::collect(
                sqs,
                queue,
                *expect,
                out,
                std::time::Duration::from_secs(*timeout),
                std::io::stderr().is_terminal(),
            )
            .await?;
            println!("{}", serde_json::to_string(&summary)?);
            return Ok(if summary.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        _ => {}
    }
    let loader = ModelLoader::new(s3.clone());

    if let Command::Serve { addr } = &command {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        println!("listening on http://{local}");
        std::io::stdout().flush()?;
        tracing::info!(%local, "listening; loading the model");
        let slot = onnx_lambda::serve::Slot::default();
        let server = tokio::spawn(onnx_lambda::serve::serve(
            listener,
            slot.clone(),
            config.max_request_bytes,
            shutdown_signal(),
        ));
        let app = App::init(config, &loader, s3).await?;
        let _ = slot.set(Arc::new(app));
        tracing::info!(%local, "ready");
        server.await.context("the server task failed")??;
        tracing::info!("shut down");
        return Ok(ExitCode::SUCCESS);
    }

    if let Command::Worker {
        queue,
        batch_size,
        concurrency,
        visibility_timeout,
        wait_seconds,
        ..
    } = &command
    {
        let sqs = sqs.context("no SQS client")?;
        let app = App::init(config, &loader, s3).await?.with_sqs(sqs.clone());
        let sink = app.results_sink().context(
            "the worker needs a results queue: --results-queue URL or RESULTS_QUEUE_URL",
        )?;
        let options = onnx_lambda::jobs::worker::WorkerOptions {
            queue_url: queue.clone(),
            batch_size: *batch_size,
            wait_seconds: *wait_seconds,
            visibility_timeout: *visibility_timeout,
            concurrency: *concurrency,
        };
        tracing::info!(queue = %queue, results = %sink.queue_url(), "worker started");
        let stats =
            onnx_lambda::jobs::worker::run(Arc::new(app), sqs, sink, options, shutdown_signal())
                .await;
        tracing::info!(?stats, "worker stopped");
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }

    if let Command::Lambda = command {
        let mut app = App::init(config, &loader, s3).await?;
        if let Some(sqs) = sqs {
            app = app.with_sqs(sqs);
        }
        let app = Arc::new(app);
        lambda_runtime::run(lambda_runtime::service_fn(
            move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
                let app = app.clone();
                async move {
                    let id = event.context.request_id.clone();
                    Ok::<_, lambda_runtime::Error>(
                        onnx_lambda::lambda::handle(app, event.payload, &id).await,
                    )
                }
            },
        ))
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime loop failed: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }

    let plan_batch = match &command {
        Command::Bench { plan_batch, .. } => *plan_batch,
        _ => 1,
    };
    let started = Instant::now();
    let loaded = loader
        .load_with(
            &config,
            LoadOptions {
                batch_size: plan_batch,
            },
        )
        .await
        .with_context(|| format!("loading the model from {}", config.model))?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut classifier = Classifier::new(loaded.model, config.limits);
    if let Some(t) = config.threads {
        classifier = classifier.with_threads(t);
    }
    match command {
        Command::Predict { files, .. } => predict(&classifier, &files, config.top_k),
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
                    let bytes =
                        std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                    Ok((f.display().to_string(), bytes))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = BenchOptions {
                batch_size,
                iterations,
                warmup,
                progress: std::io::stderr().is_terminal(),
            };
            let report =
                tokio::task::block_in_place(|| bench::run(&classifier, &images, &options, load_ms));
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("handled above"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
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
        let results = tokio::task::block_in_place(|| classifier.classify_batch(&inputs, top_k));
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

//! The command line: subcommands and their flags (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use onnx_lambda::config::SETTINGS;
use onnx_lambda::ops::Simd;

#[derive(Parser)]
#[command(
    name = "onnx-lambda",
    version,
    about = "ONNX image classification for AWS Lambda, SQS and the command line",
    after_help = settings_help()
)]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The environment variables, from the one table `Config` reads.
fn settings_help() -> String {
    let mut help = String::from("Environment (flags win; details in README.md):\n");
    for s in SETTINGS {
        let name = match s.flag {
            Some(flag) => format!("{} ({flag})", s.name),
            None => s.name.to_string(),
        };
        help.push_str(&format!("  {name:<40} {}\n", s.meaning));
    }
    help
}

/// Flags that override the environment.
#[derive(Args)]
pub struct Overrides {
    /// Model location: s3://bucket/key[?versionId=V], file:///path or a path [env: MODEL_URI]
    #[arg(long, global = true, value_name = "URI")]
    pub model: Option<String>,
    /// Largest encoded image accepted, in bytes [env: MAX_INPUT_BYTES]
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_input_bytes: Option<String>,
    /// Largest decoded image accepted, in pixels [env: MAX_IMAGE_PIXELS]
    #[arg(long, global = true, value_name = "PIXELS")]
    pub max_image_pixels: Option<String>,
    /// Images classified at once (default: one per core) [env: THREADS]
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Classify image files; prints one JSON object per file (JSON Lines).
    Predict(PredictArgs),
    /// Offline batch benchmark: throughput, latency percentiles, load time, peak memory.
    Bench(BenchArgs),
    /// Time every operator of the compiled model; one row per operator kind.
    Profile(ProfileArgs),
    /// Serve the HTTP API (/predict, /health, /ready, /model, KServe V2 /v2) locally.
    Serve(ServeArgs),
    /// Process SQS jobs outside Lambda: long polling, results to RESULTS_QUEUE_URL.
    Worker(WorkerArgs),
    /// Upload images to S3 and enqueue one job per image.
    Submit(SubmitArgs),
    /// Drain results into a JSON Lines file until N distinct jobs have results.
    Collect(CollectArgs),
    /// Run as an AWS Lambda function (the default inside Lambda).
    Lambda,
}

#[derive(Args)]
pub struct PredictArgs {
    /// How many classes to report per image [env: TOP_K, default 5]
    #[arg(long, value_name = "N")]
    pub top_k: Option<String>,
    /// Image files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Images per batch call.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Measured passes over the images.
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// Unmeasured passes first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Compile the model for this fixed batch size (1 is fastest; for comparison only).
    #[arg(long, default_value_t = 1)]
    pub plan_batch: usize,
    /// Use tract's operators only, not the project's own (for comparison).
    #[arg(long)]
    pub tract_kernels: bool,
    /// Highest instruction set the project's operators use: portable,
    /// avx2 or avx512 on x86_64, portable or neon on arm64 (default: the
    /// best this CPU has). Lower it to measure here the path a machine
    /// without AVX-512 runs.
    #[arg(long, value_parser = Simd::parse)]
    pub simd: Option<Simd>,
    /// Lambda architecture for the cost estimate: x86_64 or arm64.
    #[arg(long, default_value = "x86_64", value_parser = ["x86_64", "arm64"])]
    pub arch: String,
    /// Lambda memory size for the cost estimate [env: AWS_LAMBDA_FUNCTION_MEMORY_SIZE, default 1769]
    #[arg(long, value_name = "MB")]
    pub memory_mb: Option<f64>,
    /// Override the price per GB-second (default: the list price for --arch).
    #[arg(long, value_name = "USD")]
    pub price_gb_second: Option<f64>,
    /// Override the price per million requests (default 0.20).
    #[arg(long, value_name = "USD")]
    pub price_per_million_requests: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Image files or folders (default: the bundled sample images).
    pub paths: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ProfileArgs {
    /// Measured runs (after one unmeasured run).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Print the rows as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Use tract's operators only, not the project's own (for comparison).
    #[arg(long)]
    pub tract_kernels: bool,
    /// Highest instruction set the project's operators use: portable,
    /// avx2 or avx512 on x86_64, portable or neon on arm64 (default: the
    /// best this CPU has). Lower it to measure here the path a machine
    /// without AVX-512 runs.
    #[arg(long, value_parser = Simd::parse)]
    pub simd: Option<Simd>,
    /// One row per node instead of per operator kind.
    #[arg(long)]
    pub by_node: bool,
    /// Cores the image's operators split over, as for a single request
    /// (`bench --batch-size 1`).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub split: usize,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The job queue URL.
    #[arg(long, value_parser = queue_url)]
    pub queue: String,
    /// The results queue URL [env: RESULTS_QUEUE_URL]
    #[arg(long, value_parser = queue_url)]
    pub results_queue: Option<String>,
    /// Messages per receive (1 to 10).
    #[arg(long = "batch-size", default_value_t = 10)]
    pub messages_per_receive: i32,
    /// Batches processed at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Visibility timeout in seconds, renewed while a batch runs.
    #[arg(long, default_value_t = 60)]
    pub visibility_timeout: i32,
    /// Long-poll wait in seconds (0 to 20).
    #[arg(long, default_value_t = 20)]
    pub wait_seconds: i32,
    /// Serve `GET /metrics` (Prometheus) on this address, e.g. 0.0.0.0:9090.
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

#[derive(Args)]
pub struct SubmitArgs {
    /// Bucket to upload local files to; with --manifest, the bucket of bare keys.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Key prefix for uploaded files (e.g. `batch-42/`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// The job queue URL.
    #[arg(long, value_parser = queue_url)]
    pub queue: String,
    /// With s3://: only keys ending in this, any case (repeatable; default:
    /// the image extensions; `--suffix ''` takes every object).
    #[arg(long = "suffix", value_name = "SUFFIX")]
    pub suffixes: Vec<String>,
    /// A file of objects, one a line: s3://bucket/key, bucket,key[,version]
    /// CSV (as S3 Batch Operations and S3 Inventory write), or bare keys with --bucket.
    #[arg(long, value_name = "FILE", conflicts_with = "paths")]
    pub manifest: Option<PathBuf>,
    /// With s3:// or --manifest: record progress in this file; a re-run with
    /// it enqueues only what is missing.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Image files or folders to upload, or one s3://bucket/prefix/ whose
    /// objects are enqueued where they are.
    #[arg(required_unless_present = "manifest")]
    pub paths: Vec<PathBuf>,
}

#[derive(Args)]
pub struct CollectArgs {
    /// The results queue URL.
    #[arg(long, value_parser = queue_url)]
    pub queue: String,
    /// Distinct job ids to wait for.
    #[arg(long)]
    pub expect: usize,
    /// Output file (JSON Lines).
    #[arg(long)]
    pub out: PathBuf,
    /// Give up after this many seconds without a new result.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Also count results by top-1 class and error code: in the JSON
    /// summary, and as tables after it.
    #[arg(long)]
    pub summary: bool,
}

/// A queue flag's value, checked before anything is sent.
fn queue_url(value: &str) -> Result<String, String> {
    onnx_lambda::config::parse_queue_url("the queue", value).map_err(|e| e.expected)
}

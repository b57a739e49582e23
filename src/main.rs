//! The `onnx-lambda` binary: parses the command line and hands each
//! subcommand to its function in [`cli`]. All logic lives in the library.
//!
//! With no subcommand inside Lambda (`AWS_LAMBDA_RUNTIME_API` is set, as for
//! a `bootstrap` in a custom runtime) it runs the Lambda handler.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    tune_allocator();
    keep_imds_out_of_the_way();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => {
            eprintln!("error: no command given; try `onnx-lambda --help`");
            return ExitCode::from(2);
        }
    };
    let in_lambda = matches!(command, Command::Lambda);
    init_tracing(in_lambda);
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
    let o = &cli.overrides;
    let result = runtime.block_on(async {
        match command {
            Command::Predict(args) => cli::predict(o, args).await,
            Command::Bench(args) => cli::bench(o, args).await,
            Command::Profile(args) => cli::profile(o, args).await,
            Command::Serve(args) => cli::serve(o, args).await,
            Command::Worker(args) => cli::worker(o, args).await,
            Command::Submit(args) => cli::submit(o, args).await,
            Command::Collect(args) => cli::collect(o, args).await,
            Command::Lambda => cli::lambda(o).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Said once: as a JSON log line where logs are read as JSON
            // (CloudWatch), as one sentence on a terminal.
            if in_lambda {
                tracing::error!(error = format!("{e:#}"), "start-up failed");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that contends for the heap an arena of its
/// own, up to 8 per core, and each keeps what its thread freed: RSS grows
/// with the number of arenas (it did when batches ran on new threads). Two are
/// enough for this workload (scripts/load_hostile.py, docs/performance.md), unless
/// `MALLOC_ARENA_MAX` says otherwise. Servers also trim at idle
/// (`memory.rs`).
///
/// Blocks up to 32 MiB (glibc's ceiling) come from the heap rather than
/// each from an `mmap` of its own, and the heap keeps up to 128 MiB free
/// before it is trimmed: loading the model allocates and frees tens of MB of
/// weight copies, and with glibc's defaults every one was unmapped and the
/// next faulted in afresh, page by page: cold start shorter with
/// steady-state speed and peak RSS unchanged (docs/performance.md, "Cold
/// start and size"); the trim threshold matters, without it the heap shrinks and
/// regrows every inference (throughput -25%).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (var, tunable, param, value) in [
        ("MALLOC_ARENA_MAX", "arena_max", libc::M_ARENA_MAX, 2),
        (
            "MALLOC_MMAP_THRESHOLD_",
            "mmap_threshold",
            libc::M_MMAP_THRESHOLD,
            32 << 20,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            "trim_threshold",
            libc::M_TRIM_THRESHOLD,
            128 << 20,
        ),
    ] {
        if std::env::var_os(var).is_none() && !tunables.contains(&format!("glibc.malloc.{tunable}"))
        {
            // SAFETY: called first thing in main, before any other thread
            // exists; mallopt only changes allocator parameters.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// The SDK's last resort for a region and credentials is the EC2 instance
/// metadata service. Off EC2 (a laptop, CI) it does not exist, and each
/// probe waits for a timeout and logs a long warning before the real error
/// ("no region", "no credentials") is reported: so it is disabled there
/// unless `AWS_EC2_METADATA_DISABLED` says otherwise. Lambda and ECS give
/// both through the environment and never need it.
fn keep_imds_out_of_the_way() {
    if std::env::var_os("AWS_EC2_METADATA_DISABLED").is_none() && !onnx_lambda::aws::on_ec2() {
        // Before any other thread exists: nothing reads the environment concurrently.
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
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

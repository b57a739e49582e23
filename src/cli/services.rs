//! `serve`, `worker` and `lambda`: the long-running doors. Each builds the
//! configuration, the SDK clients and the [`App`] once and runs until
//! stopped.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use onnx_lambda::jobs::worker::{self, WorkerOptions};
use onnx_lambda::{App, ModelLoader};

use super::args::{Overrides, ServeArgs, WorkerArgs};
use super::{clients, configure, shutdown_signal};

/// `serve`: the HTTP API on a local socket.
pub async fn serve(overrides: &Overrides, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    let (s3, _) = clients(&config).await;
    let loader = ModelLoader::new(Some(s3.clone()));
    onnx_lambda::serve::run(&args.addr, config, &loader, Some(s3), shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `worker`: SQS jobs outside Lambda, until SIGTERM.
pub async fn worker(overrides: &Overrides, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut config = configure(overrides, None)?;
    if let Some(q) = args.results_queue {
        config.results_queue_url = Some(q);
    }
    let (s3, sqs) = clients(&config).await;
    let loader = ModelLoader::new(Some(s3.clone()));
    let app = App::init(config, &loader, Some(s3))
        .await?
        .with_sqs(sqs.clone());
    let results = app
        .results()
        .context("the worker needs a results queue: --results-queue URL or RESULTS_QUEUE_URL")?
        .queue_url()
        .to_string();
    let options = WorkerOptions {
        queue_url: args.queue,
        messages_per_receive: args.messages_per_receive,
        wait_seconds: args.wait_seconds,
        visibility_timeout: args.visibility_timeout,
        concurrency: args.concurrency,
    };
    tracing::info!(queue = %options.queue_url, %results, "worker started");
    let stats = worker::run(Arc::new(app), sqs, options, shutdown_signal()).await;
    tracing::info!(?stats, "worker stopped");
    println!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::SUCCESS)
}

/// `lambda`: the Lambda runtime loop, with the app built in the init phase.
pub async fn lambda(overrides: &Overrides) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    let (s3, sqs) = clients(&config).await;
    let loader = ModelLoader::new(Some(s3.clone()));
    let app = App::init(config, &loader, Some(s3)).await?.with_sqs(sqs);
    onnx_lambda::lambda::run(Arc::new(app))
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime loop failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

//! `serve`, `worker` and `lambda`: the long-running doors. Each builds the
//! configuration, the SDK clients and the [`App`] once and runs until
//! stopped.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use onnx_lambda::app::AppCell;
use onnx_lambda::jobs::worker::{self, WorkerOptions};
use onnx_lambda::serve::{self, ServeOptions};
use onnx_lambda::{App, ModelLoader};

use super::args::{Overrides, ServeArgs, WorkerArgs};
use super::{clients, configure, shutdown_signal};

/// `serve`: the HTTP API on a local socket.
pub async fn serve(overrides: &Overrides, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    let (s3, _) = clients(&config, config.uses_aws()).await?;
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
    let (s3, sqs) = clients(&config, true).await?;
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
    let app = Arc::new(app);
    let metrics = match &args.metrics_addr {
        Some(addr) => Some(metrics_server(addr, &app).await?),
        None => None,
    };
    tracing::info!(queue = %options.queue_url, %results, "worker started");
    let stats = worker::run(app, sqs, options, shutdown_signal()).await;
    if let Some(server) = metrics {
        server.abort();
    }
    tracing::info!(?stats, "worker stopped");
    println!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::SUCCESS)
}

/// The worker's `/metrics` listener, bound before the first job so a bad
/// address fails at start-up; it prints its address, as `serve` does.
async fn metrics_server(addr: &str, app: &Arc<App>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    let cell = AppCell::default();
    cell.set(app.clone());
    let options = ServeOptions::from_config(app.config());
    let server = serve::serve(
        listener,
        cell,
        options,
        serve::metrics_router(),
        std::future::pending(),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }))
}

/// `lambda`: the Lambda runtime loop, with the app built in the init phase.
/// A start-up failure is also reported to the Runtime API.
pub async fn lambda(overrides: &Overrides) -> anyhow::Result<ExitCode> {
    let app = match lambda_app(overrides).await {
        Ok(app) => app,
        Err(e) => {
            onnx_lambda::lambda::report_init_error(&format!("{e:#}")).await;
            return Err(e);
        }
    };
    onnx_lambda::lambda::run(Arc::new(app))
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime loop failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

async fn lambda_app(overrides: &Overrides) -> anyhow::Result<App> {
    let config = configure(overrides, None)?;
    let (s3, sqs) = clients(&config, config.uses_aws()).await?;
    let loader = ModelLoader::new(Some(s3.clone()));
    Ok(App::init(config, &loader, Some(s3)).await?.with_sqs(sqs))
}

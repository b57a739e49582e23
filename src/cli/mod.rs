//! The command-line door: one function per subcommand, each building what
//! it needs (configuration, SDK clients, the model) once and handing it to
//! the library. `main.rs` only parses and dispatches.

mod args;
mod files;
mod local;
mod queues;
mod services;

use anyhow::Context;
use args::Overrides;
pub use args::{Cli, Command};
use onnx_lambda::config::{self, Config};
use onnx_lambda::Location;

pub use local::{bench, predict, profile};
pub use queues::{collect, submit};
pub use services::{lambda, serve, worker};

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

/// The SDK configuration for a local command, only when its model (or
/// manifest) is on S3; checked, so a missing region or credentials is said
/// once, before the download.
async fn sdk_if_needed(config: &Config) -> anyhow::Result<Option<aws_config::SdkConfig>> {
    if !config.model_on_s3() {
        return Ok(None);
    }
    Ok(Some(sdk(config, true).await?))
}

/// The SDK clients for a door. When it cannot work without AWS
/// (`required`), the region and credentials are checked first.
async fn clients(
    config: &Config,
    required: bool,
) -> anyhow::Result<(aws_sdk_s3::Client, aws_sdk_sqs::Client)> {
    let sdk = sdk(config, required).await?;
    Ok((
        onnx_lambda::aws::s3_client(&sdk),
        onnx_lambda::aws::sqs_client(&sdk),
    ))
}

/// The SDK configuration, with the region and credentials checked once when
/// the command cannot work without them.
async fn sdk(config: &Config, required: bool) -> anyhow::Result<aws_config::SdkConfig> {
    let sdk = onnx_lambda::aws::sdk_config(config.sdk_timeout).await;
    if required {
        onnx_lambda::aws::check_setup(&sdk).await?;
    }
    Ok(sdk)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler");
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "stopping on Ctrl-C only");
            let _ = ctrl_c.await;
        }
    }
}

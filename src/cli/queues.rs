//! `submit` and `collect`: bulk jobs through the queues, no model needed.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use onnx_lambda::jobs::collect::collect as drain_results;
use onnx_lambda::jobs::submit::{submit as enqueue, SubmitTarget};

use super::args::{CollectArgs, Overrides, SubmitArgs};
use super::files::image_files;
use super::{clients, configure};

/// `submit`: uploads images and enqueues one job each; fails if any failed.
pub async fn submit(overrides: &Overrides, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    let (s3, sqs) = clients(&config, true).await?;
    let files = image_files(&args.paths)?;
    let target = SubmitTarget {
        bucket: args.bucket,
        prefix: args.prefix,
        queue_url: args.queue,
    };
    let summary = enqueue(&s3, &sqs, &target, &files, std::io::stderr().is_terminal()).await;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `collect`: drains results into a file; fails unless every job arrived.
pub async fn collect(overrides: &Overrides, args: CollectArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    let (_, sqs) = clients(&config, true).await?;
    let summary = drain_results(
        &sqs,
        &args.queue,
        args.expect,
        &args.out,
        Duration::from_secs(args.timeout),
        std::io::stderr().is_terminal(),
    )
    .await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

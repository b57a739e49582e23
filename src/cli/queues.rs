//! `submit` and `collect`: bulk jobs through the queues, no model needed.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use onnx_lambda::jobs::bucket::{submit_objects as bulk_submit, ObjectSource};
use onnx_lambda::jobs::collect::collect as drain_results;
use onnx_lambda::jobs::submit::{submit as enqueue, SubmitTarget};

use super::args::{CollectArgs, Overrides, SubmitArgs};
use super::files::image_files;
use super::{clients, configure};

/// `submit`: enqueues one job per object of a prefix or a manifest, or
/// uploads local images and enqueues one job each; fails if any failed,
/// exits 130 when Ctrl-C stopped it.
pub async fn submit(overrides: &Overrides, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let config = configure(overrides, None)?;
    let (s3, sqs) = clients(&config, true).await?;
    if let Some(source) = object_source(&args)? {
        return submit_objects(&s3, &sqs, &source, &args).await;
    }
    anyhow::ensure!(
        args.state.is_none(),
        "--state is for s3:// prefixes and --manifest; local files are uploaded anew each run"
    );
    let files = image_files(&args.paths)?;
    let Some(bucket) = args.bucket else {
        anyhow::bail!("give --bucket to upload local files to (or an s3://bucket/prefix/ to enqueue objects already there)");
    };
    let target = SubmitTarget {
        bucket,
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

/// What `submit` was pointed at, when it is objects already in S3.
fn object_source(args: &SubmitArgs) -> anyhow::Result<Option<ObjectSource>> {
    if let Some(path) = &args.manifest {
        return Ok(Some(ObjectSource::Manifest {
            path: path.clone(),
            default_bucket: args.bucket.clone(),
        }));
    }
    let uris: Vec<&str> = args
        .paths
        .iter()
        .filter_map(|p| p.to_str())
        .filter(|p| p.starts_with("s3://"))
        .collect();
    match (uris.as_slice(), args.paths.len()) {
        ([], _) => Ok(None),
        ([uri], 1) => {
            let rest = &uri["s3://".len()..];
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(
                !bucket.is_empty(),
                "{uri} names no bucket: give s3://bucket/prefix/"
            );
            let suffixes = match args.suffixes.as_slice() {
                [] => onnx_lambda::decode::image_suffixes(),
                [all] if all.is_empty() => Vec::new(),
                given => given.to_vec(),
            };
            Ok(Some(ObjectSource::Prefix {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                suffixes,
            }))
        }
        _ => anyhow::bail!(
            "give one s3://bucket/prefix/, or local files, not both or several prefixes"
        ),
    }
}

/// `submit` over objects already in S3, resumable with `--state`.
async fn submit_objects(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    source: &ObjectSource,
    args: &SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.store(true, Ordering::Relaxed);
        }
    });
    let summary = bulk_submit(
        s3,
        sqs,
        &args.queue,
        source,
        args.state.as_deref(),
        stop,
        std::io::stderr().is_terminal(),
    )
    .await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else if summary.complete {
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
        args.summary,
        std::io::stderr().is_terminal(),
    )
    .await?;
    println!("{}", serde_json::to_string(&summary)?);
    if args.summary {
        print!("{}", summary.tables());
    }
    Ok(if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

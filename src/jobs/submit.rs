//! `onnx-lambda submit`: uploads a folder of images to S3 and enqueues one
//! job per image (batched sends); `job_id` is the object key.

use std::path::PathBuf;

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::aws::sqs::QueueSender;

/// Uploads at once.
const CONCURRENT_UPLOADS: usize = 8;

/// What `submit` did.
#[derive(Debug, Default, Serialize)]
pub struct SubmitSummary {
    /// Jobs enqueued.
    pub submitted: usize,
    /// Files not uploaded or jobs not enqueued, with reasons.
    pub failed: Vec<String>,
}

/// Where the images go and the jobs are sent.
#[derive(Debug, Clone)]
pub struct SubmitTarget {
    /// Bucket to upload to.
    pub bucket: String,
    /// Key prefix (e.g. `batch-42/`).
    pub prefix: String,
    /// The job queue.
    pub queue_url: String,
}

/// A progress bar on stderr counting `what` (jobs, results) with their
/// rate and the time left, or a hidden one.
pub(crate) fn progress(len: usize, what: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let template = format!("{{wide_bar}} {{pos}}/{{len}} {what}, {{per_sec}}, ETA {{eta}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// Uploads `files` to `s3://bucket/prefix<name>` and enqueues one job per
/// image.
pub async fn submit(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    target: &SubmitTarget,
    files: &[PathBuf],
    show_progress: bool,
) -> SubmitSummary {
    let bar = progress(files.len(), "images", show_progress);
    let mut summary = SubmitSummary::default();
    let uploads = futures::stream::iter(files.iter().map(|f| upload(s3, target, f)))
        .buffered(CONCURRENT_UPLOADS)
        .collect::<Vec<_>>()
        .await;
    let mut keys = Vec::new();
    for u in uploads {
        match u {
            Ok(k) => keys.push(k),
            Err(e) => {
                bar.inc(1);
                summary.failed.push(e);
            }
        }
    }
    let bodies: Vec<String> = keys
        .iter()
        .map(|key| {
            json!({"job_id": key, "image": {"s3_uri": format!("s3://{}/{key}", target.bucket)}})
                .to_string()
        })
        .collect();
    let sent = QueueSender::new(sqs.clone(), target.queue_url.clone())
        .send_all(&bodies)
        .await;
    for (key, result) in keys.iter().zip(sent) {
        match result {
            Ok(()) => summary.submitted += 1,
            Err(reason) => summary
                .failed
                .push(format!("{key}: not enqueued: {reason}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary
}

/// Uploads one file; returns its key.
async fn upload(
    s3: &aws_sdk_s3::Client,
    target: &SubmitTarget,
    file: &std::path::Path,
) -> Result<String, String> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    let key = format!("{}{name}", target.prefix);
    let body = aws_sdk_s3::primitives::ByteStream::from_path(file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    s3.put_object()
        .bucket(&target.bucket)
        .key(&key)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "{}: upload failed: {}",
                file.display(),
                crate::aws::error_chain(&e)
            )
        })?;
    Ok(key)
}

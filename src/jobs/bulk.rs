//! Bulk tools for a folder of images: `submit` uploads them and enqueues one
//! job each (batched sends); `collect` drains the results queue into a JSON
//! Lines file until every job has a result, deduplicating redeliveries.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

/// What `submit` did.
#[derive(Debug, Default, Serialize)]
pub struct SubmitSummary {
    /// Jobs enqueued.
    pub submitted: usize,
    /// Files not uploaded or jobs not enqueued, with reasons.
    pub failed: Vec<String>,
}

fn progress(len: usize, show: bool) -> indicatif::ProgressBar {
    if show {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Uploads `files` to `s3://bucket/prefix<name>` and enqueues one job per
/// image on `queue_url`; `job_id` is the object key.
pub async fn submit(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    bucket: &str,
    prefix: &str,
    queue_url: &str,
    files: &[PathBuf],
    show_progress: bool,
) -> SubmitSummary {
    let bar = progress(files.len(), show_progress);
    let mut summary = SubmitSummary::default();
    let uploads = futures::stream::iter(files.iter().map(|f| async move {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image")
            .to_string();
        let key = format!("{prefix}{name}");
        let body = aws_sdk_s3::primitives::ByteStream::from_path(f)
            .await
            .map_err(|e| format!("{}: {e}", f.display()))?;
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "{}: upload failed: {}",
                    f.display(),
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })?;
        Ok::<_, String>(key)
    }))
    .buffered(8)
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
    for chunk in keys.chunks(10) {
        let entries: Vec<SendMessageBatchRequestEntry> = chunk
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let body =
                    json!({"job_id": key, "image": {"s3_uri": format!("s3://{bucket}/{key}")}});
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body.to_string())
                    .build()
                    .expect("fields set")
            })
            .collect();
        match sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                summary.submitted += out.successful().len();
                for f in out.failed() {
                    let key = f
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| chunk.get(i))
                        .cloned()
                        .unwrap_or_default();
                    summary.failed.push(format!(
                        "{key}: not enqueued: {}",
                        f.message().unwrap_or(f.code())
                    ));
                }
            }
            Err(e) => {
                for key in chunk {
                    summary.failed.push(format!(
                        "{key}: not enqueued: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    ));
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    summary
}

/// What `collect` did.
#[derive(Debug, Default, Serialize)]
pub struct CollectSummary {
    /// Distinct job ids written.
    pub results: usize,
    /// Of those, `ok`.
    pub ok: usize,
    /// Of those, `error`, by code.
    pub errors: HashMap<String, usize>,
    /// Redelivered results skipped.
    pub duplicates: usize,
    /// Messages that were not result JSON (written nowhere, deleted).
    pub unreadable: usize,
    /// Whether `expect` distinct results arrived before the timeout.
    pub complete: bool,
}

/// Drains `queue_url` into `out` (JSON Lines, one line per distinct job id)
/// until `expect` distinct results or `idle_timeout` without a new one.
pub async fn collect(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    expect: usize,
    out: &Path,
    idle_timeout: Duration,
    show_progress: bool,
) -> std::io::Result<CollectSummary> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let bar = progress(expect, show_progress);
    let mut seen = std::collections::HashSet::new();
    let mut summary = CollectSummary::default();
    let mut last_new = Instant::now();
    while seen.len() < expect && last_new.elapsed() < idle_timeout {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await;
        let messages = match received {
            Ok(o) => o.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receive failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut delete: Vec<&str> = Vec::new();
        for m in &messages {
            let body = m.body().unwrap_or_default();
            match serde_json::from_str::<super::JobResult>(body) {
                Ok(r) => {
                    if seen.insert(r.job_id.clone()) {
                        writeln!(file, "{body}")?;
                        last_new = Instant::now();
                        bar.inc(1);
                        if r.status == "ok" {
                            summary.ok += 1;
                        } else {
                            let code = r.error.map(|e| e.code).unwrap_or_default();
                            *summary.errors.entry(code).or_default() += 1;
                        }
                    } else {
                        summary.duplicates += 1;
                    }
                }
                Err(_) => summary.unreadable += 1,
            }
            if let Some(h) = m.receipt_handle() {
                delete.push(h);
            }
        }
        // Written before deleted: a crash here leaves duplicates, never gaps.
        file.flush()?;
        super::delete_messages(sqs, queue_url, &delete).await;
    }
    bar.finish_and_clear();
    summary.results = seen.len();
    summary.complete = seen.len() >= expect;
    Ok(summary)
}

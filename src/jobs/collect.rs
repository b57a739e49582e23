//! `onnx-lambda collect`: drains the results queue into a JSON Lines file
//! until every job has a result, deduplicating redeliveries by `job_id`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::message::JobResult;
use super::submit::progress;
use crate::aws::sqs::{delete_messages, receive};

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
        let messages = receive(sqs, queue_url, 10, 1, None).await;
        let mut delete: Vec<&str> = Vec::new();
        for m in &messages {
            let body = m.body().unwrap_or_default();
            match serde_json::from_str::<JobResult>(body) {
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
        delete_messages(sqs, queue_url, &delete).await;
    }
    bar.finish_and_clear();
    summary.results = seen.len();
    summary.complete = seen.len() >= expect;
    Ok(summary)
}

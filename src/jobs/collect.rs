//! `onnx-lambda collect`: drains the results queue into a JSON Lines file
//! until every job has a result, deduplicating redeliveries by `job_id`;
//! with `--summary`, counts the top-1 classes and the error codes.

use std::collections::{BTreeMap, HashMap};
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
    /// Seconds spent draining.
    pub seconds: f64,
    /// Distinct results per second.
    pub results_per_second: f64,
    /// With `--summary`: `ok` results by top-1 label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<BTreeMap<String, usize>>,
}

impl CollectSummary {
    /// The classes and error codes as two plain-text tables, largest first.
    pub fn tables(&self) -> String {
        let classes = self.classes.clone().unwrap_or_default().into_iter();
        let mut out = table("top-1 class", classes, self.results);
        out.push('\n');
        out.push_str(&table(
            "error code",
            self.errors.clone().into_iter(),
            self.results,
        ));
        out
    }
}

/// One table of counts and their share of `total`, largest first.
fn table(title: &str, rows: impl Iterator<Item = (String, usize)>, total: usize) -> String {
    let mut rows: Vec<(String, usize)> = rows.collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = format!("{title:<40} {:>9} {:>7}\n", "results", "share");
    for (name, n) in rows {
        let share = 100.0 * n as f64 / total.max(1) as f64;
        out.push_str(&format!("{name:<40} {n:>9} {share:>6.2}%\n"));
    }
    out
}

/// Drains `queue_url` into `out` (JSON Lines, one line per distinct job id)
/// until `expect` distinct results or `idle_timeout` without a new one.
pub async fn collect(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    expect: usize,
    out: &Path,
    idle_timeout: Duration,
    by_class: bool,
    show_progress: bool,
) -> std::io::Result<CollectSummary> {
    let started = Instant::now();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let bar = progress(expect, "results", show_progress);
    let mut seen = std::collections::HashSet::new();
    let mut summary = CollectSummary {
        classes: by_class.then(BTreeMap::new),
        ..CollectSummary::default()
    };
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
                            let top = r.predictions.as_ref().and_then(|p| p.first());
                            if let (Some(classes), Some(top)) = (summary.classes.as_mut(), top) {
                                *classes.entry(top.label.clone()).or_default() += 1;
                            }
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
    summary.seconds = started.elapsed().as_secs_f64();
    summary.results_per_second = summary.results as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

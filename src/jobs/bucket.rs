//! `onnx-lambda submit s3://bucket/prefix/` and `submit --manifest FILE`:
//! one job per object already in S3, enqueued without downloading it.
//!
//! Objects come in a fixed order (S3 lists keys in UTF-8 order; a manifest
//! in its line order), are sent in `SendMessageBatch` calls of 10, several
//! in flight, and the calls' answers are taken in that same order. So what
//! is done is always "everything up to a cursor, plus a few job ids after
//! it" (calls that succeeded after one that failed), which a state file
//! records after every call: a re-run with the same `--state` starts after
//! the cursor and skips those ids, and enqueues each object once. A crash
//! between a call and the state write can repeat at most the calls in
//! flight; job ids are derived from the object (`s3://bucket/key`, with
//! `?versionId=` when pinned), so consumers still count it once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;
use tokio::sync::mpsc;

use super::message::url_decode;
use super::submit::progress;
use crate::aws::sqs::{QueueSender, MAX_BATCH_ENTRIES};

/// `SendMessageBatch` calls in flight at once.
const CONCURRENT_SENDS: usize = 8;
/// Objects listed ahead of the sends (a few list pages).
const LISTED_AHEAD: usize = 4_000;

/// Where the objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSource {
    /// Every object under a prefix whose key ends in one of `suffixes`
    /// (any case; an empty list takes every object).
    Prefix {
        /// Bucket.
        bucket: String,
        /// Key prefix (may be empty).
        prefix: String,
        /// Key endings to keep.
        suffixes: Vec<String>,
    },
    /// A local file, one object a line: `s3://bucket/key`, the CSV S3 Batch
    /// Operations and S3 Inventory write (`bucket,key[,version]`, keys
    /// URL-encoded, fields optionally quoted), or a bare key in
    /// `default_bucket`.
    Manifest {
        /// The file.
        path: PathBuf,
        /// The bucket of bare keys.
        default_bucket: Option<String>,
    },
}

impl ObjectSource {
    /// How the state file names the source, to refuse another's state.
    fn describe(&self) -> String {
        match self {
            ObjectSource::Prefix {
                bucket,
                prefix,
                suffixes,
            } => format!("s3://{bucket}/{prefix} suffixes={}", suffixes.join(",")),
            ObjectSource::Manifest { path, .. } => format!("manifest {}", path.display()),
        }
    }
}

/// One object to enqueue, and its place in the source's order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Object {
    /// The key (listing) or line number (manifest) it comes at.
    cursor: String,
    bucket: String,
    key: String,
    version_id: Option<String>,
}

impl Object {
    fn job_id(&self) -> String {
        match &self.version_id {
            Some(v) => format!("s3://{}/{}?versionId={v}", self.bucket, self.key),
            None => format!("s3://{}/{}", self.bucket, self.key),
        }
    }

    fn job(&self) -> String {
        let uri = format!("s3://{}/{}", self.bucket, self.key);
        let image = match &self.version_id {
            Some(v) => json!({"s3_uri": uri, "version_id": v}),
            None => json!({"s3_uri": uri}),
        };
        json!({"job_id": self.job_id(), "image": image}).to_string()
    }
}

/// What a run has done, kept in the `--state` file between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitState {
    /// The source, as [`ObjectSource`] describes it.
    pub source: String,
    /// The job queue.
    pub queue_url: String,
    /// Every object up to this cursor (a key, or a manifest line number)
    /// has been enqueued (or filtered out).
    pub after: Option<String>,
    /// Job ids enqueued after `after` (calls that succeeded behind one
    /// that failed).
    pub sent_beyond: Vec<String>,
    /// Jobs enqueued over all runs.
    pub submitted: u64,
    /// The whole source has been enqueued.
    pub complete: bool,
}

/// What one run did.
#[derive(Debug, Default, Serialize)]
pub struct BulkSummary {
    /// Jobs enqueued by this run.
    pub submitted: u64,
    /// Jobs enqueued over all runs with this state file.
    pub submitted_in_total: u64,
    /// Objects skipped as enqueued by an earlier run.
    pub already_submitted: u64,
    /// Objects listed but not matching the suffixes.
    pub filtered_out: u64,
    /// Jobs not enqueued, with reasons (a re-run with the state file
    /// enqueues them).
    pub failed: Vec<String>,
    /// The whole source has been enqueued.
    pub complete: bool,
    /// Stopped by Ctrl-C (what was in flight was finished and recorded).
    pub interrupted: bool,
    /// Seconds this run took, and its jobs per second.
    pub seconds: f64,
    /// Jobs per second.
    pub jobs_per_second: f64,
}

/// Why a bulk submit could not start or go on.
#[derive(Debug, Error)]
pub enum BulkError {
    /// The state file is unreadable or for another source.
    #[error("{0}")]
    State(String),
    /// The manifest could not be read.
    #[error("{0}")]
    Manifest(String),
}

/// Enqueues one job per object of `source` on `queue_url`, resuming from
/// `state_path` when it exists; stops starting calls when `stop` is set
/// (Ctrl-C) and still records what was in flight.
pub async fn submit_objects(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    source: &ObjectSource,
    state_path: Option<&Path>,
    stop: Arc<AtomicBool>,
    show_progress: bool,
) -> Result<BulkSummary, BulkError> {
    let started = Instant::now();
    let sender = QueueSender::new(sqs.clone(), queue_url);
    let state = load_state(state_path, source, queue_url)?;
    if state.complete {
        return Ok(BulkSummary {
            complete: true,
            submitted_in_total: state.submitted,
            ..BulkSummary::default()
        });
    }
    let (tx, mut rx) = mpsc::channel::<Result<Listed, String>>(LISTED_AHEAD);
    let lister = {
        let (s3, source, after) = (s3.clone(), source.clone(), state.after.clone());
        tokio::spawn(async move { list(&s3, &source, after, &tx).await })
    };
    let mut run = Run {
        skip: state.sent_beyond.iter().cloned().collect(),
        state,
        summary: BulkSummary::default(),
        // The length grows as the listing runs ahead: the time left is for
        // what is listed so far.
        bar: progress(0, "jobs", show_progress),
        source_done: false,
        failed_once: false,
    };
    let mut in_flight = FuturesOrdered::new();
    loop {
        while !run.source_done && !run.failed_once && in_flight.len() < CONCURRENT_SENDS {
            if stop.load(Ordering::Relaxed) {
                run.summary.interrupted = true;
                break;
            }
            let Some((batch, cursor)) = run.next_batch(&mut rx).await else {
                break;
            };
            let sender = sender.clone();
            in_flight.push_back(tokio::spawn(async move {
                let bodies: Vec<String> = batch.iter().map(Object::job).collect();
                let sent = sender.send_all(&bodies).await;
                (batch, sent, cursor)
            }));
        }
        let Some(done) = in_flight.next().await else {
            break;
        };
        let (batch, sent, cursor) = done.map_err(|e| BulkError::State(e.to_string()))?;
        run.record(&batch, sent, cursor);
        save_state(state_path, &run.state)?;
    }
    lister.abort();
    run.finish(state_path, started)
}

/// One run's bookkeeping: the state as calls are answered, in order.
struct Run {
    state: SubmitState,
    /// Job ids an earlier run sent after its cursor.
    skip: HashSet<String>,
    summary: BulkSummary,
    bar: indicatif::ProgressBar,
    source_done: bool,
    /// A call (or the listing) failed: no new calls, the cursor stays.
    failed_once: bool,
}

impl Run {
    /// Up to 10 objects to send, and the cursor after them (which also
    /// moves over objects filtered out or sent before); `None` when the
    /// source has nothing more.
    async fn next_batch(
        &mut self,
        rx: &mut mpsc::Receiver<Result<Listed, String>>,
    ) -> Option<(Vec<Object>, Option<String>)> {
        let mut batch: Vec<Object> = Vec::with_capacity(MAX_BATCH_ENTRIES);
        let mut cursor = None;
        while batch.len() < MAX_BATCH_ENTRIES {
            match rx.recv().await {
                None => {
                    self.source_done = true;
                    break;
                }
                Some(Err(e)) => {
                    self.summary.failed.push(e);
                    self.failed_once = true;
                    self.source_done = true;
                    break;
                }
                Some(Ok(Listed::Skipped(c))) => {
                    self.summary.filtered_out += 1;
                    cursor = Some(c);
                }
                Some(Ok(Listed::Object(o))) => {
                    cursor = Some(o.cursor.clone());
                    if self.skip.contains(&o.job_id()) {
                        self.summary.already_submitted += 1;
                    } else {
                        self.bar.inc_length(1);
                        batch.push(o);
                    }
                }
            }
        }
        (!batch.is_empty() || cursor.is_some()).then_some((batch, cursor))
    }

    /// Takes one call's answer (calls are answered in the order sent).
    fn record(&mut self, batch: &[Object], sent: Vec<Result<(), String>>, cursor: Option<String>) {
        let mut sent_ids = Vec::new();
        for (o, result) in batch.iter().zip(sent) {
            match result {
                Ok(()) => sent_ids.push(o.job_id()),
                Err(reason) => self
                    .summary
                    .failed
                    .push(format!("{}: not enqueued: {reason}", o.job_id())),
            }
        }
        self.summary.submitted += sent_ids.len() as u64;
        self.state.submitted += sent_ids.len() as u64;
        self.bar.inc(sent_ids.len() as u64);
        if !self.failed_once && sent_ids.len() == batch.len() {
            // Every call up to this one succeeded: the cursor moves on.
            if let Some(c) = cursor {
                self.state.after = Some(c);
            }
        } else {
            // From the first failure on the cursor stays; what later calls
            // sent is recorded by id.
            self.failed_once = true;
            self.state.sent_beyond.extend(sent_ids);
        }
    }

    fn finish(
        mut self,
        state_path: Option<&Path>,
        started: Instant,
    ) -> Result<BulkSummary, BulkError> {
        self.bar.finish_and_clear();
        let s = &mut self.summary;
        s.complete = self.source_done && !self.failed_once && !s.interrupted;
        self.state.complete = s.complete;
        if s.complete {
            self.state.sent_beyond.clear();
        }
        save_state(state_path, &self.state)?;
        s.submitted_in_total = self.state.submitted;
        s.seconds = started.elapsed().as_secs_f64();
        s.jobs_per_second = s.submitted as f64 / s.seconds.max(1e-9);
        Ok(self.summary)
    }
}

/// What the lister hands over, in the source's order.
enum Listed {
    Object(Object),
    /// Filtered out: only its cursor counts.
    Skipped(String),
}

/// Lists the source after `after` into `tx`; an error ends the list.
async fn list(
    s3: &aws_sdk_s3::Client,
    source: &ObjectSource,
    after: Option<String>,
    tx: &mpsc::Sender<Result<Listed, String>>,
) {
    let result = match source {
        ObjectSource::Prefix {
            bucket,
            prefix,
            suffixes,
        } => list_prefix(s3, bucket, prefix, suffixes, after, tx).await,
        ObjectSource::Manifest {
            path,
            default_bucket,
        } => list_manifest(path, default_bucket.as_deref(), after, tx).await,
    };
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

async fn list_prefix(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    suffixes: &[String],
    after: Option<String>,
    tx: &mpsc::Sender<Result<Listed, String>>,
) -> Result<(), String> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .set_start_after(after)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            format!(
                "listing s3://{bucket}/{prefix} failed: {}; re-run with the same --state to go on",
                crate::aws::error_chain(&e)
            )
        })?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let keep = !key.ends_with('/') && matches_suffix(key, suffixes);
            let listed = if keep {
                Listed::Object(Object {
                    cursor: key.to_string(),
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    version_id: None,
                })
            } else {
                Listed::Skipped(key.to_string())
            };
            if tx.send(Ok(listed)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Whether `key` ends in one of `suffixes` (any case); none means all.
pub fn matches_suffix(key: &str, suffixes: &[String]) -> bool {
    if suffixes.is_empty() {
        return true;
    }
    let key = key.to_ascii_lowercase();
    suffixes
        .iter()
        .any(|s| key.ends_with(&s.to_ascii_lowercase()))
}

async fn list_manifest(
    path: &Path,
    default_bucket: Option<&str>,
    after: Option<String>,
    tx: &mpsc::Sender<Result<Listed, String>>,
) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read the manifest {}: {e}", path.display()))?;
    let after: u64 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut number = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("reading the manifest {}: {e}", path.display()))?
    {
        number += 1;
        if number <= after {
            continue;
        }
        let cursor = number.to_string();
        let listed = match manifest_line(&line, default_bucket) {
            Ok(Some((bucket, key, version_id))) => Listed::Object(Object {
                cursor,
                bucket,
                key,
                version_id,
            }),
            Ok(None) => Listed::Skipped(cursor),
            Err(why) => {
                return Err(format!(
                    "{} line {number}: {why}; fix the line and re-run with the same --state",
                    path.display()
                ))
            }
        };
        if tx.send(Ok(listed)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// One manifest line: `(bucket, key, version)`, or `None` for a blank line
/// or a `#` comment.
pub fn manifest_line(
    line: &str,
    default_bucket: Option<&str>,
) -> Result<Option<(String, String, Option<String>)>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if let Some(rest) = line.strip_prefix("s3://") {
        return match rest.split_once('/') {
            Some((b, k)) if !b.is_empty() && !k.is_empty() => {
                Ok(Some((b.to_string(), k.to_string(), None)))
            }
            _ => Err(format!("{line:?} is not s3://bucket/key")),
        };
    }
    if let Some(bucket) = default_bucket {
        return Ok(Some((bucket.to_string(), line.to_string(), None)));
    }
    let fields = csv_fields(line);
    match fields.as_slice() {
        [bucket, key, rest @ ..] if !bucket.is_empty() && !key.is_empty() => {
            // S3 Batch Operations: bucket,key[,version]. S3 Inventory writes
            // more columns, whose third is the version only when versions
            // are listed: a version is taken from three-field lines alone.
            let version = match rest {
                [v] if !v.is_empty() => Some(v.clone()),
                _ => None,
            };
            Ok(Some((bucket.clone(), url_decode(key), version)))
        }
        _ => Err(format!(
            "{line:?} is neither s3://bucket/key nor bucket,key[,version] (give --bucket for bare keys)"
        )),
    }
}

/// The fields of one CSV line, with `"..."` quoting and `""` escapes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

fn load_state(
    path: Option<&Path>,
    source: &ObjectSource,
    queue_url: &str,
) -> Result<SubmitState, BulkError> {
    let fresh = SubmitState {
        source: source.describe(),
        queue_url: queue_url.to_string(),
        ..SubmitState::default()
    };
    let Some(path) = path else {
        return Ok(fresh);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
        Err(e) => {
            return Err(BulkError::State(format!(
                "cannot read the state file {}: {e}",
                path.display()
            )))
        }
    };
    let state: SubmitState = serde_json::from_str(&text).map_err(|e| {
        BulkError::State(format!(
            "{} is not a submit state file ({e}); give another --state",
            path.display()
        ))
    })?;
    if state.source != fresh.source || state.queue_url != fresh.queue_url {
        return Err(BulkError::State(format!(
            "the state file {} is for {} to {}, not {} to {}; give another --state",
            path.display(),
            state.source,
            state.queue_url,
            fresh.source,
            fresh.queue_url
        )));
    }
    Ok(state)
}

/// Writes the state beside its final name and renames it over, so a crash
/// leaves the old state or the new, never half of one.
fn save_state(path: Option<&Path>, state: &SubmitState) -> Result<(), BulkError> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(state).expect("the state serialises");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            BulkError::State(format!(
                "cannot write the state file {}: {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_of_every_kind() {
        let some = |b: &str, k: &str, v: Option<&str>| {
            Ok(Some((b.to_string(), k.to_string(), v.map(String::from))))
        };
        assert_eq!(
            manifest_line("s3://b/in/a b.jpg", None),
            some("b", "in/a b.jpg", None)
        );
        assert_eq!(
            manifest_line("b,in/a%20b.jpg", None),
            some("b", "in/a b.jpg", None)
        );
        assert_eq!(
            manifest_line("b,k.jpg,v3\r", None),
            some("b", "k.jpg", Some("v3"))
        );
        assert_eq!(
            manifest_line(r#""b","in/x%2Cy.jpg","" "#.trim(), None),
            some("b", "in/x,y.jpg", None)
        );
        // An S3 Inventory line: bucket, key, size, date, etag: no version.
        assert_eq!(
            manifest_line(r#""b","k.png","123","2026-01-01T00:00:00.000Z","e1""#, None),
            some("b", "k.png", None)
        );
        assert_eq!(
            manifest_line("in/a,b.jpg", Some("bk")),
            some("bk", "in/a,b.jpg", None)
        );
        assert_eq!(manifest_line("", None), Ok(None));
        assert_eq!(manifest_line("# header", None), Ok(None));
        assert!(manifest_line("just-a-key.jpg", None).is_err());
        assert!(manifest_line("s3://bucket-only", None).is_err());
    }

    #[test]
    fn suffixes_match_in_any_case() {
        let s = vec![".jpg".to_string(), ".png".to_string()];
        assert!(matches_suffix("a/B.JPG", &s));
        assert!(!matches_suffix("a/b.json", &s));
        assert!(matches_suffix("anything", &[]));
    }

    #[test]
    fn job_ids_name_the_object_and_version() {
        let o = Object {
            cursor: "k".into(),
            bucket: "bkt".into(),
            key: "in/a?b.jpg".into(),
            version_id: Some("v1".into()),
        };
        assert_eq!(o.job_id(), "s3://bkt/in/a?b.jpg?versionId=v1");
        let job: serde_json::Value = serde_json::from_str(&o.job()).unwrap();
        let parsed = crate::jobs::message::parse_message(&o.job(), "m", 5).unwrap();
        assert_eq!(parsed[0].job_id, o.job_id());
        assert_eq!(job["image"]["version_id"], "v1");
        assert_eq!(job["image"]["s3_uri"], "s3://bkt/in/a?b.jpg");
    }
}

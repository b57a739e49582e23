//! Asynchronous batch predictions: job and result messages, and the batch
//! processing shared by the Lambda SQS handler and the long-polling worker.
//!
//! Delivery is at least once, so every job ends in exactly one of two ways:
//! a result on the results queue (`ok`, or `error` for a permanent problem
//! such as invalid JSON, a missing object or a corrupt image), or its message
//! is reported failed and SQS delivers it again, until the redrive policy
//! moves it to the dead-letter queue. A message is only acknowledged once all
//! of its results are written. Results carry the `job_id` (falling back to
//! the message id, or the object key for S3 events) so consumers deduplicate.

pub mod bulk;
pub mod sink;
pub mod worker;

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::classify::{Prediction, Timing};
use crate::error::ClassifyError;
use crate::inputs::{self, InputError as FetchError};
use crate::lambda::{model_json, App};
use sink::ResultsSink;

/// A queue message, as both doors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InMessage {
    /// SQS message id.
    pub message_id: String,
    /// The body.
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: u32,
}

/// Where a job's image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An object in S3.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// Inline, base64.
    Base64(String),
}

/// One classification to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The caller's id (or the message id / object key).
    pub job_id: String,
    /// The image.
    pub source: ImageSource,
    /// Classes to return.
    pub top_k: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobJson {
    job_id: Option<String>,
    image: ImageJson,
    top_k: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageJson {
    s3_uri: Option<String>,
    base64: Option<String>,
}

/// A message that cannot be a job: `(code, message)`.
pub type JobError = (&'static str, String);

/// Reads one message: a job (`{"job_id", "image": {"s3_uri"} | {"base64"},
/// "top_k"}`), or an S3 event notification (one job per `ObjectCreated`
/// record; the `s3:TestEvent` S3 sends on setup gives none).
pub fn parse_message(
    body: &str,
    message_id: &str,
    default_top_k: usize,
) -> Result<Vec<Job>, JobError> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| ("invalid_job", format!("the message body is not JSON: {e}")))?;
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if let Some(records) = value.get("Records").and_then(Value::as_array) {
        return s3_event_jobs(records, default_top_k);
    }
    let job: JobJson = serde_json::from_value(value).map_err(|e| {
        (
            "invalid_job",
            format!(
                "{e}; expected {{\"job_id\": \"...\", \"image\": {{\"s3_uri\": \"s3://bucket/key\"}} or \
                 {{\"base64\": \"...\"}}, \"top_k\": 5}} or an S3 event notification"
            ),
        )
    })?;
    let top_k = match job.top_k {
        None => default_top_k,
        Some(k) if (1..=1000).contains(&k) => k,
        Some(k) => return Err(("invalid_job", format!("top_k {k} must be 1 to 1000"))),
    };
    let source = match (job.image.s3_uri, job.image.base64) {
        (Some(uri), None) => match crate::model::source::Location::parse("image.s3_uri", &uri) {
            Ok(crate::model::source::Location::S3 { bucket, key, .. }) => {
                ImageSource::S3 { bucket, key }
            }
            _ => {
                return Err((
                    "invalid_s3_uri",
                    format!("{uri:?} is not an s3://bucket/key URI"),
                ))
            }
        },
        (None, Some(b64)) => ImageSource::Base64(b64),
        _ => {
            return Err((
                "invalid_job",
                "\"image\" needs exactly one of \"s3_uri\" or \"base64\"".into(),
            ))
        }
    };
    Ok(vec![Job {
        job_id: job
            .job_id
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| message_id.to_string()),
        source,
        top_k,
    }])
}

fn s3_event_jobs(records: &[Value], top_k: usize) -> Result<Vec<Job>, JobError> {
    let mut jobs = Vec::new();
    for r in records {
        let name = r.get("eventName").and_then(Value::as_str).unwrap_or("");
        if r.get("eventSource").and_then(Value::as_str) != Some("aws:s3") {
            return Err((
                "invalid_job",
                "a Records message that is not an S3 event notification".into(),
            ));
        }
        if !name.starts_with("ObjectCreated:") {
            continue;
        }
        let bucket = r.pointer("/s3/bucket/name").and_then(Value::as_str);
        let key = r.pointer("/s3/object/key").and_then(Value::as_str);
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err((
                "invalid_job",
                "an S3 record without s3.bucket.name and s3.object.key".into(),
            ));
        };
        // Keys in S3 notifications are URL-encoded, spaces as '+'.
        let key = url_decode(key);
        jobs.push(Job {
            job_id: key.clone(),
            source: ImageSource::S3 {
                bucket: bucket.to_string(),
                key,
            },
            top_k,
        });
    }
    Ok(jobs)
}

/// Decodes `+` and `%XX` as S3 event notifications encode keys.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"code", "message"}` of an error result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: String,
    /// Explanation.
    pub message: String,
}

/// One result message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job's id, for deduplication.
    pub job_id: String,
    /// The SQS message the job came in.
    pub message_id: String,
    /// `ok` or `error`.
    pub status: String,
    /// `{"name", "version", "sha256"}`.
    pub model: Value,
    /// Top-k, for `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
    /// What went wrong, for `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Delivery attempt (the message's receive count).
    pub attempt: u32,
    /// Where the time went, for `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing_ms: Option<Timing>,
}

/// What happened to a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages to deliver again (transient failure, or a result not written).
    pub failed: Vec<String>,
    /// `ok` results written.
    pub ok: usize,
    /// `error` results written.
    pub errors: usize,
}

enum Pending {
    Ready(JobResult),
    Fetched {
        job: Job,
        message_id: String,
        attempt: u32,
        bytes: Vec<u8>,
    },
}

/// Processes one batch of messages: parse, fetch S3 inputs concurrently,
/// classify in one parallel batch, write results in batched sends, and
/// report which messages must be delivered again.
pub async fn process_batch(
    app: &Arc<App>,
    sink: Option<&ResultsSink>,
    messages: &[InMessage],
) -> BatchOutcome {
    let model = model_json(app.model_info());
    let mut failed: HashSet<String> = HashSet::new();
    let error_result = |job_id: &str, m: &InMessage, code: &str, message: String| JobResult {
        job_id: job_id.to_string(),
        message_id: m.message_id.clone(),
        status: "error".into(),
        model: model.clone(),
        predictions: None,
        error: Some(ErrorBody {
            code: code.into(),
            message,
        }),
        attempt: m.receive_count,
        timing_ms: None,
    };

    // Parse, and fetch every input (S3 reads run concurrently).
    let mut work: Vec<(&InMessage, Job)> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    for m in messages {
        match parse_message(&m.body, &m.message_id, app.config.top_k) {
            Ok(jobs) => work.extend(jobs.into_iter().map(|j| (m, j))),
            Err((code, msg)) => {
                pending.push(Pending::Ready(error_result(&m.message_id, m, code, msg)))
            }
        }
    }
    let fetches = futures::future::join_all(work.iter().map(|(_, job)| fetch(app, job))).await;
    for ((m, job), fetched) in work.into_iter().zip(fetches) {
        match fetched {
            Ok(bytes) => pending.push(Pending::Fetched {
                job,
                message_id: m.message_id.clone(),
                attempt: m.receive_count,
                bytes,
            }),
            Err(e) if e.is_transient() => {
                tracing::warn!(message_id = %m.message_id, job_id = %job.job_id, error = %e, "transient input failure");
                failed.insert(m.message_id.clone());
            }
            Err(e) => pending.push(Pending::Ready(error_result(
                &job.job_id,
                m,
                e.code(),
                e.to_string(),
            ))),
        }
    }

    // Classify everything fetched in one parallel batch.
    let inputs: Vec<Vec<u8>> = pending
        .iter_mut()
        .filter_map(|p| match p {
            Pending::Fetched { bytes, .. } => Some(std::mem::take(bytes)),
            Pending::Ready(_) => None,
        })
        .collect();
    let max_k = pending
        .iter()
        .filter_map(|p| match p {
            Pending::Fetched { job, .. } => Some(job.top_k),
            Pending::Ready(_) => None,
        })
        .max()
        .unwrap_or(1);
    let worker = app.clone();
    let classified: Vec<Result<crate::Classification, ClassifyError>> =
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            worker.classifier.classify_batch(&refs, max_k)
        })
        .await
        .unwrap_or_default();
    let mut classified = classified.into_iter();
    let mut results: Vec<JobResult> = Vec::new();
    for p in pending {
        match p {
            Pending::Ready(r) => results.push(r),
            Pending::Fetched {
                job,
                message_id,
                attempt,
                ..
            } => match classified.next() {
                Some(Ok(mut c)) => {
                    c.predictions.truncate(job.top_k);
                    results.push(JobResult {
                        job_id: job.job_id,
                        message_id,
                        status: "ok".into(),
                        model: model.clone(),
                        predictions: Some(c.predictions),
                        error: None,
                        attempt,
                        timing_ms: Some(c.timing_ms),
                    });
                }
                Some(Err(ClassifyError::Input(e))) => {
                    let m = InMessage {
                        message_id,
                        body: String::new(),
                        receive_count: attempt,
                    };
                    results.push(error_result(&job.job_id, &m, e.code(), e.to_string()));
                }
                // The model failing (or the task dying) is not the input's
                // fault: deliver again.
                Some(Err(ClassifyError::Model(e))) => {
                    tracing::error!(%message_id, error = %e, "inference failed");
                    failed.insert(message_id);
                }
                None => {
                    failed.insert(message_id);
                }
            },
        }
    }
    // A message whose delivery failed gets no results now; it comes back whole.
    results.retain(|r| !failed.contains(&r.message_id));

    let bodies: Vec<String> = results
        .iter()
        .map(|r| serde_json::to_string(r).expect("a result always serialises"))
        .collect();
    let written = match sink {
        Some(sink) => sink.send_all(&bodies).await,
        None => {
            tracing::error!("no results queue is configured (RESULTS_QUEUE_URL): the batch will be delivered again");
            vec![false; bodies.len()]
        }
    };
    let mut outcome = BatchOutcome::default();
    for (r, ok) in results.iter().zip(written) {
        if !ok {
            failed.insert(r.message_id.clone());
        } else if r.status == "ok" {
            outcome.ok += 1;
        } else {
            outcome.errors += 1;
        }
    }
    outcome.failed = messages
        .iter()
        .filter(|m| failed.contains(&m.message_id))
        .map(|m| m.message_id.clone())
        .collect();
    outcome
}

/// Deletes messages by receipt handle (batches of 10); returns how many were
/// deleted. A message not deleted comes back, and its result is then written
/// again, which consumers deduplicate by `job_id`: never a loss.
pub async fn delete_messages(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    handles: &[&str],
) -> usize {
    let mut deleted = 0;
    for chunk in handles.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*h)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        match sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                deleted += out.successful().len();
                for f in out.failed() {
                    tracing::warn!(
                        code = f.code(),
                        "message not deleted; it will be delivered again"
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                "delete failed; the messages will be delivered again"
            ),
        }
    }
    deleted
}

async fn fetch(app: &App, job: &Job) -> Result<Vec<u8>, FetchError> {
    match &job.source {
        ImageSource::Base64(b64) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| FetchError::InvalidUri {
                    uri: "image.base64".into(),
                    reason: format!("not valid base64: {e}"),
                })
        }
        ImageSource::S3 { bucket, key } => {
            let uri = format!("s3://{bucket}/{key}");
            let Some(s3) = &app.s3 else {
                return Err(FetchError::Unavailable {
                    uri,
                    message: "no S3 client is configured".into(),
                });
            };
            inputs::get(s3, bucket, key, &uri, app.classifier.limits().max_bytes).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_jobs_and_s3_events() {
        let jobs = parse_message(
            r#"{"job_id": "a", "image": {"s3_uri": "s3://b1b/x.jpg"}, "top_k": 2}"#,
            "m1",
            5,
        )
        .unwrap();
        assert_eq!(
            jobs,
            vec![Job {
                job_id: "a".into(),
                source: ImageSource::S3 {
                    bucket: "b1b".into(),
                    key: "x.jpg".into()
                },
                top_k: 2
            }]
        );
        let jobs = parse_message(r#"{"image": {"base64": "AAAA"}}"#, "m2", 5).unwrap();
        assert_eq!((jobs[0].job_id.as_str(), jobs[0].top_k), ("m2", 5));
        let s3 = r#"{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "photos"}, "object": {"key": "in/my+cat%281%29.jpg"}}},
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "photos"}, "object": {"key": "in/gone.jpg"}}}]}"#;
        let jobs = parse_message(s3, "m3", 5).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].job_id, "in/my cat(1).jpg");
        assert!(
            parse_message(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#, "m4", 5)
                .unwrap()
                .is_empty()
        );
        for bad in [
            "not json",
            "{}",
            r#"{"image": {}}"#,
            r#"{"image": {"s3_uri": "http://x"}}"#,
            r#"{"image": {"base64": "A"}, "top_k": 0}"#,
        ] {
            assert!(parse_message(bad, "m", 5).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_decoding_of_s3_keys() {
        assert_eq!(url_decode("a+b%2Fc%"), "a b/c%");
        assert_eq!(url_decode("%E2%9C%93"), "\u{2713}");
    }
}

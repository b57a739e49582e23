//! Job and result messages: what producers put on the job queue, and what
//! consumers read from the results queue.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::classify::{Prediction, Timing};
use crate::error::{ClassifyError, ErrorBody, ErrorCode};
use crate::inputs::{parse_s3_uri, FetchError};

/// A queue message, as both SQS doors see it.
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
        /// A pinned version (S3 Batch Operations manifests and versioned
        /// listings name one); `None` reads the current object.
        version_id: Option<String>,
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

/// Why one job failed.
#[derive(Debug, Error)]
pub enum JobError {
    /// The message is not a job.
    #[error("{0}")]
    InvalidJob(String),
    /// The image could not be had.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The image could not be classified.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
}

impl ErrorCode for JobError {
    fn code(&self) -> &'static str {
        match self {
            JobError::InvalidJob(_) => "invalid_job",
            JobError::Fetch(e) => e.code(),
            JobError::Classify(e) => e.code(),
        }
    }
}

impl JobError {
    /// A failure that is not the job's fault: deliver the message again
    /// (and let the redrive policy dead-letter it if it keeps failing),
    /// instead of writing an error result.
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::InvalidJob(_) => false,
            JobError::Fetch(e) => e.is_transient(),
            // A panic would repeat on redelivery: report it as an error result.
            JobError::Classify(e) => {
                !matches!(e, ClassifyError::Input(_) | ClassifyError::Panicked(_))
            }
        }
    }
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
    version_id: Option<String>,
    base64: Option<String>,
}

/// Reads one message: a job (`{"job_id", "image": {"s3_uri", "version_id"}
/// | {"base64"}, "top_k"}`), or an S3 event notification (one job per `ObjectCreated`
/// record; the `s3:TestEvent` S3 sends on setup gives none).
pub fn parse_message(
    body: &str,
    message_id: &str,
    default_top_k: usize,
) -> Result<Vec<Job>, JobError> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| JobError::InvalidJob(format!("the message body is not JSON: {e}")))?;
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if let Some(records) = value.get("Records").and_then(Value::as_array) {
        return s3_event_jobs(records, default_top_k);
    }
    let job: JobJson = serde_json::from_value(value).map_err(|e| {
        JobError::InvalidJob(format!(
            "{e}; expected {{\"job_id\": \"...\", \"image\": {{\"s3_uri\": \"s3://bucket/key\"}} or \
             {{\"base64\": \"...\"}}, \"top_k\": 5}} or an S3 event notification"
        ))
    })?;
    let top_k = match job.top_k {
        None => default_top_k,
        Some(k) if (1..=1000).contains(&k) => k,
        Some(k) => return Err(JobError::InvalidJob(format!("top_k {k} must be 1 to 1000"))),
    };
    let source = match (job.image.s3_uri, job.image.base64) {
        (Some(uri), None) => {
            let (bucket, key) = parse_s3_uri(&uri)?;
            ImageSource::S3 {
                bucket,
                key,
                version_id: job.image.version_id.filter(|v| !v.is_empty()),
            }
        }
        (None, Some(b64)) if job.image.version_id.is_none() => ImageSource::Base64(b64),
        _ => {
            return Err(JobError::InvalidJob(
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

/// The `job_id` a message declares, when it is a JSON object with one: an
/// invalid job's error result still carries the id its producer knows it by.
pub fn declared_job_id(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let id = value.get("job_id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_string())
}

fn s3_event_jobs(records: &[Value], top_k: usize) -> Result<Vec<Job>, JobError> {
    let mut jobs = Vec::new();
    for r in records {
        let name = r.get("eventName").and_then(Value::as_str).unwrap_or("");
        if r.get("eventSource").and_then(Value::as_str) != Some("aws:s3") {
            return Err(JobError::InvalidJob(
                "a Records message that is not an S3 event notification".into(),
            ));
        }
        if !name.starts_with("ObjectCreated:") {
            continue;
        }
        let bucket = r.pointer("/s3/bucket/name").and_then(Value::as_str);
        let key = r.pointer("/s3/object/key").and_then(Value::as_str);
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err(JobError::InvalidJob(
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
                version_id: None,
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

impl JobResult {
    /// An `ok` result.
    pub fn ok(
        job_id: String,
        message: &InMessage,
        model: Value,
        predictions: Vec<Prediction>,
        timing_ms: Timing,
    ) -> JobResult {
        JobResult {
            job_id,
            message_id: message.message_id.clone(),
            status: "ok".into(),
            model,
            predictions: Some(predictions),
            error: None,
            attempt: message.receive_count,
            timing_ms: Some(timing_ms),
        }
    }

    /// An `error` result.
    pub fn error(job_id: String, message: &InMessage, model: Value, error: &JobError) -> JobResult {
        JobResult {
            job_id,
            message_id: message.message_id.clone(),
            status: "error".into(),
            model,
            predictions: None,
            error: Some(ErrorBody::of(error)),
            attempt: message.receive_count,
            timing_ms: None,
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
                    key: "x.jpg".into(),
                    version_id: None,
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
        for (bad, code) in [
            ("not json", "invalid_job"),
            ("{}", "invalid_job"),
            (r#"{"image": {}}"#, "invalid_job"),
            (r#"{"image": {"s3_uri": "http://x"}}"#, "invalid_s3_uri"),
            (r#"{"image": {"base64": "A"}, "top_k": 0}"#, "invalid_job"),
            (
                r#"{"image": {"base64": "A", "version_id": "3"}}"#,
                "invalid_job",
            ),
        ] {
            assert_eq!(
                parse_message(bad, "m", 5).unwrap_err().code(),
                code,
                "{bad}"
            );
        }
    }

    #[test]
    fn only_failures_that_may_pass_on_a_retry_are_transient() {
        use crate::error::{InputError, ModelError};
        let transient = |e: JobError| e.is_transient();
        assert!(!transient(JobError::InvalidJob("x".into())));
        assert!(!transient(ClassifyError::Input(InputError::Empty).into()));
        assert!(!transient(ClassifyError::Panicked("bug".into()).into()));
        assert!(transient(
            ClassifyError::Internal("task died".into()).into()
        ));
        assert!(transient(
            ClassifyError::Model(ModelError::Inference("oom".into())).into()
        ));
        let unavailable = FetchError::Unavailable {
            uri: "s3://b/k".into(),
            message: "timeout".into(),
        };
        assert!(transient(unavailable.into()));
        let panicked = JobError::from(ClassifyError::Panicked("bug".into()));
        assert_eq!(panicked.code(), "internal");
    }

    /// Regression: the URI parser of model locations read `?` as the start
    /// of a query, so an object whose key holds one could not be a job.
    #[test]
    fn a_key_may_contain_a_question_mark() {
        let body = r#"{"image": {"s3_uri": "s3://bkt/in/what?.jpg", "version_id": "v2"}}"#;
        let jobs = parse_message(body, "m", 5).unwrap();
        assert_eq!(
            jobs[0].source,
            ImageSource::S3 {
                bucket: "bkt".into(),
                key: "in/what?.jpg".into(),
                version_id: Some("v2".into())
            }
        );
    }

    #[test]
    fn url_decoding_of_s3_keys() {
        assert_eq!(url_decode("a+b%2Fc%"), "a b/c%");
        assert_eq!(url_decode("%E2%9C%93"), "\u{2713}");
    }

    #[test]
    fn an_invalid_job_keeps_the_id_it_declares() {
        let body = r#"{"job_id": "j-7", "image": {}}"#;
        assert!(parse_message(body, "m", 5).is_err());
        assert_eq!(declared_job_id(body).as_deref(), Some("j-7"));
        for no_id in ["not json", "[1]", r#"{"job_id": 7}"#, r#"{"job_id": ""}"#] {
            assert_eq!(declared_job_id(no_id), None, "{no_id}");
        }
    }
}

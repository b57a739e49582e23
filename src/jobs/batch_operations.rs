//! S3 Batch Operations' Lambda invocations: "run this function on every
//! object of a manifest". Each task is one job, classified and written to
//! the results queue like an SQS job (when one is configured), and the
//! answer gives S3 a result per task for its completion report:
//!
//! - `Succeeded`, with the top class as the result string;
//! - `PermanentFailure` for the job's own fault (a missing object, a corrupt
//!   image), with the error code and message;
//! - `TemporaryFailure` for what may pass on a retry (S3 throttling or
//!   5xx, the invocation's deadline, a result not written): S3 retries it.
//!
//! Schema 1.0 names the bucket by ARN, 2.0 by name and adds the job's
//! `userArguments` (`top_k` is read from them). Keys come URL-encoded, as
//! in the manifest.

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::s3::batch_job::{S3BatchJobEvent, S3BatchJobResponse, S3BatchJobResult};
use serde::Deserialize;
use serde_json::{json, Value};

use super::batch::{process_jobs, BatchOutcome, ResultsQueue};
use super::message::{url_decode, ImageSource, InMessage, Job, JobError, JobResult};
use crate::app::App;

/// Longest result string sent back: the completion report is a CSV read by
/// people, and a message is cut rather than flooding it.
const MAX_RESULT_STRING: usize = 512;

/// Whether `event` is an S3 Batch Operations invocation.
pub fn is_batch_operations_event(event: &Value) -> bool {
    event.get("invocationSchemaVersion").is_some()
        && event.get("tasks").is_some_and(Value::is_array)
}

/// Classifies every task of the invocation and answers with a result for
/// each. An event that does not deserialise fails each task it names
/// permanently (retrying the same event cannot help).
pub async fn handle_event(
    app: &Arc<App>,
    event: Value,
    deadline: Option<Instant>,
) -> S3BatchJobResponse {
    let version = event["invocationSchemaVersion"].as_str().map(String::from);
    let invocation_id = event["invocationId"].as_str().map(String::from);
    let mut response = S3BatchJobResponse::default();
    response.invocation_schema_version = version;
    response.invocation_id = invocation_id;
    response.treat_missing_keys_as = Some("PermanentFailure".into());
    let event = match S3BatchJobEvent::deserialize(&event) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "unreadable S3 Batch Operations event");
            app.metrics().error("invalid_event");
            let why = format!("the S3 Batch Operations event is not readable: {e}");
            for id in event["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["taskId"].as_str())
            {
                response.results.push(task_result(
                    id,
                    "PermanentFailure",
                    error_string("invalid_event", &why),
                ));
            }
            return response;
        }
    };
    let top_k = match user_top_k(&event) {
        Ok(k) => k.unwrap_or(app.config().top_k),
        Err(why) => {
            for t in &event.tasks {
                let id = t.task_id.as_deref().unwrap_or_default();
                response.results.push(task_result(
                    id,
                    "PermanentFailure",
                    error_string("invalid_job", &why),
                ));
            }
            return response;
        }
    };
    let tasks: Vec<InMessage> = event
        .tasks
        .iter()
        .map(|t| InMessage {
            message_id: t.task_id.clone().unwrap_or_default(),
            body: String::new(),
            receive_count: 1,
        })
        .collect();
    let mut work = Vec::new();
    let mut invalid = Vec::new();
    for (m, task) in tasks.iter().zip(&event.tasks) {
        match task_job(task, top_k) {
            Ok(job) => work.push((m, job)),
            Err(e) => invalid.push((m, m.message_id.clone(), e)),
        }
    }
    let outcome = process_jobs(
        app,
        &tasks,
        work,
        invalid,
        deadline,
        ResultsQueue::IfConfigured,
    )
    .await;
    outcome.log(tasks.len());
    response.results = task_results(&tasks, &outcome);
    response
}

/// The job a task names: its object, by bucket name (2.0) or ARN (1.0).
fn task_job(
    task: &aws_lambda_events::s3::batch_job::S3BatchJobTask,
    top_k: usize,
) -> Result<Job, JobError> {
    let bucket = task
        .other
        .get("s3Bucket")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            // arn:aws:s3:::bucket (the docs' examples also show a region and
            // account before it): the name is what follows the last colon.
            let arn = task.s3_bucket_arn.as_deref()?;
            arn.rsplit(':').next().map(String::from)
        })
        .filter(|b| !b.is_empty());
    let key = task
        .s3_key
        .as_deref()
        .map(url_decode)
        .filter(|k| !k.is_empty());
    let (Some(bucket), Some(key)) = (bucket, key) else {
        return Err(JobError::InvalidJob(
            "an S3 Batch Operations task needs s3Key and s3Bucket (schema 2.0) or s3BucketArn (1.0)"
                .into(),
        ));
    };
    let version_id = task.s3_version_id.clone().filter(|v| !v.is_empty());
    let job_id = match &version_id {
        Some(v) => format!("s3://{bucket}/{key}?versionId={v}"),
        None => format!("s3://{bucket}/{key}"),
    };
    Ok(Job {
        job_id,
        source: ImageSource::S3 {
            bucket,
            key,
            version_id,
        },
        top_k,
    })
}

/// `userArguments.top_k` (schema 2.0), if given.
fn user_top_k(event: &S3BatchJobEvent) -> Result<Option<usize>, String> {
    let Some(k) = event
        .job
        .other
        .get("userArguments")
        .and_then(|a| a.get("top_k"))
    else {
        return Ok(None);
    };
    let parsed = match k {
        Value::String(s) => s.trim().parse::<usize>().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => None,
    };
    match parsed {
        Some(k) if (1..=1000).contains(&k) => Ok(Some(k)),
        _ => Err(format!(
            "userArguments.top_k {k} must be a number from 1 to 1000"
        )),
    }
}

/// One result per task, in the event's order.
fn task_results(tasks: &[InMessage], outcome: &BatchOutcome) -> Vec<S3BatchJobResult> {
    tasks
        .iter()
        .map(|t| {
            let id = &t.message_id;
            if let Some(reason) = outcome.retry_reasons.get(id) {
                let why = "a transient failure; S3 Batch Operations will retry the task";
                return task_result(id, "TemporaryFailure", error_string(reason, why));
            }
            match outcome.results.iter().find(|r| &r.message_id == id) {
                Some(r) => result_of(id, r),
                None => task_result(
                    id,
                    "TemporaryFailure",
                    error_string("internal", "the task has no result; it will be retried"),
                ),
            }
        })
        .collect()
}

fn result_of(task_id: &str, r: &JobResult) -> S3BatchJobResult {
    match (&r.predictions, &r.error) {
        (Some(p), _) => {
            let top = p.first().map_or(
                Value::Null,
                |p| json!({"label": p.label, "index": p.index, "probability": p.probability}),
            );
            task_result(task_id, "Succeeded", top.to_string())
        }
        (None, Some(e)) => task_result(
            task_id,
            "PermanentFailure",
            error_string(&e.code, &e.message),
        ),
        (None, None) => task_result(
            task_id,
            "PermanentFailure",
            error_string("internal", "a result with neither predictions nor an error"),
        ),
    }
}

/// `{"error": code, "message": ...}`, cut to [`MAX_RESULT_STRING`].
fn error_string(code: &str, message: &str) -> String {
    let mut message = message.to_string();
    let budget = MAX_RESULT_STRING.saturating_sub(code.len() + 32);
    if message.len() > budget {
        let mut cut = budget;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    json!({"error": code, "message": message}).to_string()
}

fn task_result(task_id: &str, code: &str, result: String) -> S3BatchJobResult {
    let mut r = S3BatchJobResult::default();
    r.task_id = Some(task_id.to_string());
    r.result_code = Some(code.to_string());
    r.result_string = Some(result);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn event(v: Value) -> S3BatchJobEvent {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tasks_of_both_schema_versions_name_their_object() {
        let v1 = event(json!({
            "invocationSchemaVersion": "1.0", "invocationId": "i", "job": {"id": "j"},
            "tasks": [{"taskId": "t1", "s3Key": "in/my+cat%281%29.jpg", "s3VersionId": null,
                       "s3BucketArn": "arn:aws:s3:::photos"}]
        }));
        let job = task_job(&v1.tasks[0], 5).unwrap();
        assert_eq!(job.job_id, "s3://photos/in/my cat(1).jpg");
        assert_eq!(
            job.source,
            ImageSource::S3 {
                bucket: "photos".into(),
                key: "in/my cat(1).jpg".into(),
                version_id: None
            }
        );
        let v2 = event(json!({
            "invocationSchemaVersion": "2.0", "invocationId": "i",
            "job": {"id": "j", "userArguments": {"top_k": "2"}},
            "tasks": [{"taskId": "t2", "s3Key": "a.jpg", "s3VersionId": "v7", "s3Bucket": "photos"}]
        }));
        let job = task_job(&v2.tasks[0], 5).unwrap();
        assert_eq!(job.job_id, "s3://photos/a.jpg?versionId=v7");
        assert!(matches!(job.source, ImageSource::S3 { version_id: Some(ref v), .. } if v == "v7"));
        assert_eq!(user_top_k(&v2), Ok(Some(2)));
        assert_eq!(user_top_k(&v1), Ok(None));
        let bad = event(
            json!({"invocationSchemaVersion": "2.0", "job": {"userArguments": {"top_k": "0"}},
            "tasks": [{"taskId": "t", "s3Key": "k"}]}),
        );
        assert!(user_top_k(&bad).is_err());
        assert_eq!(
            task_job(&bad.tasks[0], 5).unwrap_err().code(),
            "invalid_job"
        );
    }

    #[test]
    fn result_strings_are_short_json() {
        let long = "x".repeat(4000);
        let s = error_string("s3_object_not_found", &long);
        assert!(s.len() <= MAX_RESULT_STRING, "{}", s.len());
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["error"], "s3_object_not_found");
        // A cut never splits a character.
        let s = error_string("c", &"\u{2713}".repeat(1000));
        assert!(serde_json::from_str::<Value>(&s).is_ok());
    }
}

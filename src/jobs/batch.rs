//! One batch of messages, shared by the Lambda SQS handler and the worker:
//! parse, fetch S3 inputs concurrently, classify in one parallel batch,
//! write results in batched sends, and say which messages must come again.

use std::collections::HashSet;
use std::sync::Arc;

use super::message::{parse_message, ImageSource, InMessage, Job, JobError, JobResult};
use crate::app::App;
use crate::error::ClassifyError;
use crate::inputs::decode_base64;

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

/// Processes one batch and reports which messages must be delivered again.
/// A message is acknowledged only when every one of its results is written.
pub async fn process_batch(app: &Arc<App>, messages: &[InMessage]) -> BatchOutcome {
    let model = app.model_json();
    let mut results: Vec<JobResult> = Vec::new();
    let mut redeliver: HashSet<String> = HashSet::new();
    let mut fail = |m: &InMessage, job_id: &str, e: &JobError, results: &mut Vec<JobResult>| {
        if e.is_transient() {
            tracing::warn!(message_id = %m.message_id, job_id, error = %e, "transient failure; the message will be delivered again");
            redeliver.insert(m.message_id.clone());
        } else {
            results.push(JobResult::error(job_id.to_string(), m, model.clone(), e));
        }
    };

    let mut work: Vec<(&InMessage, Job)> = Vec::new();
    for m in messages {
        match parse_message(&m.body, &m.message_id, app.config().top_k) {
            Ok(jobs) => work.extend(jobs.into_iter().map(|j| (m, j))),
            Err(e) => fail(m, &m.message_id, &e, &mut results),
        }
    }

    // Fetch every input (S3 reads run concurrently).
    let fetched = futures::future::join_all(work.iter().map(|(_, job)| fetch(app, job))).await;
    let mut fetched_jobs: Vec<(&InMessage, Job)> = Vec::new();
    let mut images: Vec<Vec<u8>> = Vec::new();
    for ((m, job), bytes) in work.into_iter().zip(fetched) {
        match bytes {
            Ok(bytes) => {
                fetched_jobs.push((m, job));
                images.push(bytes);
            }
            Err(e) => fail(m, &job.job_id, &e, &mut results),
        }
    }

    // Classify everything fetched in one parallel batch.
    let max_k = fetched_jobs.iter().map(|(_, j)| j.top_k).max().unwrap_or(1);
    match app.classify(images, max_k).await {
        Ok(classified) => {
            for ((m, job), c) in fetched_jobs.into_iter().zip(classified) {
                match c {
                    Ok(mut c) => {
                        c.predictions.truncate(job.top_k);
                        results.push(JobResult::ok(
                            job.job_id,
                            m,
                            model.clone(),
                            c.predictions,
                            c.timing_ms,
                        ));
                    }
                    Err(e) => fail(m, &job.job_id, &JobError::from(e), &mut results),
                }
            }
        }
        Err(e) => {
            // The work died, not any one input: every fetched job comes again.
            let e = JobError::Classify(ClassifyError::Internal(e.to_string()));
            for (m, job) in &fetched_jobs {
                fail(m, &job.job_id, &e, &mut results);
            }
        }
    }

    // A message to deliver again gets no results now; it comes back whole.
    results.retain(|r| !redeliver.contains(&r.message_id));
    let mut outcome = write(app, &results, &mut redeliver).await;
    outcome.failed = messages
        .iter()
        .filter(|m| redeliver.contains(&m.message_id))
        .map(|m| m.message_id.clone())
        .collect();
    outcome
}

/// Writes the results; a message with any unwritten result is redelivered.
async fn write(app: &App, results: &[JobResult], redeliver: &mut HashSet<String>) -> BatchOutcome {
    let bodies: Vec<String> = results
        .iter()
        .map(|r| serde_json::to_string(r).expect("a result always serialises"))
        .collect();
    let written: Vec<bool> = match app.results() {
        Some(sink) => sink
            .send_all(&bodies)
            .await
            .iter()
            .map(Result::is_ok)
            .collect(),
        None => {
            tracing::error!("no results queue is configured (RESULTS_QUEUE_URL): the batch will be delivered again");
            vec![false; bodies.len()]
        }
    };
    let mut outcome = BatchOutcome::default();
    for (r, ok) in results.iter().zip(written) {
        if !ok {
            redeliver.insert(r.message_id.clone());
        } else if r.status == "ok" {
            outcome.ok += 1;
        } else {
            outcome.errors += 1;
        }
    }
    outcome
}

async fn fetch(app: &App, job: &Job) -> Result<Vec<u8>, JobError> {
    Ok(match &job.source {
        ImageSource::Base64(b64) => decode_base64("image.base64", b64)?,
        ImageSource::S3 { bucket, key } => app.inputs().fetch(bucket, key).await?,
    })
}

//! One batch of messages, shared by the Lambda SQS handler and the worker:
//! parse, read S3 inputs concurrently while classifying those read (one
//! image per thread at a time), write results in batched sends, and say
//! which messages must come again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use serde_json::Value;

use super::message::{
    declared_job_id, parse_message, ImageSource, InMessage, Job, JobError, JobResult,
};
use crate::app::App;
use crate::aws::s3::ObjectRef;
use crate::error::{ClassifyError, ErrorCode};
use crate::inputs::{decode_base64, Input};

/// Time kept back before a deadline to write the results already done.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// What happened to a batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Messages to deliver again (transient failure, not done before the
    /// deadline, or a result not written).
    pub failed: Vec<String>,
    /// Why each of those must come again: an error code (`s3_unavailable`,
    /// `deadline`, `results_not_written`, ...), by message id.
    pub retry_reasons: HashMap<String, String>,
    /// `ok` results written.
    pub ok: usize,
    /// `error` results written.
    pub errors: usize,
    /// The results written, for a door that also answers with them (S3
    /// Batch Operations' per-task result strings).
    pub results: Vec<JobResult>,
}

impl BatchOutcome {
    /// The one log line per batch, the same for both doors.
    pub(crate) fn log(&self, messages: usize) {
        tracing::info!(
            messages,
            ok = self.ok,
            errors = self.errors,
            redelivered = self.failed.len(),
            "batch done"
        );
    }
}

/// Results so far, and the messages that must come again (with why).
struct Progress {
    model: Value,
    results: Vec<JobResult>,
    redeliver: HashMap<String, String>,
}

impl Progress {
    /// A failed job: an error result if it is the job's fault, else its
    /// message comes again.
    fn fail(&mut self, m: &InMessage, job_id: &str, e: &JobError) {
        if e.is_transient() {
            tracing::warn!(message_id = %m.message_id, job_id, error = %e, "transient failure; the message will be delivered again");
            self.retry(m, e.code());
        } else {
            let r = JobResult::error(job_id.to_string(), m, self.model.clone(), e);
            self.results.push(r);
        }
    }

    /// `m` comes again whole; the first reason given is kept.
    fn retry(&mut self, m: &InMessage, reason: &str) {
        self.redeliver
            .entry(m.message_id.clone())
            .or_insert_with(|| reason.to_string());
    }
}

/// Where a batch's results must go before its messages count as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultsQueue {
    /// The results queue; without one, every message comes again (the SQS
    /// doors: a result nobody can read is a lost job).
    Required,
    /// The results queue if one is configured; otherwise the door's own
    /// answer carries the results (S3 Batch Operations' completion report).
    IfConfigured,
}

/// Processes one batch and reports which messages must be delivered again.
/// A message is acknowledged only when every one of its results is written.
///
/// With a `deadline` (a Lambda invocation's), no fetch or classification
/// starts after `deadline - DEADLINE_MARGIN`: what was not done is reported
/// for redelivery, and what was done is written in the time kept back.
pub async fn process_batch(
    app: &Arc<App>,
    messages: &[InMessage],
    deadline: Option<Instant>,
) -> BatchOutcome {
    let mut work: Vec<(&InMessage, Job)> = Vec::new();
    let mut invalid = Vec::new();
    for m in messages {
        match parse_message(&m.body, &m.message_id, app.config().top_k) {
            Ok(jobs) => work.extend(jobs.into_iter().map(|j| (m, j))),
            Err(e) => {
                let job_id = declared_job_id(&m.body).unwrap_or_else(|| m.message_id.clone());
                invalid.push((m, job_id, e));
            }
        }
    }
    let outcome = process_jobs(
        app,
        messages,
        work,
        invalid,
        deadline,
        ResultsQueue::Required,
    )
    .await;
    app.metrics()
        .observe_batch(messages.len(), outcome.failed.len());
    outcome
}

/// The part of [`process_batch`] after parsing, for doors whose jobs do not
/// come as job messages: `work` pairs each job with the message (or task)
/// it came in, `invalid` the ones that could not be read with why.
pub(crate) async fn process_jobs<'m>(
    app: &Arc<App>,
    messages: &'m [InMessage],
    work: Vec<(&'m InMessage, Job)>,
    invalid: Vec<(&'m InMessage, String, JobError)>,
    deadline: Option<Instant>,
    results_queue: ResultsQueue,
) -> BatchOutcome {
    let stop_at = deadline.map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or_else(Instant::now));
    let mut progress = Progress {
        model: app.model_json(),
        results: Vec::new(),
        redeliver: HashMap::new(),
    };
    for (m, job_id, e) in invalid {
        progress.fail(m, &job_id, &e);
    }
    fetch_and_classify(app, work, stop_at, &mut progress).await;
    write(app, messages, progress, results_queue).await
}

/// Inputs read ahead of the classification: enough to cover S3's latency
/// while the threads work; their bytes are bounded by the fetch budget
/// (`MAX_INPUT_BYTES_IN_FLIGHT`), not by this count.
const FETCH_AHEAD: usize = 16;

/// One job's input, as the reading side hands it over.
enum Fetched<'m> {
    Ready(&'m InMessage, Job, Input),
    Failed(&'m InMessage, Job, JobError),
    /// Not read before `stop_at`: the message comes again.
    Late(&'m InMessage),
}

/// Reads the inputs (up to [`FETCH_AHEAD`] at once, as the fetch budget
/// allows) and classifies them as they arrive, one image per thread, so a
/// batch naming many large objects holds only those being classified and
/// read next. Nothing starts after `stop_at`; what was not done comes again.
async fn fetch_and_classify<'m>(
    app: &Arc<App>,
    work: Vec<(&'m InMessage, Job)>,
    stop_at: Option<Instant>,
    progress: &mut Progress,
) {
    let threads = app.threads();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Fetched<'m>>(threads);
    let read = async move {
        // Futures made up front, started only as `buffer_unordered` polls
        // them (a closure in the stream trips the spawned task's `Send`).
        let reads: Vec<_> = work
            .into_iter()
            .map(|(m, job)| read_one(app, m, job, stop_at))
            .collect();
        let mut reads = futures::stream::iter(reads).buffer_unordered(FETCH_AHEAD);
        while let Some(f) = reads.next().await {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    };
    let classify = async {
        while let Some(first) = rx.recv().await {
            // What has arrived, up to a thread's worth each: never wait for
            // more while holding some, so the budget always drains.
            let mut ready = Vec::new();
            let mut next = Some(first);
            while let Some(f) = next.take() {
                match f {
                    Fetched::Ready(m, job, input) => ready.push((m, job, input)),
                    Fetched::Failed(m, job, e) => progress.fail(m, &job.job_id, &e),
                    Fetched::Late(m) => progress.retry(m, "deadline"),
                }
                if ready.len() < threads {
                    next = rx.try_recv().ok();
                }
            }
            if !ready.is_empty() {
                classify_chunk(app, ready, stop_at, progress).await;
            }
        }
    };
    futures::join!(read, classify);
}

/// One job's input, unless `stop_at` comes first.
async fn read_one<'m>(
    app: &App,
    m: &'m InMessage,
    job: Job,
    stop_at: Option<Instant>,
) -> Fetched<'m> {
    let fetched = match stop_at {
        Some(t) if Instant::now() >= t => return Fetched::Late(m),
        Some(t) => match tokio::time::timeout_at(t.into(), fetch(app, &job)).await {
            Ok(r) => r,
            Err(_) => return Fetched::Late(m),
        },
        None => fetch(app, &job).await,
    };
    match fetched {
        Ok(input) => Fetched::Ready(m, job, input),
        Err(e) => Fetched::Failed(m, job, e),
    }
}

/// Classifies a few fetched inputs at once (at most one per thread); if
/// `stop_at` has passed, their messages come again instead.
async fn classify_chunk(
    app: &Arc<App>,
    chunk: Vec<(&InMessage, Job, Input)>,
    stop_at: Option<Instant>,
    progress: &mut Progress,
) {
    if stop_at.is_some_and(|t| Instant::now() >= t) {
        tracing::warn!(
            jobs = chunk.len(),
            "the deadline is near; jobs not started will be delivered again"
        );
        chunk
            .iter()
            .for_each(|(m, _, _)| progress.retry(m, "deadline"));
        return;
    }
    let max_k = chunk.iter().map(|(_, j, _)| j.top_k).max().unwrap_or(1);
    let mut jobs = Vec::with_capacity(chunk.len());
    let mut images = Vec::with_capacity(chunk.len());
    let mut held = Vec::with_capacity(chunk.len());
    for (m, job, input) in chunk {
        jobs.push((m, job));
        images.push(input.bytes);
        held.push(input.held);
    }
    let classified = app.classify(images, max_k).await;
    drop(held);
    let classified = match classified {
        Ok(classified) => classified,
        Err(e) => {
            // The work died, not any one input: these jobs come again.
            let e = JobError::Classify(ClassifyError::Internal(e.to_string()));
            jobs.iter()
                .for_each(|(m, job)| progress.fail(m, &job.job_id, &e));
            return;
        }
    };
    for ((m, job), c) in jobs.into_iter().zip(classified) {
        match c {
            Ok(mut c) => {
                c.predictions.truncate(job.top_k);
                let model = progress.model.clone();
                let r = JobResult::ok(job.job_id, m, model, c.predictions, c.timing_ms);
                progress.results.push(r);
            }
            Err(e) => progress.fail(m, &job.job_id, &JobError::from(e)),
        }
    }
}

/// Writes the results of the messages that are done; a message with any
/// unwritten result, or marked for redelivery, is reported failed.
async fn write(
    app: &App,
    messages: &[InMessage],
    progress: Progress,
    results_queue: ResultsQueue,
) -> BatchOutcome {
    let Progress {
        mut results,
        mut redeliver,
        ..
    } = progress;
    // A message to deliver again gets no results now; it comes back whole.
    results.retain(|r| !redeliver.contains_key(&r.message_id));
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
        None if results_queue == ResultsQueue::IfConfigured => vec![true; bodies.len()],
        None => {
            tracing::error!("no results queue is configured (RESULTS_QUEUE_URL): the batch will be delivered again");
            vec![false; bodies.len()]
        }
    };
    let mut outcome = BatchOutcome::default();
    for (r, ok) in results.iter().zip(&written) {
        if !ok {
            redeliver
                .entry(r.message_id.clone())
                .or_insert_with(|| "results_not_written".into());
        } else if r.status == "ok" {
            outcome.ok += 1;
        } else {
            outcome.errors += 1;
            if let Some(e) = &r.error {
                app.metrics().error(&e.code);
            }
        }
    }
    outcome.failed = messages
        .iter()
        .filter(|m| redeliver.contains_key(&m.message_id))
        .map(|m| m.message_id.clone())
        .collect();
    outcome.results = results
        .into_iter()
        .zip(written)
        .filter(|(r, ok)| *ok && !redeliver.contains_key(&r.message_id))
        .map(|(r, _)| r)
        .collect();
    outcome.retry_reasons = redeliver;
    outcome
}

/// One job's input bytes. A panic while fetching (inside the AWS SDK, say)
/// becomes this job's error result: the other jobs of the batch go on.
async fn fetch(app: &App, job: &Job) -> Result<Input, JobError> {
    let fetch = async {
        Ok(match &job.source {
            ImageSource::Base64(b64) => Input::inline(decode_base64("image.base64", b64)?),
            ImageSource::S3 {
                bucket,
                key,
                version_id,
            } => {
                let object = ObjectRef {
                    bucket,
                    key,
                    version_id: version_id.as_deref(),
                };
                app.inputs().fetch(object).await?
            }
        })
    };
    std::panic::AssertUnwindSafe(fetch)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = crate::error::panic_message(panic.as_ref());
            tracing::error!(job_id = %job.job_id, panic = %what, "fetching the input panicked");
            Err(JobError::Classify(ClassifyError::Panicked(format!(
                "fetching the input failed unexpectedly ({what}); report this as a bug"
            ))))
        })
}

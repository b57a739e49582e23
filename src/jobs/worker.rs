//! `onnx-lambda worker`: the SQS batch logic outside Lambda. Long-polls the
//! job queue, processes batches (bounded concurrency), deletes a message
//! only after its results are written, keeps the messages of a long batch
//! invisible while it runs, and on SIGTERM/SIGINT stops receiving (after the
//! current long poll, at most `wait_seconds`), finishes what is in flight and
//! deletes nothing unfinished.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use serde::Serialize;
use tokio::task::JoinSet;

use super::batch::process_batch;
use super::message::InMessage;
use crate::app::App;
use crate::aws::sqs::{delete_messages, extend_visibility, receive};

/// How the worker polls.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The job queue.
    pub queue_url: String,
    /// Messages per receive (1 to 10).
    pub messages_per_receive: i32,
    /// Long-poll wait (0 to 20 s).
    pub wait_seconds: i32,
    /// Visibility timeout set on receive and renewed while a batch runs.
    pub visibility_timeout: i32,
    /// Batches processed at once.
    pub concurrency: usize,
}

/// Counters for the summary line.
#[derive(Debug, Default, Serialize)]
pub struct WorkerStats {
    /// Messages received.
    pub received: usize,
    /// Messages deleted (all their results written).
    pub deleted: usize,
    /// Messages left for redelivery.
    pub redelivered: usize,
    /// `ok` results written.
    pub ok: usize,
    /// `error` results written.
    pub errors: usize,
}

#[derive(Default)]
struct Counters {
    received: AtomicUsize,
    deleted: AtomicUsize,
    redelivered: AtomicUsize,
    ok: AtomicUsize,
    errors: AtomicUsize,
}

/// Runs until `shutdown` resolves, then drains in-flight batches. `app`
/// must have a results queue ([`App::results`]); `sqs` reads the job queue.
pub async fn run(
    app: Arc<App>,
    sqs: aws_sdk_sqs::Client,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> WorkerStats {
    // Stop between receives, never in the middle of one: a receive that is
    // cut off may already have hidden messages for the visibility timeout.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.store(true, Ordering::SeqCst);
        }
    };
    let watcher = tokio::spawn(watcher);
    let counters = Arc::new(Counters::default());
    let mut inflight = JoinSet::new();
    let concurrency = options.concurrency.max(1);
    loop {
        while inflight.len() >= concurrency {
            inflight.join_next().await;
        }
        if inflight.is_empty() {
            crate::memory::release_when_idle();
        }
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let messages = receive(
            &sqs,
            &options.queue_url,
            options.messages_per_receive,
            options.wait_seconds,
            Some(options.visibility_timeout),
        )
        .await;
        if messages.is_empty() {
            continue;
        }
        counters
            .received
            .fetch_add(messages.len(), Ordering::Relaxed);
        let batch = with_receipt_handles(messages);
        let (app, sqs, options, counters) =
            (app.clone(), sqs.clone(), options.clone(), counters.clone());
        inflight.spawn(async move { handle(app, sqs, options, counters, batch).await });
    }
    tracing::info!(
        in_flight = inflight.len(),
        "shutting down: finishing batches in flight"
    );
    while inflight.join_next().await.is_some() {}
    watcher.abort();
    counters.snapshot()
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            received: self.received.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Received messages as jobs input, each with the handle that deletes it.
fn with_receipt_handles(messages: Vec<Message>) -> Vec<(InMessage, String)> {
    messages
        .into_iter()
        .filter_map(|m| {
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            Some((
                InMessage {
                    message_id: m.message_id?,
                    body: m.body.unwrap_or_default(),
                    receive_count,
                },
                m.receipt_handle?,
            ))
        })
        .collect()
}

async fn handle(
    app: Arc<App>,
    sqs: aws_sdk_sqs::Client,
    options: WorkerOptions,
    counters: Arc<Counters>,
    batch: Vec<(InMessage, String)>,
) {
    // Keep the batch invisible while it runs, however long that is.
    let handles: Vec<String> = batch.iter().map(|(_, h)| h.clone()).collect();
    let heartbeat = {
        let (sqs, queue, handles) = (sqs.clone(), options.queue_url.clone(), handles.clone());
        // Three renewals per timeout: one late call must not let it lapse.
        let timeout_ms = u64::try_from(options.visibility_timeout).unwrap_or(1) * 1000;
        let every = Duration::from_millis((timeout_ms / 3).max(200));
        let timeout = options.visibility_timeout;
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                extend_visibility(&sqs, &queue, &handles, timeout).await;
            }
        }))
    };
    let messages: Vec<InMessage> = batch.iter().map(|(m, _)| m.clone()).collect();
    // No deadline: the heartbeat keeps the batch invisible however long it takes.
    let outcome = process_batch(&app, &messages, None).await;
    drop(heartbeat);
    counters.ok.fetch_add(outcome.ok, Ordering::Relaxed);
    counters.errors.fetch_add(outcome.errors, Ordering::Relaxed);
    counters
        .redelivered
        .fetch_add(outcome.failed.len(), Ordering::Relaxed);
    let done: Vec<&str> = batch
        .iter()
        .filter(|(m, _)| !outcome.failed.contains(&m.message_id))
        .map(|(_, h)| h.as_str())
        .collect();
    let deleted = delete_messages(&sqs, &options.queue_url, &done).await;
    counters.deleted.fetch_add(deleted, Ordering::Relaxed);
    outcome.log(batch.len());
}

/// Stops a task when dropped: the visibility heartbeat ends with its batch
/// even if the batch unwinds, so its messages become visible again and are
/// retried (then dead-lettered) instead of staying invisible while the
/// worker runs.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

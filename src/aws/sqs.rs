//! SQS batch calls, one way: every send, delete and visibility change goes
//! through [`batches`], which groups entries into calls of at most 10
//! entries and 256 KiB, and reports per entry what happened.

use std::ops::Range;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};

/// SQS's limit on one batch call's payload (and on one message).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// SQS's limit on entries per batch call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Attempts per message in [`QueueSender::send_all`] (the SDK also retries
/// throttling and 5xx per call).
const SEND_ATTEMPTS: u32 = 3;

/// Splits entries of the given payload sizes into consecutive ranges, one
/// per batch call: at most [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_BYTES`].
pub fn batches(sizes: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, len) in sizes.into_iter().enumerate() {
        let full = out
            .last()
            .is_none_or(|r| r.len() == MAX_BATCH_ENTRIES || bytes + len > MAX_BATCH_BYTES);
        if full {
            out.push(i..i);
            bytes = 0;
        }
        out.last_mut().expect("just pushed").end = i + 1;
        bytes += len;
    }
    out
}

/// One long poll of `queue_url`: up to `max` messages (1 to 10), waiting up
/// to `wait_seconds` (0 to 20), hidden for `visibility_timeout` seconds if
/// given, with their receive counts. A failed receive is logged and, after a
/// second's pause, reads as no messages: the caller simply polls again.
pub(crate) async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: i32,
    wait_seconds: i32,
    visibility_timeout: Option<i32>,
) -> Vec<Message> {
    let wait_seconds = wait_seconds.clamp(0, 20);
    let received = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max.clamp(1, 10))
        .wait_time_seconds(wait_seconds)
        .set_visibility_timeout(visibility_timeout)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .customize()
        .config_override(long_poll(sqs, wait_seconds))
        .send()
        .await;
    match received {
        Ok(out) => out.messages.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(queue = queue_url, error = %super::error_chain(&e), "receive failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Vec::new()
        }
    }
}

/// A per-call override for a long poll: the read timeout must outlast the
/// poll's own wait.
fn long_poll(sqs: &aws_sdk_sqs::Client, wait_seconds: i32) -> aws_sdk_sqs::config::Builder {
    let read = sqs
        .config()
        .timeout_config()
        .and_then(|t| t.read_timeout())
        .unwrap_or(Duration::from_secs(10));
    let wait = Duration::from_secs(u64::try_from(wait_seconds).unwrap_or(0));
    let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .read_timeout(wait + read)
        .build();
    aws_sdk_sqs::config::Builder::default().timeout_config(timeouts)
}

/// Sends message bodies to one queue.
#[derive(Debug, Clone)]
pub struct QueueSender {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl QueueSender {
    /// A sender for `queue_url`.
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> QueueSender {
        QueueSender {
            sqs,
            queue_url: queue_url.into(),
        }
    }

    /// The queue written to.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Sends every body with `SendMessageBatch`, retrying entries that
    /// failed; `result[i]` is `Ok` when `bodies[i]` was written, else the
    /// last reason it was not.
    pub async fn send_all(&self, bodies: &[String]) -> Vec<Result<(), String>> {
        let mut written: Vec<Result<(), String>> = vec![Err("not sent".to_string()); bodies.len()];
        let mut todo: Vec<usize> = (0..bodies.len()).collect();
        for attempt in 1..=SEND_ATTEMPTS {
            if todo.is_empty() {
                break;
            }
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 2))).await;
            }
            let mut retry = Vec::new();
            for range in batches(todo.iter().map(|&i| bodies[i].len())) {
                let chunk = &todo[range];
                let entries = chunk
                    .iter()
                    .map(|&i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(&bodies[i])
                            .build()
                            .expect("id and body are set")
                    })
                    .collect();
                let sent = self
                    .sqs
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                match sent {
                    Ok(out) => {
                        for ok in out.successful() {
                            if let Some(w) = ok
                                .id()
                                .parse::<usize>()
                                .ok()
                                .and_then(|i| written.get_mut(i))
                            {
                                *w = Ok(());
                            }
                        }
                        for f in out.failed() {
                            tracing::warn!(
                                id = f.id(),
                                code = f.code(),
                                sender_fault = f.sender_fault(),
                                attempt,
                                "message not sent"
                            );
                            if let Ok(i) = f.id().parse::<usize>() {
                                if let Some(w) = written.get_mut(i) {
                                    *w = Err(f.message().unwrap_or(f.code()).to_string());
                                    retry.push(i);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let reason = super::error_chain(&e);
                        tracing::warn!(queue = %self.queue_url, error = %reason, attempt, "SendMessageBatch failed");
                        for &i in chunk {
                            written[i] = Err(reason.clone());
                        }
                        retry.extend_from_slice(chunk);
                    }
                }
            }
            todo = retry;
        }
        written
    }
}

/// Deletes messages by receipt handle; returns how many were deleted. A
/// message not deleted comes back, and its result is then written again,
/// which consumers deduplicate by `job_id`: never a loss.
pub async fn delete_messages(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    handles: &[&str],
) -> usize {
    let mut deleted = 0;
    for range in batches(handles.iter().map(|h| h.len())) {
        let entries = handles[range]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*h)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let result = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => {
                deleted += out.successful().len();
                for f in out.failed() {
                    tracing::warn!(
                        code = f.code(),
                        "message not deleted; it will be delivered again"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %super::error_chain(&e), "delete failed; the messages will be delivered again")
            }
        }
    }
    deleted
}

/// Sets the visibility timeout of messages still being worked on.
pub async fn extend_visibility(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    handles: &[String],
    timeout_seconds: i32,
) {
    for range in batches(handles.iter().map(String::len)) {
        let entries = handles[range]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(timeout_seconds)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let result = sqs
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %super::error_chain(&e), "cannot extend visibility");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_size_limits() {
        let lens = |b: Vec<Range<usize>>| b.iter().map(Range::len).collect::<Vec<_>>();
        assert_eq!(lens(batches(vec![100; 23])), [10, 10, 3]);
        assert_eq!(batches(vec![100 * 1024; 3]), vec![0..2, 2..3]);
        // One body at the limit fills a call alone.
        assert_eq!(batches([10, MAX_BATCH_BYTES, 10]), vec![0..1, 1..2, 2..3]);
        assert!(batches(Vec::new()).is_empty());
    }
}

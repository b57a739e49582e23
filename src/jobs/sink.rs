//! The results sink: result messages onto the results queue with
//! `SendMessageBatch` (at most 10 entries and 256 KiB a call), retrying the
//! entries that failed, and saying exactly which were written.

use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

/// SQS's limit on one `SendMessageBatch` call (and on one message).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// SQS's limit on entries per batch call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Attempts per entry (the SDK also retries throttling and 5xx per call).
const ATTEMPTS: u32 = 3;

/// Writes result messages to one queue.
#[derive(Debug, Clone)]
pub struct ResultsSink {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl ResultsSink {
    /// A sink for `queue_url`.
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> ResultsSink {
        ResultsSink {
            sqs,
            queue_url: queue_url.into(),
        }
    }

    /// The queue written to.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Sends every body; `result[i]` says whether `bodies[i]` was written.
    pub async fn send_all(&self, bodies: &[String]) -> Vec<bool> {
        let mut written = vec![false; bodies.len()];
        let mut todo: Vec<usize> = (0..bodies.len()).collect();
        for attempt in 1..=ATTEMPTS {
            if todo.is_empty() {
                break;
            }
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 2))).await;
            }
            let mut retry = Vec::new();
            for chunk in chunks(&todo, bodies) {
                let entries: Vec<SendMessageBatchRequestEntry> = chunk
                    .iter()
                    .map(|&i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(&bodies[i])
                            .build()
                            .expect("id and body are set")
                    })
                    .collect();
                match self
                    .sqs
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                {
                    Ok(out) => {
                        for ok in out.successful() {
                            if let Ok(i) = ok.id().parse::<usize>() {
                                written[i] = true;
                            }
                        }
                        for f in out.failed() {
                            tracing::warn!(
                                id = f.id(),
                                code = f.code(),
                                sender_fault = f.sender_fault(),
                                attempt,
                                "result entry not written"
                            );
                            if let Ok(i) = f.id().parse::<usize>() {
                                retry.push(i);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            queue = %self.queue_url,
                            error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                            attempt,
                            "SendMessageBatch failed"
                        );
                        retry.extend(chunk.iter().copied());
                    }
                }
            }
            todo = retry;
        }
        written
    }
}

/// Groups indices into calls of at most 10 entries and 256 KiB.
fn chunks(todo: &[usize], bodies: &[String]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for &i in todo {
        let len = bodies[i].len();
        let full = out
            .last()
            .is_none_or(|c| c.len() == MAX_BATCH_ENTRIES || size + len > MAX_BATCH_BYTES);
        if full {
            out.push(Vec::new());
            size = 0;
        }
        out.last_mut().expect("just pushed").push(i);
        size += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_count_and_size_limits() {
        let small: Vec<String> = (0..23).map(|_| "x".repeat(100)).collect();
        let idx: Vec<usize> = (0..23).collect();
        let c = chunks(&idx, &small);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 3]);
        let big: Vec<String> = (0..3).map(|_| "x".repeat(100 * 1024)).collect();
        let c = chunks(&[0, 1, 2], &big);
        assert_eq!(c, vec![vec![0, 1], vec![2]]);
    }
}

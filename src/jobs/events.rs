//! Lambda's SQS event: process the batch and report `batchItemFailures` for
//! exactly the messages to deliver again (`ReportBatchItemFailures` must be
//! enabled on the event source mapping).

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use serde_json::Value;

use super::batch::process_batch;
use super::message::InMessage;
use crate::app::App;

/// Whether `event` is an SQS batch.
pub fn is_sqs_event(event: &Value) -> bool {
    event["Records"]
        .as_array()
        .and_then(|r| r.first())
        .is_some_and(|r| r["eventSource"] == "aws:sqs")
}

/// Processes an SQS event. An event that does not deserialise reports every
/// message id it names as failed: retried, then dead-lettered, never dropped.
pub async fn handle_event(
    app: &Arc<App>,
    event: Value,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let ids: Vec<String> = event["Records"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r.get("messageId").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let event: SqsEvent = match serde_json::from_value(event) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "unreadable SQS event");
            app.metrics().error("invalid_event");
            app.metrics().observe_batch(ids.len(), ids.len());
            response.set_failures(ids);
            return response;
        }
    };
    let messages: Vec<InMessage> = event
        .records
        .into_iter()
        .map(|r| InMessage {
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            message_id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
    let outcome = process_batch(app, &messages, deadline).await;
    outcome.log(messages.len());
    response.set_failures(outcome.failed);
    response
}

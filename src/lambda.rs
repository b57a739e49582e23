//! The Lambda door: decides what an incoming event is and hands it to the
//! protocol that owns it.
//!
//! - SQS batches go to `jobs::events`, answered with the typed
//!   `SqsBatchResponse` (partial batch failures).
//! - API Gateway REST (v1) and HTTP (v2) APIs, Function URLs and ALB go to
//!   `http::events`, answered in each source's response shape.
//! - Anything else is read as a direct invocation: `{"image": "<base64>"}`.
//!
//! The [`App`] is built in the init phase, before [`run`] starts the runtime
//! loop, and every invocation borrows it: nothing is loaded lazily inside
//! the handler, so invocations can never load the model twice.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use aws_lambda_events::sqs::SqsBatchResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::App;
use crate::error::ErrorBody;
use crate::inputs::decode_base64;

/// A direct invocation (`aws lambda invoke --payload ...`): one image, inline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectRequest {
    /// The encoded image, base64.
    image: String,
    /// Classes to return (default `TOP_K`).
    #[serde(default)]
    top_k: Option<usize>,
}

/// What an invocation returns, in the shape its event source expects.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `batchItemFailures` for an SQS batch.
    Sqs(SqsBatchResponse),
    /// An HTTP response in the event source's shape.
    Http(Value),
    /// The answer to a direct invocation: predictions or `{"error"}`.
    Direct(Value),
}

impl Response {
    /// Whether the invocation succeeded, for the log line.
    fn ok(&self) -> bool {
        match self {
            Response::Sqs(r) => r.batch_item_failures.is_empty(),
            Response::Http(r) => r
                .get("statusCode")
                .and_then(Value::as_u64)
                .is_some_and(|s| s < 400),
            Response::Direct(r) => r.get("error").is_none(),
        }
    }
}

/// Runs the Lambda runtime loop until the runtime stops it.
pub async fn run(app: Arc<App>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Value>| {
            let app = app.clone();
            async move {
                let id = event.context.request_id.clone();
                let deadline = instant_of(event.context.deadline());
                Ok::<_, lambda_runtime::Error>(
                    handle(app, event.payload, &id, Some(deadline)).await,
                )
            }
        },
    ))
    .await
}

/// The invocation's wall-clock deadline on the monotonic clock.
fn instant_of(deadline: SystemTime) -> Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now() + left
}

/// Handles one Lambda event of any supported kind. Bad input is answered
/// with `{"error": {"code", "message"}}`, never a function error, so callers
/// always get a reason. An SQS batch stops starting work shortly before
/// `deadline` (the invocation's), and reports what it did not do as batch
/// item failures, so a timeout never discards finished results.
pub async fn handle(
    app: Arc<App>,
    event: Value,
    request_id: &str,
    deadline: Option<Instant>,
) -> Response {
    let cold_start = app.take_cold_start();
    let started = Instant::now();
    let (kind, response) = if crate::jobs::events::is_sqs_event(&event) {
        let r = crate::jobs::events::handle_event(&app, event, deadline).await;
        ("sqs", Response::Sqs(r))
    } else if crate::http::events::is_http_event(&event) {
        let r = crate::http::events::handle_event(app, event).await;
        ("http", Response::Http(r))
    } else {
        ("direct", Response::Direct(direct(app, event).await))
    };
    tracing::info!(
        request_id,
        cold_start,
        kind,
        ok = response.ok(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "invocation"
    );
    response
}

async fn direct(app: Arc<App>, event: Value) -> Value {
    let req = match serde_json::from_value::<DirectRequest>(event) {
        Ok(req) => req,
        Err(e) => {
            return ErrorBody::new(
                "unsupported_event",
                format!(
                    "the event is not a supported Lambda event (API Gateway, Function URL, ALB) nor a direct \
                     request {{\"image\": \"<base64>\", \"top_k\": 5}}: {e}"
                ),
            )
            .to_json()
        }
    };
    let bytes = match decode_base64("\"image\"", &req.image) {
        Ok(b) => b,
        Err(e) => return ErrorBody::of(&e).to_json(),
    };
    let top_k = req.top_k.unwrap_or(app.config().top_k);
    let result = app
        .classify(vec![bytes], top_k)
        .await
        .and_then(|mut r| r.pop().expect("one result per image"));
    match result {
        Ok(c) => json!({
            "model": app.model_json(),
            "predictions": c.predictions,
            "timing_ms": c.timing_ms,
        }),
        Err(e) => ErrorBody::of(&e).to_json(),
    }
}

//! The Lambda door: decides what an incoming event is and hands it to the
//! protocol that owns it.
//!
//! - SQS batches go to `jobs::events`, answered with the typed
//!   `SqsBatchResponse` (partial batch failures).
//! - S3 Batch Operations invocations go to `jobs::batch_operations`,
//!   answered with a result per task (`S3BatchJobResponse`).
//! - API Gateway REST (v1) and HTTP (v2) APIs, Function URLs and ALB go to
//!   `http::events`, answered in each source's response shape.
//! - Anything else is read as a direct invocation: `{"image": "<base64>"}`.
//!
//! The [`App`] is built in the init phase, before [`run`] starts the runtime
//! loop, and every invocation borrows it: nothing is loaded lazily inside
//! the handler, so invocations can never load the model twice.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use aws_lambda_events::s3::batch_job::S3BatchJobResponse;
use aws_lambda_events::sqs::SqsBatchResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::App;
use crate::error::ErrorBody;
use crate::inputs::decode_base64;
use crate::metrics::InvocationFacts;

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
    /// A result per task for S3 Batch Operations.
    S3Batch(S3BatchJobResponse),
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
            Response::S3Batch(r) => r
                .results
                .iter()
                .all(|t| t.result_code.as_deref() == Some("Succeeded")),
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
                let response = handle(app.clone(), event.payload, &id, deadline).await;
                emit_metrics(&app, &id);
                Ok::<_, lambda_runtime::Error>(response)
            }
        },
    ))
    .await
}

/// Tells Lambda why the init phase failed (`/runtime/init/error`), so the
/// invocation that found the container cold fails with this message (a bad
/// `MODEL_SHA256`, a missing model object) instead of only "Runtime exited
/// with error". Best effort: the process exits with the error either way.
pub async fn report_init_error(message: &str) {
    let body = json!({"errorType": "Runtime.InitError", "errorMessage": message});
    let request = lambda_runtime_api_client::build_request()
        .method(http::Method::POST)
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", "Runtime.InitError")
        .body(lambda_runtime_api_client::body::Body::from(
            body.to_string(),
        ));
    let client = lambda_runtime_api_client::PooledClient::builder().build();
    let sent = match request {
        Ok(request) => client.call(request).await.map(|r| r.status()),
        Err(e) => Err(e.into()),
    };
    match sent {
        Ok(status) if status.is_success() => {}
        Ok(status) => tracing::warn!(%status, "the Runtime API refused the init error"),
        Err(e) => tracing::warn!(error = %e, "cannot report the init error to the Runtime API"),
    }
}

/// Writes the invocation's one EMF line to stdout, where CloudWatch Logs
/// turns it into metrics. Only the runtime loop writes it (tests that call
/// [`handle`] read `App::metrics` instead).
fn emit_metrics(app: &App, request_id: &str) {
    use std::io::Write;
    let timestamp_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let facts = InvocationFacts {
        request_id,
        timestamp_ms,
    };
    let line = app
        .metrics()
        .take_invocation()
        .emf(&app.config().emf, &facts);
    // A closed stdout must not fail the invocation; the log line still says it ran.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The invocation's wall-clock deadline on the monotonic clock, or `None`
/// when it has already passed as the invocation starts. Lambda never sends
/// that, but emulators may: `cargo lambda watch` sends a duration (600000)
/// where Lambda sends epoch milliseconds, and taken as a date it would make
/// every SQS batch give all its messages back unprocessed.
fn instant_of(deadline: SystemTime) -> Option<Instant> {
    match deadline.duration_since(SystemTime::now()) {
        Ok(left) => Some(Instant::now() + left),
        Err(_) => {
            tracing::warn!(
                ?deadline,
                "the invocation's deadline has already passed; working without one"
            );
            None
        }
    }
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
    } else if crate::jobs::batch_operations::is_batch_operations_event(&event) {
        let r = crate::jobs::batch_operations::handle_event(&app, event, deadline).await;
        ("s3_batch", Response::S3Batch(r))
    } else if crate::http::events::is_http_event(&event) {
        let r = crate::http::events::handle_event(app, event).await;
        ("http", Response::Http(r))
    } else {
        let answer = direct(&app, event).await.unwrap_or_else(|e| {
            app.metrics().error(&e.code);
            e.to_json()
        });
        ("direct", Response::Direct(answer))
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

async fn direct(app: &Arc<App>, event: Value) -> Result<Value, ErrorBody> {
    let req = serde_json::from_value::<DirectRequest>(event).map_err(|e| {
        ErrorBody::new(
            "unsupported_event",
            format!(
                "the event is not a supported Lambda event (API Gateway, Function URL, ALB) nor a direct \
                 request {{\"image\": \"<base64>\", \"top_k\": 5}}: {e}"
            ),
        )
    })?;
    let bytes = decode_base64("\"image\"", &req.image).map_err(|e| ErrorBody::of(&e))?;
    let top_k = req.top_k.unwrap_or(app.config().top_k);
    let result = app
        .classify(vec![bytes], top_k)
        .await
        .and_then(|mut r| r.pop().expect("one result per image"));
    let c = result.map_err(|e| ErrorBody::of(&e))?;
    Ok(json!({
        "model": app.model_json(),
        "predictions": c.predictions,
        "timing_ms": c.timing_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Regression: `cargo lambda watch` sends `Lambda-Runtime-Deadline-Ms:
    /// 600000`, which read as a date is in 1970; every SQS batch then gave
    /// all its messages back without processing them.
    #[test]
    fn a_deadline_already_past_is_no_deadline() {
        let emulator = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        assert_eq!(instant_of(emulator), None);
        let lambda = SystemTime::now() + Duration::from_secs(30);
        let left = instant_of(lambda).unwrap() - Instant::now();
        assert!(
            left > Duration::from_secs(29) && left <= Duration::from_secs(30),
            "{left:?}"
        );
    }
}

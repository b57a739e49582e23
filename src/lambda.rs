//! The Lambda door: the shared application state built once per container,
//! and the handler that decides what an incoming event is.
//!
//! Events: API Gateway REST (v1) and HTTP (v2) APIs, Function URLs and ALB
//! go to the HTTP router ([`crate::http`]); anything else is read as a direct
//! invocation.
//!
//! `main` builds an [`App`] (config, SDK clients, the model) during the
//! Lambda init phase, before the runtime loop starts, and every invocation
//! borrows it. Nothing is loaded lazily inside the handler, so concurrent or
//! repeated invocations can never load the model twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::classify::Classifier;
use crate::config::Config;
use crate::model::source::{LoadError, ModelLoader};
use crate::model::ModelInfo;

/// Everything an invocation needs, built once and shared.
#[derive(Debug)]
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// The classifier around the shared model.
    pub classifier: Classifier,
    /// S3 client (inputs by reference; `None` when S3 is not configured).
    pub s3: Option<aws_sdk_s3::Client>,
    /// SQS client for the results queue (`None` outside the SQS doors).
    pub sqs: Option<aws_sdk_sqs::Client>,
    cold: AtomicBool,
}

impl App {
    /// Loads the model with `loader` (which logs what the load cost) and
    /// wires the classifier. Call once per process.
    pub async fn init(
        config: Config,
        loader: &ModelLoader,
        s3: Option<aws_sdk_s3::Client>,
    ) -> Result<App, LoadError> {
        let loaded = loader.load(&config).await?;
        let mut classifier = Classifier::new(loaded.model, config.limits);
        if let Some(t) = config.threads {
            classifier = classifier.with_threads(t);
        }
        Ok(App {
            config,
            classifier,
            s3,
            sqs: None,
            cold: AtomicBool::new(true),
        })
    }

    /// Adds the SQS client results are written with.
    pub fn with_sqs(mut self, sqs: aws_sdk_sqs::Client) -> App {
        self.sqs = Some(sqs);
        self
    }

    /// The results sink, when an SQS client and `RESULTS_QUEUE_URL` are set.
    pub fn results_sink(&self) -> Option<crate::jobs::sink::ResultsSink> {
        match (&self.sqs, &self.config.results_queue_url) {
            (Some(sqs), Some(url)) => Some(crate::jobs::sink::ResultsSink::new(
                sqs.clone(),
                url.clone(),
            )),
            _ => None,
        }
    }

    /// The loaded model's identity.
    pub fn model_info(&self) -> &ModelInfo {
        self.classifier.model().info()
    }

    /// True for the first invocation of this container only.
    pub fn take_cold_start(&self) -> bool {
        self.cold.swap(false, Ordering::SeqCst)
    }
}

/// A direct invocation (`aws lambda invoke --payload ...`): one image, inline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectRequest {
    /// The encoded image, base64.
    pub image: String,
    /// Classes to return (default `TOP_K`).
    #[serde(default)]
    pub top_k: Option<usize>,
}

/// Handles one Lambda event of any supported kind and returns the response
/// payload. Bad input is answered with `{"error": {"code", "message"}}`,
/// never a function error, so callers always get a reason.
pub async fn handle(app: Arc<App>, event: Value, request_id: &str) -> Value {
    let cold_start = app.take_cold_start();
    let started = Instant::now();
    let (kind, response, ok) = if is_sqs_event(&event) {
        let r = sqs_event(&app, event).await;
        let ok = r["batchItemFailures"].as_array().is_some_and(Vec::is_empty);
        ("sqs", r, ok)
    } else if is_http_event(&event) {
        let r = http_event(app.clone(), event).await;
        let ok = r
            .get("statusCode")
            .and_then(Value::as_u64)
            .is_some_and(|s| s < 400);
        ("http", r, ok)
    } else {
        let r = match serde_json::from_value::<DirectRequest>(event) {
            Ok(req) => direct(app.clone(), req).await,
            Err(e) => error_body(
                "unsupported_event",
                &format!(
                    "the event is not a supported Lambda event (API Gateway, Function URL, ALB) nor a direct \
                     request {{\"image\": \"<base64>\", \"top_k\": 5}}: {e}"
                ),
            ),
        };
        let ok = r.get("error").is_none();
        ("direct", r, ok)
    };
    tracing::info!(
        request_id,
        cold_start,
        kind,
        ok,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "invocation"
    );
    response
}

fn is_sqs_event(event: &Value) -> bool {
    event["Records"]
        .as_array()
        .and_then(|r| r.first())
        .is_some_and(|r| r["eventSource"] == "aws:sqs")
}

/// An SQS batch: process it and report `batchItemFailures` for exactly the
/// messages to deliver again (ReportBatchItemFailures must be enabled on the
/// event source mapping).
async fn sqs_event(app: &Arc<App>, event: Value) -> Value {
    // Every message id we can see, in case the event does not deserialise.
    let ids: Vec<Value> = event["Records"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r.get("messageId").cloned())
                .collect()
        })
        .unwrap_or_default();
    let event: aws_lambda_events::sqs::SqsEvent = match serde_json::from_value(event) {
        Ok(e) => e,
        Err(e) => {
            // Report every message as failed: retried, then dead-lettered,
            // never dropped.
            tracing::error!(error = %e, "unreadable SQS event");
            let failures: Vec<Value> = ids
                .into_iter()
                .map(|id| json!({"itemIdentifier": id}))
                .collect();
            return json!({"batchItemFailures": failures});
        }
    };
    let messages: Vec<crate::jobs::InMessage> = event
        .records
        .into_iter()
        .map(|r| crate::jobs::InMessage {
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            message_id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
    let sink = app.results_sink();
    let outcome = crate::jobs::process_batch(app, sink.as_ref(), &messages).await;
    let failures: Vec<Value> = outcome
        .failed
        .iter()
        .map(|id| json!({"itemIdentifier": id}))
        .collect();
    tracing::info!(
        messages = messages.len(),
        ok = outcome.ok,
        errors = outcome.errors,
        failed = failures.len(),
        "sqs batch"
    );
    json!({"batchItemFailures": failures})
}

/// API Gateway (REST and HTTP APIs), Function URLs and ALB all carry a
/// `requestContext`; REST API test events may carry only `httpMethod`.
fn is_http_event(event: &Value) -> bool {
    event.get("requestContext").is_some() || event.get("httpMethod").is_some()
}

/// Converts an HTTP-shaped event to an `http::Request`, routes it, and
/// shapes the answer as that event source expects.
async fn http_event(app: Arc<App>, event: Value) -> Value {
    use lambda_http::request::{LambdaRequest, RequestOrigin};
    let request: LambdaRequest = match serde_json::from_value(event) {
        Ok(r) => r,
        Err(e) => {
            // Every HTTP source accepts this minimal shape.
            let body = error_body(
                "invalid_event",
                &format!("the HTTP event could not be read: {e}"),
            );
            return json!({"statusCode": 400, "headers": {"content-type": "application/json"},
                          "body": body.to_string(), "isBase64Encoded": false});
        }
    };
    let origin = request.request_origin();
    let request = http::Request::<lambda_http::Body>::from(request);
    // Route on the resource path: REST APIs prefix the stage ("/prod/predict").
    let path = lambda_http::RequestExt::raw_http_path(&request).to_string();
    let (mut parts, body) = request.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(uri) = http::Uri::builder().path_and_query(path_and_query).build() {
        parts.uri = uri;
    }
    let bytes = match body {
        lambda_http::Body::Text(t) => bytes::Bytes::from(t),
        lambda_http::Body::Binary(b) => bytes::Bytes::from(b),
        _ => bytes::Bytes::new(),
    };
    let response = crate::http::route(Some(app), http::Request::from_parts(parts, bytes)).await;
    let (parts, body) = response.into_parts();
    let status = i64::from(parts.status.as_u16());
    let body = Some(aws_lambda_events::encodings::Body::Text(
        String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    ));
    let headers = parts.headers;
    let value = match origin {
        RequestOrigin::ApiGatewayV1 => {
            let mut r = aws_lambda_events::apigw::ApiGatewayProxyResponse::default();
            r.status_code = status;
            // REST APIs merge both header fields; send each header once.
            r.multi_value_headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
        RequestOrigin::Alb => {
            let mut r = aws_lambda_events::alb::AlbTargetGroupResponse::default();
            r.status_code = status;
            r.status_description = Some(format!(
                "{} {}",
                status,
                parts.status.canonical_reason().unwrap_or_default()
            ));
            // The target group may use either field: fill both.
            r.headers = headers.clone();
            r.multi_value_headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
        // HTTP APIs (payload 2.0) and Function URLs.
        _ => {
            let mut r = aws_lambda_events::apigw::ApiGatewayV2httpResponse::default();
            r.status_code = status;
            r.headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
    };
    value.unwrap_or_else(
        |e| json!({"statusCode": 500, "body": format!("cannot serialise the response: {e}")}),
    )
}

async fn direct(app: Arc<App>, req: DirectRequest) -> Value {
    let bytes = match base64::engine::general_purpose::STANDARD.decode(req.image.trim()) {
        Ok(b) => b,
        Err(e) => {
            return error_body(
                "invalid_base64",
                &format!("\"image\" is not valid base64: {e}"),
            )
        }
    };
    let top_k = req.top_k.unwrap_or(app.config.top_k);
    let worker = app.clone();
    let result =
        tokio::task::spawn_blocking(move || worker.classifier.classify(&bytes, top_k)).await;
    match result {
        Ok(Ok(c)) => json!({
            "model": model_json(app.model_info()),
            "predictions": c.predictions,
            "timing_ms": c.timing_ms,
        }),
        Ok(Err(e)) => error_body(e.code(), &e.to_string()),
        Err(e) => error_body("internal", &format!("the classification task failed: {e}")),
    }
}

/// `{"name", "version", "sha256"}` of a model, as every reply carries it.
pub fn model_json(info: &ModelInfo) -> Value {
    json!({"name": info.name, "version": info.version, "sha256": info.sha256})
}

/// `{"error": {"code", "message"}}`.
pub fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

//! The Lambda door: the shared application state built once per container,
//! and the handler that decides what an incoming event is.
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
            cold: AtomicBool::new(true),
        })
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
    let response = match serde_json::from_value::<DirectRequest>(event) {
        Ok(req) => direct(app.clone(), req).await,
        Err(e) => error_body(
            "unsupported_event",
            &format!("the event is not a supported Lambda event nor a direct request {{\"image\": \"<base64>\", \"top_k\": 5}}: {e}"),
        ),
    };
    tracing::info!(
        request_id,
        cold_start,
        ok = response.get("error").is_none(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "invocation"
    );
    response
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

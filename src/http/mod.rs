//! The HTTP door: one router for every way a request arrives (API Gateway
//! REST and HTTP APIs, Function URLs, ALB, and the local `serve`), so the
//! responses are the same everywhere.
//!
//! Routes: `POST /predict`, `GET /health`, `GET /ready`, `GET /model`, and
//! the Open Inference Protocol (KServe V2) under `/v2` (see [`oip`]). Every
//! failure outside `/v2` is `{"error": {"code", "message"}}` with a stable
//! code; this module is the one place that maps errors to status codes.

pub mod oip;

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::classify::Classification;
use crate::error::ClassifyError;
use crate::inputs::{self, InputError as FetchError};
use crate::lambda::{model_json, App};

/// A request body, fully read (the doors enforce the size limit first).
pub type HttpRequest = Request<Bytes>;
/// A response body: JSON bytes.
pub type HttpResponse = Response<Vec<u8>>;

/// A failed request: status, stable code, and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An error with the given status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 413 for a body over `limit` bytes.
    pub fn payload_too_large(size: usize, limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is {size} bytes, more than the limit of {limit} bytes (MAX_REQUEST_BYTES; \
                 a synchronous Lambda payload is at most 6 MB, base64 adds a third): send large images \
                 by reference with {{\"s3_uri\": \"s3://bucket/key\"}}"
            ),
        )
    }

    /// The `{"error": {"code", "message"}}` response.
    pub fn into_response(self) -> HttpResponse {
        json_response(
            self.status,
            &json!({"error": {"code": self.code, "message": self.message}}),
        )
    }
}

impl From<ClassifyError> for ApiError {
    fn from(e: ClassifyError) -> ApiError {
        let status = match &e {
            ClassifyError::Input(crate::error::InputError::TooManyBytes { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ClassifyError::Input(_) => StatusCode::BAD_REQUEST,
            ClassifyError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> ApiError {
        let status = match &e {
            FetchError::NotAllowed { .. } | FetchError::AccessDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            FetchError::InvalidUri { .. } | FetchError::NotFound { .. } => StatusCode::BAD_REQUEST,
            FetchError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FetchError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Serialises `body` as a JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut r = Response::new(serde_json::to_vec(body).expect("a Value always serialises"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Routes one request. `app` is `None` while the model is still loading
/// (the local server listens before it is ready): then only `/health` and
/// the liveness routes answer 200.
pub async fn route(app: Option<Arc<App>>, req: HttpRequest) -> HttpResponse {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    if path == "/v2" || path.starts_with("/v2/") {
        return oip::route(app, req, &path).await;
    }
    let method = req.method().clone();
    let allowed: &[Method] = match path.as_str() {
        "/predict" => &[Method::POST],
        "/health" | "/ready" | "/model" => &[Method::GET, Method::HEAD],
        _ => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path}: try POST /predict, GET /health, /ready, /model, or /v2"),
            )
            .into_response()
        }
    };
    if !allowed.contains(&method) {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let mut r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} accepts {}, not {method}", names.join(", ")),
        )
        .into_response();
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_str(&names.join(", ")).expect("ascii"),
        );
        return r;
    }
    if path == "/health" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    let Some(app) = app else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the model is still loading; retry shortly (GET /ready says when)",
        )
        .into_response();
    };
    match path.as_str() {
        "/ready" => json_response(
            StatusCode::OK,
            &json!({"status": "ready", "model": model_json(app.model_info())}),
        ),
        "/model" => json_response(StatusCode::OK, &model_description(&app)),
        _ => match predict(app, req).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(e) => e.into_response(),
        },
    }
}

/// `GET /model`: what the model is and expects.
pub fn model_description(app: &App) -> Value {
    let model = app.classifier.model();
    let m = model.manifest();
    let info = model.info();
    json!({
        "name": info.name,
        "version": info.version,
        "sha256": info.sha256,
        "source": info.source,
        "inputs": [{"name": m.input.name.clone().unwrap_or_else(|| "input".into()), "datatype": "FP32",
                    "shape": oip::input_shape(app, -1), "layout": m.input.layout}],
        "outputs": [{"name": m.output.name.clone().unwrap_or_else(|| "output".into()), "datatype": "FP32",
                     "shape": [-1, model.classes()], "kind": m.output.kind}],
        "preprocessing": m.preprocessing,
        "labels": model.labels().len(),
        "limits": {"max_input_bytes": app.classifier.limits().max_bytes,
                   "max_image_pixels": app.classifier.limits().max_pixels,
                   "max_request_bytes": app.config.max_request_bytes,
                   "max_batch_images": app.config.max_batch_images},
    })
}

/// One image in a JSON request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ImageRef {
    /// Bare base64 string.
    Base64(String),
    /// `{"image": b64}` or `{"s3_uri": uri}`.
    Object {
        image: Option<String>,
        s3_uri: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictJson {
    image: Option<String>,
    s3_uri: Option<String>,
    images: Option<Vec<ImageRef>>,
    top_k: Option<usize>,
}

/// How the body of `POST /predict` is to be read.
enum BodyKind {
    Json,
    Image,
}

fn body_kind(req: &HttpRequest) -> Result<BodyKind, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ct.as_deref() {
        Some("application/json") => Ok(BodyKind::Json),
        Some(t) if t.ends_with("+json") => Ok(BodyKind::Json),
        Some(t) if t.starts_with("image/") || t == "application/octet-stream" => Ok(BodyKind::Image),
        // curl --data-binary sends form-urlencoded unless told otherwise; a
        // missing type is common too. Sniff: JSON starts with '{'.
        None | Some("application/x-www-form-urlencoded") | Some("") => {
            if req.body().iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                Ok(BodyKind::Json)
            } else {
                Ok(BodyKind::Image)
            }
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {other} is not accepted: send image bytes (image/* or application/octet-stream) \
                 or JSON (application/json)"
            ),
        )),
    }
}

fn query_top_k(req: &HttpRequest) -> Result<Option<usize>, ApiError> {
    let Some(q) = req.uri().query() else {
        return Ok(None);
    };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("top_k=") {
            return parse_top_k(v).map(Some);
        }
    }
    Ok(None)
}

fn parse_top_k(v: &str) -> Result<usize, ApiError> {
    crate::config::parse_top_k("top_k", v)
        .map_err(|e| ApiError::bad_request("invalid_top_k", e.to_string()))
}

fn decode_b64(field: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_base64",
                format!("{field} is not valid base64: {e}"),
            )
        })
}

/// `POST /predict`.
async fn predict(app: Arc<App>, req: HttpRequest) -> Result<Value, ApiError> {
    let limit = app.config.max_request_bytes;
    if req.body().len() > limit {
        return Err(ApiError::payload_too_large(req.body().len(), limit));
    }
    let mut top_k = query_top_k(&req)?.unwrap_or(app.config.top_k);
    match body_kind(&req)? {
        BodyKind::Image => {
            if req.body().is_empty() {
                return Err(ApiError::bad_request(
                    "empty_input",
                    "the request body is empty: POST the image bytes, or JSON {\"image\": \"<base64>\"}",
                ));
            }
            let bytes = req.into_body().to_vec();
            let mut results = classify(&app, vec![bytes], top_k).await?;
            single(&app, results.remove(0))
        }
        BodyKind::Json => {
            let body: PredictJson = serde_json::from_slice(req.body()).map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!(
                        "the body is not a valid request: {e}; expected {{\"image\": \"<base64>\"}}, \
                         {{\"s3_uri\": \"s3://bucket/key\"}} or {{\"images\": [...]}}, with optional \"top_k\""
                    ),
                )
            })?;
            if let Some(k) = body.top_k {
                top_k = parse_top_k(&k.to_string())?;
            }
            match (body.image, body.s3_uri, body.images) {
                (Some(b64), None, None) => {
                    let bytes = decode_b64("\"image\"", &b64)?;
                    let mut r = classify(&app, vec![bytes], top_k).await?;
                    single(&app, r.remove(0))
                }
                (None, Some(uri), None) => {
                    let bytes = inputs::fetch_s3(&app, &uri).await?;
                    let mut r = classify(&app, vec![bytes], top_k).await?;
                    single(&app, r.remove(0))
                }
                (None, None, Some(images)) => batch(&app, images, top_k).await,
                _ => Err(ApiError::bad_request(
                    "invalid_json",
                    "give exactly one of \"image\" (base64), \"s3_uri\" or \"images\" (a list)",
                )),
            }
        }
    }
}

fn single(app: &App, result: Result<Classification, ClassifyError>) -> Result<Value, ApiError> {
    let c = result?;
    Ok(
        json!({"model": model_json(app.model_info()), "predictions": c.predictions, "timing_ms": c.timing_ms}),
    )
}

async fn batch(app: &Arc<App>, images: Vec<ImageRef>, top_k: usize) -> Result<Value, ApiError> {
    let max = app.config.max_batch_images;
    if images.is_empty() || images.len() > max {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "\"images\" has {} entries; send 1 to {max} (MAX_BATCH_IMAGES)",
                images.len()
            ),
        ));
    }
    // Resolve every entry; a bad entry is an error result, not a failed batch.
    let mut resolved: Vec<Result<Vec<u8>, ApiError>> = Vec::with_capacity(images.len());
    for (i, img) in images.into_iter().enumerate() {
        resolved.push(match img {
            ImageRef::Base64(s)
            | ImageRef::Object {
                image: Some(s),
                s3_uri: None,
            } => decode_b64(&format!("images[{i}]"), &s),
            ImageRef::Object {
                image: None,
                s3_uri: Some(uri),
            } => inputs::fetch_s3(app, &uri).await.map_err(ApiError::from),
            ImageRef::Object { .. } => Err(ApiError::bad_request(
                "invalid_json",
                format!("images[{i}] needs exactly one of \"image\" or \"s3_uri\""),
            )),
        });
    }
    let ok: Vec<Vec<u8>> = resolved
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let mut classified = classify(app, ok, top_k).await?.into_iter();
    let results: Vec<Value> = resolved
        .into_iter()
        .map(
            |r| match r.map(|_| classified.next().expect("one result per image")) {
                Ok(Ok(c)) => json!({"predictions": c.predictions, "timing_ms": c.timing_ms}),
                Ok(Err(e)) => {
                    let e = ApiError::from(e);
                    json!({"error": {"code": e.code, "message": e.message}})
                }
                Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
            },
        )
        .collect();
    Ok(json!({"model": model_json(app.model_info()), "results": results}))
}

/// Classifies on the blocking pool (inference must not stall the reactor).
async fn classify(
    app: &Arc<App>,
    images: Vec<Vec<u8>>,
    top_k: usize,
) -> Result<Vec<Result<Classification, ClassifyError>>, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        app.classifier.classify_batch(&refs, top_k)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("classification task failed: {e}"),
        )
    })
}

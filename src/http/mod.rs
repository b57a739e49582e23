//! The HTTP protocol: one router for every way a request arrives (API
//! Gateway REST and HTTP APIs, Function URLs, ALB through `events`, and
//! the local `serve`), so the responses are the same everywhere.
//!
//! Routes: `POST /predict` (`predict`), `GET /health`, `GET /ready`,
//! `GET /model`, and the Open Inference Protocol (KServe V2) under `/v2`
//! (`oip`). Status codes are chosen in one place, `error`.

mod error;
pub(crate) mod events;
mod oip;
mod predict;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::app::App;
pub(crate) use error::{json_response, ApiError};
pub use error::{observe, ResponseCode};

/// A request body, fully read (the doors enforce the size limit first).
pub type HttpRequest = Request<Bytes>;
/// A response body: JSON bytes.
pub type HttpResponse = Response<Vec<u8>>;

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
    if let Some(refused) = refuse_route(&path, req.method()) {
        return refused;
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
            &json!({"status": "ready", "model": app.model_json()}),
        ),
        "/model" => json_response(StatusCode::OK, &app.describe()),
        _ => match predict::predict(app, req).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(e) => e.into_response(),
        },
    }
}

/// `GET /metrics` (Prometheus text format) for the long-running doors;
/// `None` for any other path. Lambda does not route it: there the same
/// counters leave as EMF lines, and one container's totals mean little.
pub fn metrics(app: Option<&App>, req: &HttpRequest) -> Option<HttpResponse> {
    if req.uri().path().trim_end_matches('/') != "/metrics" {
        return None;
    }
    let allowed = [Method::GET, Method::HEAD];
    if !allowed.contains(req.method()) {
        return Some(
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("/metrics accepts GET, HEAD, not {}", req.method()),
            )
            .into_response(),
        );
    }
    let Some(app) = app else {
        return Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the model is still loading; metrics start once it is in",
            )
            .into_response(),
        );
    };
    let mut r = Response::new(app.prometheus().into_bytes());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Some(r)
}

/// What the worker's `--metrics-addr` answers: `/metrics`, `/health`, and
/// 404 for the rest.
pub async fn metrics_only(app: Option<Arc<App>>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = metrics(app.as_deref(), &req) {
        return r;
    }
    match req.uri().path() {
        "/health" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        path => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}: the worker answers GET /metrics and /health"),
        )
        .into_response(),
    }
}

/// 404 for an unknown path, 405 (with `Allow`) for a method the path does
/// not accept; `None` when the route exists.
fn refuse_route(path: &str, method: &Method) -> Option<HttpResponse> {
    let allowed: &[Method] = match path {
        "/predict" => &[Method::POST],
        "/health" | "/ready" | "/model" => &[Method::GET, Method::HEAD],
        _ => return Some(not_found(path)),
    };
    if allowed.contains(method) {
        return None;
    }
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
    Some(r)
}

fn not_found(path: &str) -> HttpResponse {
    let hint = "try POST /predict, GET /health, /ready, /model, /metrics, or /v2";
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {path}: {hint}"),
    )
    .into_response()
}

//! `onnx-lambda serve`: the HTTP router on a local socket, so the endpoint a
//! user tries on a laptop answers exactly as the deployed Lambda does.
//!
//! The socket is bound before the model loads: `/health` answers at once,
//! `/ready` (and `/v2/health/ready`) say 503 until the model is in, which is
//! what load balancers and Kubernetes probes expect.
//!
//! What one client can cost is bounded, so memory does not grow with the
//! number of clients:
//! - connections: at most `MAX_CONNECTIONS` open; more wait in the backlog;
//! - time: headers within `HEADER_TIMEOUT_SECS` (else the connection is
//!   closed), the body within `BODY_TIMEOUT_SECS` (408), the whole request
//!   within `REQUEST_TIMEOUT_SECS` (503);
//! - work: inference requests are admitted up to one per thread plus
//!   `MAX_QUEUED_REQUESTS`; beyond that they get 503 with `Retry-After` at
//!   once, before their body is read. Admitted requests hold at most
//!   `MAX_REQUEST_BYTES` each, and [`App`] lets only one image per thread
//!   decode at once, so the bound is about `admitted x MAX_REQUEST_BYTES x 2`
//!   (body and decoded base64) plus `threads x` one decoded image;
//! - a panic while handling a request becomes a 500 with the JSON body.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::{App, AppCell};
use crate::config::{Config, Timeouts};
use crate::error::panic_message;
use crate::http::{route, ApiError, HttpRequest, HttpResponse};
use crate::model::ModelLoader;

/// What answers a request: [`route`] in production.
pub type Handler =
    Arc<dyn Fn(Option<Arc<App>>, HttpRequest) -> BoxFuture<'static, HttpResponse> + Send + Sync>;

/// The most of a refused body read (and dropped) so the client gets the 413.
const MAX_DRAIN_BYTES: usize = 32 << 20;

/// Seconds a client refused for load is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// The limits `serve` enforces, from [`Config`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `MAX_REQUEST_BYTES`.
    pub max_request_bytes: usize,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Inference requests admitted at once (threads + `MAX_QUEUED_REQUESTS`).
    pub admitted_requests: usize,
    /// The timeouts.
    pub timeouts: Timeouts,
}

impl ServeOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> ServeOptions {
        ServeOptions {
            max_request_bytes: config.max_request_bytes,
            max_connections: config.max_connections,
            admitted_requests: config.admitted_requests(),
            timeouts: config.timeouts,
        }
    }
}

/// `onnx-lambda serve`: binds `addr` (printing the address, so port 0 can
/// be used), loads the model while `/health` already answers, then serves
/// until `shutdown` resolves.
pub async fn run(
    addr: &str,
    config: Config,
    loader: &ModelLoader,
    s3: Option<aws_sdk_s3::Client>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    std::io::stdout().flush()?;
    tracing::info!(%local, "listening; loading the model");
    let app = AppCell::default();
    let options = ServeOptions::from_config(&config);
    let server = tokio::spawn(serve(listener, app.clone(), options, router(), shutdown));
    let loaded = App::init(config, loader, s3).await?;
    app.set(Arc::new(loaded));
    tracing::info!(%local, "ready");
    server.await.context("the server task failed")??;
    tracing::info!("shut down");
    Ok(())
}

/// The production handler: the HTTP router, plus `GET /metrics`.
pub fn router() -> Handler {
    Arc::new(
        |app, req| match crate::http::metrics(app.as_deref(), &req) {
            Some(metrics) => futures::future::ready(metrics).boxed(),
            None => route(app, req).boxed(),
        },
    )
}

/// The worker's handler: only `/metrics` and `/health`.
pub fn metrics_router() -> Handler {
    Arc::new(|app, req| crate::http::metrics_only(app, req).boxed())
}

/// State shared by every connection.
struct Shared {
    app: AppCell,
    handler: Handler,
    options: ServeOptions,
    /// Permits for inference requests in flight (admitted or queued).
    admitted: Arc<Semaphore>,
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves; connections in
/// flight finish their current request.
pub async fn serve(
    listener: TcpListener,
    app: AppCell,
    options: ServeOptions,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let shared = Arc::new(Shared {
        admitted: Arc::new(Semaphore::new(options.admitted_requests.max(1))),
        app,
        handler,
        options,
    });
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot before accepting: beyond the limit, clients
        // wait in the kernel's backlog instead of costing memory here.
        let slot = tokio::select! {
            slot = connections.clone().acquire_owned() => slot.expect("never closed"),
            _ = &mut shutdown => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let header_timeout = shared.options.timeouts.header;
            let service = service_fn(move |req| handle(shared.clone(), req, peer));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Whether a request runs the model (and so needs admission).
fn is_inference(method: &Method, path: &str) -> bool {
    method == Method::POST && (path.trim_end_matches('/') == "/predict" || path.starts_with("/v2/"))
}

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = match admit(&shared, &method, &path) {
        Err(refused) => refusal(refused),
        Ok(permit) => {
            let deadline = shared.options.timeouts.request;
            let answer = tokio::time::timeout(deadline, respond(&shared, req)).await;
            drop(permit);
            if shared.admitted.available_permits() == shared.options.admitted_requests.max(1) {
                crate::memory::release_when_idle();
            }
            answer.unwrap_or_else(|_| deadline_exceeded(deadline))
        }
    };
    crate::http::observe(shared.app.get().as_deref(), &response);
    tracing::info!(
        %peer,
        %method,
        path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    let (parts, body) = response.into_parts();
    Ok(hyper::Response::from_parts(
        parts,
        Full::new(Bytes::from(body)),
    ))
}

/// An inference request takes an admission permit, or is refused with 503
/// at once; other requests need none.
fn admit(
    shared: &Shared,
    method: &Method,
    path: &str,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    if !is_inference(method, path) {
        return Ok(None);
    }
    match shared.admitted.clone().try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the server is busy ({} inference requests in flight, MAX_QUEUED_REQUESTS); retry after {RETRY_AFTER_SECS} s",
                shared.options.admitted_requests
            ),
        )),
    }
}

/// Reads the body within its limits and routes the request, turning a panic
/// into a 500.
async fn respond(shared: &Shared, req: hyper::Request<Incoming>) -> HttpResponse {
    let (parts, body) = req.into_parts();
    let body = match read_body(&shared.options, &parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return refusal(refused),
    };
    let request = http::Request::from_parts(parts, body);
    let answer = (shared.handler)(shared.app.get(), request);
    std::panic::AssertUnwindSafe(answer)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            let message = panic_message(payload.as_ref());
            tracing::error!(%message, "a request handler panicked; the server goes on");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!(
                    "the request failed unexpectedly ({message}); this is a bug, please report it"
                ),
            )
            .into_response()
        })
}

/// The whole body, or the error refusing it: 413 past `MAX_REQUEST_BYTES`,
/// 408 past the body timeout.
///
/// A body a little over the limit (up to 4x, at most [`MAX_DRAIN_BYTES`]) is
/// read to its end and dropped before the 413, without keeping it: a client
/// still sending would otherwise see a reset connection instead of the
/// answer. A body declared larger than that is refused at once.
async fn read_body(
    options: &ServeOptions,
    headers: &http::HeaderMap,
    mut body: Incoming,
) -> Result<Bytes, ApiError> {
    let limit = options.max_request_bytes;
    let drain_cap = limit.saturating_mul(4).min(MAX_DRAIN_BYTES).max(limit);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > drain_cap) {
        return Err(ApiError::payload_too_large(n, limit));
    }
    let deadline = tokio::time::Instant::now() + options.timeouts.body;
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(body_timeout(options.timeouts.body)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    format!("the request body could not be read: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > drain_cap {
            return Err(ApiError::payload_too_large(total, limit));
        }
        if total <= limit {
            kept.extend_from_slice(&data);
        }
    }
    if total > limit {
        return Err(ApiError::payload_too_large(total, limit));
    }
    Ok(Bytes::from(kept))
}

fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} s (BODY_TIMEOUT_SECS): send it faster, or send \
             large images by reference with {{\"s3_uri\": \"s3://bucket/key\"}}",
            timeout.as_secs()
        ),
    )
}

fn deadline_exceeded(deadline: Duration) -> HttpResponse {
    refusal(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded",
        format!(
            "the request took longer than {} s (REQUEST_TIMEOUT_SECS); retry later, or send fewer images per request",
            deadline.as_secs()
        ),
    ))
}

/// The response for a request refused by the server's limits; a 503 says
/// when to try again.
fn refusal(e: ApiError) -> HttpResponse {
    let retry = e.status == StatusCode::SERVICE_UNAVAILABLE;
    let mut response = e.into_response();
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

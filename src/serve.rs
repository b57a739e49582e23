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
//! - bodies: read before any admission decision, so a slow upload costs a
//!   connection, not a place in the inference queue; the bytes of all
//!   bodies being read or held are bounded by [`body_budget`] (8 x
//!   `MAX_REQUEST_BYTES`): past it, reading waits, and the clients' TCP
//!   windows fill;
//! - work: an inference request, once its body is in, is admitted while
//!   the wait it can expect for a thread (requests ahead x the measured
//!   service time / threads, [`admission`]) is at most
//!   `ADMISSION_WAIT_SECS`, and fewer than one per thread plus
//!   `MAX_QUEUED_REQUESTS` are in flight; else 503 `overloaded` with
//!   `Retry-After` from the estimate, which the client reads whole since
//!   it has finished sending. [`App`] lets only one image per thread
//!   decode at once;
//! - a panic while handling a request becomes a 500 with the JSON body.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Seconds a client refused for time is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// Longest `Retry-After` an overloaded server asks for.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// The limits `serve` enforces, from [`Config`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `MAX_REQUEST_BYTES`.
    pub max_request_bytes: usize,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Inference requests admitted at once at most (threads +
    /// `MAX_QUEUED_REQUESTS`).
    pub admitted_requests: usize,
    /// `ADMISSION_WAIT_SECS`.
    pub admission_wait: Duration,
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
            admission_wait: config.admission_wait,
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
    /// Inference requests admitted and not yet answered.
    in_flight: AtomicUsize,
    /// One permit per body byte being read or held ([`body_budget`]).
    bodies: Arc<Semaphore>,
}

/// The bytes of request bodies `serve` reads or holds at once: eight
/// whole bodies of the largest size.
pub fn body_budget(options: &ServeOptions) -> usize {
    options
        .max_request_bytes
        .saturating_mul(8)
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize)
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
        in_flight: AtomicUsize::new(0),
        bodies: Arc::new(Semaphore::new(body_budget(&options).max(1))),
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
    let inference = is_inference(&method, &path);
    let deadline = shared.options.timeouts.request;
    let response = tokio::time::timeout(deadline, respond(&shared, req, inference))
        .await
        .unwrap_or_else(|_| deadline_exceeded(deadline));
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

/// Whether one more inference request may wait for a thread, given those
/// in flight (running or waiting), the threads, the most in flight, the
/// thread-time one request takes, and the longest wait to accept. The
/// refusal carries the wait the request would have had.
pub fn admission(
    in_flight: usize,
    threads: usize,
    max_in_flight: usize,
    service: Duration,
    budget: Duration,
) -> Result<(), Duration> {
    let threads = threads.max(1);
    // Requests that get a thread before this one does, itself included,
    // beyond those that start at once.
    let ahead = (in_flight + 1).saturating_sub(threads);
    let wait = service.mul_f64(ahead as f64 / threads as f64);
    if in_flight >= max_in_flight.max(1) || wait > budget {
        Err(wait)
    } else {
        Ok(())
    }
}

/// An admitted inference request: counted in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            crate::memory::release_when_idle();
        }
    }
}

/// Admits an inference request, or says how long it would have waited.
fn admit(shared: &Shared) -> Result<InFlight<'_>, (usize, Duration)> {
    let in_flight = shared.in_flight.fetch_add(1, Ordering::AcqRel);
    let admitted = InFlight(shared);
    // Before the model is in there is nothing to wait for: the router
    // answers 503 `not_ready` itself.
    let Some(app) = shared.app.get() else {
        return Ok(admitted);
    };
    let options = &shared.options;
    admission(
        in_flight,
        app.threads(),
        options.admitted_requests,
        app.service_time(),
        options.admission_wait,
    )
    .map(|()| admitted)
    .map_err(|wait| (in_flight, wait))
}

/// The 503 `overloaded` for a request that would have waited `wait`
/// behind `in_flight` others; `Retry-After` from the estimate.
fn overloaded(options: &ServeOptions, in_flight: usize, wait: Duration) -> HttpResponse {
    let retry = wait
        .as_secs_f64()
        .ceil()
        .clamp(1.0, MAX_RETRY_AFTER_SECS as f64) as u64;
    let refused = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "the server is busy: {in_flight} inference requests in flight, an expected wait of {:.1} s \
             (ADMISSION_WAIT_SECS={}, MAX_QUEUED_REQUESTS); retry after {retry} s",
            wait.as_secs_f64(),
            options.admission_wait.as_secs()
        ),
    );
    refusal_after(refused, retry)
}

/// Reads the body within its limits, admits an inference request, and
/// routes the request, turning a panic into a 500.
async fn respond(shared: &Shared, req: hyper::Request<Incoming>, inference: bool) -> HttpResponse {
    let (parts, body) = req.into_parts();
    let (body, _held) = match read_body(shared, &parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return refusal(refused),
    };
    let _admitted = match inference.then(|| admit(shared)).transpose() {
        Ok(admitted) => admitted,
        Err((in_flight, wait)) => return overloaded(&shared.options, in_flight, wait),
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

/// The whole body and the [`body_budget`] permits its memory holds, or the
/// error refusing it: 413 past `MAX_REQUEST_BYTES`, 408 past the body
/// timeout (waiting for budget included).
///
/// A body a little over the limit (up to 4x, at most [`MAX_DRAIN_BYTES`]) is
/// read to its end and dropped before the 413, without keeping it: a client
/// still sending would otherwise see a reset connection instead of the
/// answer. A body declared larger than that is refused at once.
async fn read_body(
    shared: &Shared,
    headers: &http::HeaderMap,
    mut body: Incoming,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), ApiError> {
    let options = &shared.options;
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
    // Memory grows with what arrives, not with what a header declares.
    let mut kept: Vec<u8> = Vec::new();
    let mut held = Vec::new();
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
            let needed = kept.len() + data.len();
            if needed > kept.capacity() {
                let grown = needed.max((2 * kept.capacity()).min(limit));
                let more = u32::try_from(grown - kept.capacity()).unwrap_or(u32::MAX);
                let permit = shared.bodies.clone().acquire_many_owned(more);
                match tokio::time::timeout_at(deadline, permit).await {
                    Ok(Ok(permit)) => held.push(permit),
                    _ => return Err(body_timeout(options.timeouts.body)),
                }
                kept.reserve_exact(grown - kept.len());
            }
            kept.extend_from_slice(&data);
        }
    }
    if total > limit {
        return Err(ApiError::payload_too_large(total, limit));
    }
    Ok((Bytes::from(kept), held))
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
    refusal_after(e, RETRY_AFTER_SECS)
}

/// [`refusal`], a 503 saying to retry after `secs`.
fn refusal_after(e: ApiError, secs: u64) -> HttpResponse {
    let retry = e.status == StatusCode::SERVICE_UNAVAILABLE;
    let mut response = e.into_response();
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_free_thread_means_no_wait() {
        assert_eq!(admission(0, 2, 10, 100 * MS, MS), Ok(()));
        assert_eq!(admission(1, 2, 10, 100 * MS, MS), Ok(()));
    }

    #[test]
    fn the_wait_is_the_requests_ahead_times_the_service_time_over_the_threads() {
        // Two running on two threads, two waiting: this one is the third
        // to wait, so three requests of 100 ms on two threads: 150 ms.
        assert_eq!(admission(4, 2, 100, 100 * MS, 150 * MS), Ok(()));
        assert_eq!(admission(4, 2, 100, 100 * MS, 149 * MS), Err(150 * MS));
        // Sixteen clients on two cores at 30 ms an image: 0.24 s, served.
        assert_eq!(admission(15, 2, 128, 30 * MS, 2000 * MS), Ok(()));
    }

    #[test]
    fn the_most_in_flight_caps_whatever_the_wait() {
        assert!(admission(3, 1, 3, Duration::ZERO, Duration::from_secs(2)).is_err());
        assert!(admission(2, 1, 3, Duration::ZERO, Duration::from_secs(2)).is_ok());
        // Before any work is measured, only the cap applies.
        assert!(admission(100, 2, 128, Duration::ZERO, MS).is_ok());
    }
}

//! `onnx-lambda serve`: the HTTP router on a local socket, so the endpoint a
//! user tries on a laptop answers exactly as the deployed Lambda does.
//!
//! The socket is bound before the model loads: `/health` answers at once,
//! `/ready` (and `/v2/health/ready`) say 503 until the model is in, which is
//! what load balancers and Kubernetes probes expect.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::{App, AppCell};
use crate::config::Config;
use crate::http::{route, ApiError};
use crate::model::ModelLoader;

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
    let server = tokio::spawn(serve(
        listener,
        app.clone(),
        config.max_request_bytes,
        shutdown,
    ));
    let loaded = App::init(config, loader, s3).await?;
    app.set(Arc::new(loaded));
    tracing::info!(%local, "ready");
    server.await.context("the server task failed")??;
    tracing::info!("shut down");
    Ok(())
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves; connections in
/// flight finish their current request.
pub async fn serve(
    listener: TcpListener,
    app: AppCell,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(app.clone(), req, max_request_bytes, peer));
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    app: AppCell,
    req: hyper::Request<Incoming>,
    limit: usize,
    peer: SocketAddr,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let response = match declared {
        Some(n) if n > limit => ApiError::payload_too_large(n, limit).into_response(),
        _ => match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                let req = http::Request::from_parts(parts.clone(), collected.to_bytes());
                route(app.get(), req).await
            }
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                ApiError::payload_too_large(limit + 1, limit).into_response()
            }
            Err(e) => ApiError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
            .into_response(),
        },
    };
    tracing::info!(
        %peer,
        method = %parts.method,
        path = parts.uri.path(),
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

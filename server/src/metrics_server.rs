//! `GET /metrics` on its own listener, OS thread and single-threaded runtime, so a scrape never competes
//! with inference for the serving runtime's workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::listener::{ConnLimits, Incoming};
use crate::metrics::Metrics;

/// Starts serving on an already bound listener; the thread ends when `stop` turns true. The listener
/// has the API listeners' connection limits and read deadlines (a scrape port is reachable too).
pub fn spawn(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    limits: ConnLimits,
    body_timeout: Option<Duration>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("keel-metrics".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let incoming = Incoming::spawn(listener, None, limits, stop.clone())?;
                crate::http::serve::serve(incoming, router(metrics), body_timeout, None, stop)
                    .await;
                Ok(())
            })
        })
}

fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { exposition(&metrics) }))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: metrics are at /metrics",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: GET /metrics",
            )
        })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

fn exposition(metrics: &Metrics) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], metrics.encode()).into_response()
}

/// Binds the metrics address (before anything else starts, so a taken port fails start-up).
pub fn bind(addr: SocketAddr) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

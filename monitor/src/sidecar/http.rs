//! The sidecar's HTTP side: Prometheus metrics, a health check for probes, and each monitored
//! version's current drift report as JSON.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::auth::BearerTokens;
use crate::monitor::Monitor;

#[derive(Clone)]
struct HttpState {
    monitor: Arc<Monitor>,
    registry: Registry,
    tokens: Option<BearerTokens>,
}

/// `GET /metrics` (the registry in Prometheus text format), `GET /healthz` (200 "ok") and
/// `GET /v1/drift/{model}/{version}` ([`DriftReport`](crate::DriftReport) JSON, 404 for a version
/// not monitored). With `tokens`, drift reports need `Authorization: Bearer <token>` (401 with a
/// JSON error otherwise); metrics and health stay open for scrapes and probes.
pub fn router(monitor: Arc<Monitor>, registry: Registry, tokens: Option<BearerTokens>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/drift/{model}/{version}", get(drift))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "error": "no such endpoint: see /metrics, /healthz or /v1/drift/{model}/{version}"
                })),
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({ "error": "method not allowed: use GET" })),
            )
        })
        .with_state(HttpState {
            monitor,
            registry,
            tokens,
        })
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut body = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        tracing::error!(%error, "encoding metrics failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
    }
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn drift(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    if let Some(tokens) = &state.tokens {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(failure) = tokens.check(presented) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                axum::Json(serde_json::json!({ "error": failure.message("monitor token") })),
            )
                .into_response();
        }
    }
    // A report computes every statistic of the version's window: on the blocking pool.
    let (monitor, name) = (state.monitor.clone(), model.clone());
    let report = match version.parse::<u64>() {
        Ok(v) => tokio::task::spawn_blocking(move || monitor.report(&name, v))
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    match report {
        Some(report) => axum::Json(report).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": format!("model {model:?} version {version:?} is not monitored")
            })),
        )
            .into_response(),
    }
}

//! The REST side: the same axum router shape, body reading, codec and headers as Keel's infer route.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Limited};
use keel_server::error::{Error, Result};
use keel_server::http::codec;

use super::response;

/// Keel's default `--max-body-bytes`.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub fn router() -> Router {
    Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .layer(DefaultBodyLimit::disable())
}

async fn infer(
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let model = path.get("model").cloned().unwrap_or_default();
    let json_len = codec::json_length(&headers)?;
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| Error::invalid(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let decoded = codec::decode_request(&body, json_len)?;
    let request = decoded.request;
    let rows = response::rows(&request);
    let answer = response::canned(model, request.id, rows, request.outputs.as_deref());
    Ok(codec::encode_response(&answer, &decoded.binary).into_response())
}

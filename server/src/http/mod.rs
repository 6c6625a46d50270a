//! The KServe V2 REST front end (with Triton's binary tensor and model configuration extensions).

pub mod body;
pub mod codec;
pub mod compression;
pub(crate) mod data_spans;
mod deadline;
mod edge;
pub mod json_data;
pub mod metadata;
mod raw;
pub mod serve;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::admin::{AdminAuth, ApiAuth};
use crate::error::{Error, Result};
use crate::infer::Infer;
use crate::metrics::Protocol;
use crate::monitoring::{self, Monitoring};
use crate::otel::{Operation, RequestSpan};
use crate::readiness::Readiness;
use crate::request_id;
pub use edge::Edge;

/// Bodies above this size are decoded on the blocking pool so a large JSON parse cannot stall the
/// runtime's workers.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct HttpState {
    pub infer: Infer,
    pub admin: AdminAuth,
    pub max_body_bytes: usize,
    /// In-flight request bytes (`--max-inflight-bytes`), shared with gRPC: bodies and decoded tensors.
    pub budget: crate::budget::Budget,
    /// Elements of all BYTES inputs of one request together (`--max-bytes-elements`).
    pub max_bytes_elements: usize,
    /// The API token; health endpoints do not ask for it.
    pub api: ApiAuth,
    /// False until the first load and when shutdown starts (so probes steer traffic away while requests
    /// drain), and, with strict readiness, while a model has no ready version.
    pub ready: Readiness,
    /// The most an API request (inference, feedback, metadata) may take; `None`: no limit.
    pub request_timeout: Option<std::time::Duration>,
    /// Feedback and drift reports; `None` with monitoring off.
    pub monitoring: Option<Arc<Monitoring>>,
    /// Trace spans of inference requests (`--otlp-endpoint`); off by default.
    pub tracer: crate::otel::Tracer,
}

/// Handlers share one state: axum clones it for every request, so it must cost one reference count.
type Shared = Arc<HttpState>;

pub fn router(state: HttpState) -> Edge {
    let state = Arc::new(state);
    // Health stays open for probes (Triton's "health" group); everything else needs the API token when
    // one is configured, except repository control, which checks the admin token itself.
    let open = Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        );
    let mut api = Router::new()
        .route("/v2", get(|| async { Json(metadata::server()) }))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/stats", get(statistics))
        .route("/v2/models/{model}/stats", get(statistics))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(statistics),
        )
        .route("/v2/models/{model}/feedback", post(feedback))
        .route(
            "/v2/models/{model}/versions/{version}/drift",
            get(drift_report),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer));
    if state.api.enabled() {
        api = api.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_token,
        ));
    }
    let request_timeout = state.request_timeout;
    let router = open
        .merge(api)
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(serde_json::json!({ "error": "method not allowed on this endpoint" })),
            )
        })
        .with_state(state.clone());
    // What applies to every request is done around the router, not as its layers (see edge.rs).
    Edge::new(router, request_timeout, state)
}

async fn require_api_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match api_refusal(&state, request.headers()) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

/// 401 when the API token is configured and the request does not carry it.
fn api_refusal(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    if !state.api.enabled() {
        return None;
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let e = state.api.check(header).err()?;
    let mut response = e.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `{model}` and the optional `{version}` of a model route (a struct, not a map: no hashing per request).
#[derive(serde::Deserialize, Default)]
struct ModelVersion {
    #[serde(default)]
    model: String,
    version: Option<String>,
}

type ModelPath = Path<ModelVersion>;

fn model_and_version(path: &ModelVersion) -> (&str, Option<&str>) {
    (path.model.as_str(), path.version.as_deref())
}

async fn server_ready(State(state): State<Shared>) -> StatusCode {
    if state.ready.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn model_metadata(State(state): State<Shared>, Path(path): ModelPath) -> Result<Response> {
    let (model, version) = model_and_version(&path);
    let served = state.infer.version(model, version)?;
    let versions = state.infer.ready_version_names(model)?;
    Ok(Json(metadata::model(versions, &served)).into_response())
}

async fn model_ready(State(state): State<Shared>, Path(path): ModelPath) -> Result<StatusCode> {
    let (model, version) = model_and_version(&path);
    match state.infer.version(model, version) {
        Ok(_) => Ok(StatusCode::OK),
        // Known but not ready: a bare 4xx, as the protocol asks of readiness endpoints.
        Err(Error::Unavailable(_)) => Ok(StatusCode::BAD_REQUEST),
        Err(e) => Err(e),
    }
}

async fn model_config(State(state): State<Shared>, Path(path): ModelPath) -> Result<Response> {
    let (model, version) = model_and_version(&path);
    let served = state.infer.version(model, version)?;
    Ok(Json(metadata::config(&served)).into_response())
}

/// The infer route as the router reaches it: paths it had to decode (see [`InferTarget`] for the
/// usual way in).
async fn infer(
    State(state): State<Shared>,
    Path(path): ModelPath,
    request: Request,
) -> Result<Response> {
    let (model, version) = model_and_version(&path);
    // The request taken whole: axum's `HeaderMap` extractor would clone the headers.
    let (parts, body) = request.into_parts();
    let read = EdgeRead {
        since: std::time::Instant::now(),
        coding: body::coding(&parts.headers)?,
        id: parts.headers.get(&request_id::HTTP_HEADER).cloned(),
    };
    infer_at(&state, model, version, parts.headers, body, read).await
}

/// What the edge read from an inference request's headers before its handler runs, so the handler does
/// not look them up again.
pub(crate) struct EdgeRead {
    /// When the request's headers arrived.
    pub since: std::time::Instant,
    /// The body's coding (one Keel cannot read was answered with 415).
    pub coding: Option<compression::Coding>,
    /// The client's `x-request-id` header.
    pub id: Option<HeaderValue>,
}

/// `POST /v2/models/{model}[/versions/{version}]/infer`, read from the path by the edge so the busiest
/// route skips the router (matching, a map of path parameters, a boxed service and future per
/// request). Kept as byte ranges: the edge reads the path once and the handler takes the names from
/// the request it moved.
#[derive(Clone, Debug)]
pub(crate) struct InferTarget {
    model: std::ops::Range<usize>,
    version: Option<std::ops::Range<usize>>,
}

impl InferTarget {
    /// `None` for every other path, and for segments that are empty or percent-encoded: those go
    /// through the router, which decodes them or answers 404 as for any other path.
    pub(crate) fn parse(path: &str) -> Option<Self> {
        // Byte tests, not substring searches: this runs on every request.
        let rest = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
        let plain = |s: &str| !s.is_empty() && !s.bytes().any(|b| b == b'/' || b == b'%');
        let (model, version) = match rest.bytes().position(|b| b == b'/') {
            Some(i) => (&rest[..i], Some(rest[i + 1..].strip_prefix("versions/")?)),
            None => (rest, None),
        };
        if !plain(model) || !version.is_none_or(plain) {
            return None;
        }
        // Where each name lies in `path` (both are slices of it).
        let range = |s: &str| {
            let start = s.as_ptr() as usize - path.as_ptr() as usize;
            start..start + s.len()
        };
        Some(InferTarget {
            model: range(model),
            version: version.map(range),
        })
    }

    /// The model and version names in `path`, the path this was parsed from.
    pub(crate) fn of<'p>(&self, path: &'p str) -> (&'p str, Option<&'p str>) {
        (
            &path[self.model.clone()],
            self.version.as_ref().map(|v| &path[v.clone()]),
        )
    }
}

/// The infer route reached from the edge: the token check the router's API layer would make, then the
/// route's work. The caller has checked the method and parsed `target` from this request's path.
pub(crate) async fn infer_direct(
    state: &Shared,
    request: Request,
    target: InferTarget,
    read: EdgeRead,
) -> Response {
    if let Some(refused) = api_refusal(state, request.headers()) {
        return refused;
    }
    let (parts, body) = request.into_parts();
    let (model, version) = target.of(parts.uri.path());
    infer_at(state, model, version, parts.headers, body, read)
        .await
        .into_response()
}

/// An inference request, in its trace span when it is sampled (`traceparent`, `--otlp-*`).
async fn infer_at(
    state: &Shared,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
    read: EdgeRead,
) -> Result<Response> {
    let Some(start) = state.tracer.sample_headers(&headers) else {
        return infer_request(state, model, version, headers, body, read, None).await;
    };
    let operation = Operation::HttpInfer {
        versioned: version.is_some(),
    };
    let mut span = state.tracer.span(start, operation);
    let result = infer_request(state, model, version, headers, body, read, span.as_mut()).await;
    if let Some(span) = &mut span {
        span.answered(result.as_ref().err());
    }
    result
}

async fn infer_request(
    state: &Shared,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
    read: EdgeRead,
    mut span: Option<&mut RequestSpan>,
) -> Result<Response> {
    let EdgeRead { since, coding, id } = read;
    if let Some(span) = span.as_deref_mut() {
        span.model(model);
    }
    let served = state.infer.version(model, version)?;
    if let Some(span) = span.as_deref_mut() {
        span.version(served.version);
    }
    // A refused request's time counts from its headers' arrival (`since`).
    let refused = |e: Error, served: &crate::repository::ServedVersion| {
        crate::infer::count_refused(served, Protocol::Http, &e, since);
        e
    };
    let json_len = codec::json_length(&headers).map_err(|e| refused(e, &served))?;
    // The body's bytes are held from the in-flight budget while it is read (429 when spent), then the
    // decoded tensors' bytes, checked against the signature before they are built.
    let (body, mut permit) =
        body::read_coded_body(coding, &headers, body, state.max_body_bytes, &state.budget)
            .await
            .map_err(|e| refused(e, &served))?;
    let max_bytes_elements = state.max_bytes_elements;
    let decode = move |body: bytes::Bytes, permit: &mut crate::budget::Permit| {
        let limits = codec::DecodeLimits {
            signature: Some(&served.signature),
            max_bytes_elements,
        };
        let decoded = codec::decode_request_with(&body, json_len, limits, Some(&mut *permit));
        drop(body);
        (decoded, served)
    };
    let (decoded, served) = if body.len() > INLINE_DECODE_BYTES {
        let (result, permit_back) = tokio::task::spawn_blocking(move || {
            let result = decode(body, &mut permit);
            (result, permit)
        })
        .await
        .map_err(|e| Error::Internal(format!("decoding task failed: {e}")))?;
        permit = permit_back;
        result
    } else {
        decode(body, &mut permit)
    };
    let decoded = decoded.map_err(|e| refused(e, &served))?;
    // The body is gone; the tensors stay until the answer.
    permit.shrink_to(decoded.tensor_bytes);
    let mut request = decoded.request;
    let header_id = id.as_ref().and_then(|v| v.to_str().ok());
    request.id = Some(request_id::resolve(request.id.take(), header_id)?);
    let response = served.infer_traced(request, Protocol::Http, span).await?;
    let mut reply = codec::encode_response(&response, &decoded.binary).into_response();
    if let Some(id) = response
        .id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        reply.headers_mut().insert(request_id::HTTP_HEADER, id);
    }
    drop(permit);
    Ok(reply)
}

/// JSON, or JSON followed by binary outputs with Triton's header saying where the JSON ends.
impl IntoResponse for codec::EncodedResponse {
    fn into_response(self) -> Response {
        let mut reply = Response::new(Body::from(self.body));
        let h = reply.headers_mut();
        match self.json_len {
            Some(n) => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(codec::HEADER_LENGTH, HeaderValue::from(n));
            }
            None => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
        }
        reply
    }
}

async fn statistics(State(state): State<Shared>, Path(path): ModelPath) -> Result<Response> {
    let model = (!path.model.is_empty()).then_some(path.model.as_str());
    let stats = state.infer.statistics(model, path.version.as_deref())?;
    Ok(Json(serde_json::json!({ "model_stats": stats })).into_response())
}

/// Admin endpoints read little: a body larger than this is refused.
const ADMIN_BODY_BYTES: usize = 64 * 1024;

fn authorize(state: &Shared, headers: &HeaderMap) -> Result<()> {
    state.admin.check(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

#[derive(serde::Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    authorize(&state, &headers)?;
    let (body, _held) = body::read_body(&headers, body, ADMIN_BODY_BYTES, &state.budget).await?;
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("malformed index request: {e}")))?
    };
    Ok(Json(state.infer.repository().index(request.ready)).into_response())
}

async fn repository_load(
    State(state): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    authorize(&state, &headers)?;
    state.infer.repository().load_model(&model).await?;
    Ok(StatusCode::OK)
}

async fn repository_unload(
    State(state): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    authorize(&state, &headers)?;
    state.infer.repository().unload_model(&model).await?;
    Ok(StatusCode::OK)
}

fn monitoring(state: &Shared) -> Result<&Arc<Monitoring>> {
    state.monitoring.as_ref().ok_or_else(|| {
        Error::NotFound("monitoring is off: start keel serve without --monitor off".into())
    })
}

/// Ground truth for logged predictions; joined with them by request id and row.
async fn feedback(
    State(state): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let monitoring = monitoring(&state)?.clone();
    state.infer.repository().model(&model)?;
    let (body, _permit) =
        body::read_body(&headers, body, state.max_body_bytes, &state.budget).await?;
    // Precise: a feedback is never stamped before the (coarse) time of the prediction it follows.
    let now = crate::clock::unix_ms_precise();
    // A large post (up to 100,000 items) is parsed and joined under the monitor's lock on the
    // blocking pool, not on an async worker.
    let reply = if body.len() > INLINE_DECODE_BYTES {
        tokio::task::spawn_blocking(move || {
            monitoring::feedback::parse(&model, &body, now).map(|items| monitoring.feedback(items))
        })
        .await
        .map_err(|e| Error::Internal(format!("feedback task failed: {e}")))??
    } else {
        monitoring.feedback(monitoring::feedback::parse(&model, &body, now)?)
    };
    Ok(Json(reply).into_response())
}

/// The embedded monitor's current window for one version: PSI, CSI, feedback metrics, alert states.
async fn drift_report(State(state): State<Shared>, Path(path): ModelPath) -> Result<Response> {
    let (model, version) = model_and_version(&path);
    let version = crate::infer::parse_version(version.unwrap_or_default())?;
    let monitor = monitoring(&state)?
        .monitor()
        .ok_or_else(|| {
            Error::NotFound(
                "drift is measured by the monitor sidecar; ask it (GET /v1/drift/...)".into(),
            )
        })?
        .clone();
    // A report computes every statistic of the version's window: on the blocking pool.
    let name = model.to_owned();
    let report = tokio::task::spawn_blocking(move || monitor.report(&name, version))
        .await
        .map_err(|e| Error::Internal(format!("drift report task failed: {e}")))?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "model '{model}' version {version} is not monitored"
            ))
        })?;
    Ok(Json(report).into_response())
}

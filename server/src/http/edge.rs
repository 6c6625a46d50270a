//! What every HTTP request goes through around the router, in one service: 415 for a body coding Keel
//! cannot read, the request deadline (`--request-timeout`) for API routes, a JSON body for every error,
//! the client's `x-request-id` echoed, and the response compressed when the client asks.
//!
//! These were router layers. axum wraps every route in every layer, and a routed request clones each
//! layer's boxed inner service and boxes a future per layer: about 5 µs per request (a fifth of Keel's
//! CPU per request at 32 connections, measured with the layers and without). Here they cost a few
//! header lookups and, with a deadline, the connection's timer (deadline.rs). Inference requests skip the router too: their path
//! is read here and their handler called directly.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tower::{Layer, ServiceExt};

use tokio::time::Instant;

use super::deadline::{self, ConnTimer, Elapsed};
use super::{InferTarget, Shared, codec, compression};
use crate::error::Error;
use crate::request_id;

#[derive(Clone)]
pub struct Edge {
    /// The infer handler enforces its own, configurable limit with a JSON error: axum's default
    /// limit for body extractors is off.
    router: <DefaultBodyLimit as Layer<Router>>::Service,
    /// The most an API request (inference, feedback, metadata) may take; `None`: no limit.
    request_timeout: Option<Duration>,
    /// For inference requests, which go to their handler without the router ([`InferTarget`]).
    state: Shared,
}

impl Edge {
    pub fn new(router: Router, request_timeout: Option<Duration>, state: Shared) -> Self {
        Edge {
            router: DefaultBodyLimit::disable().layer(router),
            request_timeout,
            state,
        }
    }

    /// Answers one request, whose headers were read at `arrived`.
    pub async fn call(self, request: Request, timer: ConnTimer, arrived: Instant) -> Response {
        // Before anything reads the body.
        let coding = match compression::request_coding(request.headers()) {
            Ok(coding) => coding,
            Err(coding) => return compression::unsupported(&coding),
        };
        let wanted = compression::response_coding(request.headers());
        // A refusal carries it back too, so a client can match it to its request.
        let id = request.headers().get(&request_id::HTTP_HEADER).cloned();
        // The path is read once: an inference request is no health or control request, and its
        // handler takes the model and version from where this found them.
        let infer = (request.method() == Method::POST)
            .then(|| InferTarget::parse(request.uri().path()))
            .flatten();
        let deadline = self
            .request_timeout
            .filter(|_| infer.is_some() || !health_or_control(request.uri().path()));
        // Pinned where it is made: the handler's future is kilobytes (the request's decoding and
        // inference states), and passing it to the deadline by value copied it twice per request.
        let client_id = id.clone();
        let mut routed = std::pin::pin!(async move {
            if let Some(target) = infer {
                let read = super::EdgeRead {
                    since: arrived.into_std(),
                    coding,
                    id: client_id,
                };
                return Ok(super::infer_direct(&self.state, request, target, read).await);
            }
            self.router.oneshot(request).await
        });
        let response = match deadline {
            None => routed.await,
            Some(limit) => match deadline::limit(&timer, routed.as_mut(), arrived + limit).await {
                Ok(response) => response,
                Err(Elapsed) => Ok(Error::Timeout(format!(
                    "the request took longer than {} s (--request-timeout)",
                    limit.as_secs_f64()
                ))
                .into_response()),
            },
        };
        let response: Response = match response {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // axum's own rejections (a path that is not UTF-8, say) are plain text: every error is JSON.
        let mut response = codec::json_error_body(response).await;
        // A successful inference sets the id it used itself.
        if let Some(id) = id {
            response
                .headers_mut()
                .entry(request_id::HTTP_HEADER)
                .or_insert(id);
        }
        compression::compress_response(response, wanted).await
    }
}

/// Health and repository control: no deadline. Health answers at once, and cancelling a model load
/// half-way helps nobody. The paths of `super::router`'s open routes.
fn health_or_control(path: &str) -> bool {
    let mut segments = path.strip_prefix("/v2/").unwrap_or_default().split('/');
    match (segments.next(), segments.next()) {
        (Some("health"), Some("live" | "ready")) => segments.next().is_none(),
        (Some("repository"), Some("index")) => segments.next().is_none(),
        (Some("repository"), Some("models")) => {
            matches!(
                (segments.next(), segments.next(), segments.next()),
                (Some(_), Some("load" | "unload"), None)
            )
        }
        (Some("models"), Some(_)) => matches!(
            (
                segments.next(),
                segments.next(),
                segments.next(),
                segments.next()
            ),
            (Some("ready"), None, None, None) | (Some("versions"), Some(_), Some("ready"), None)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::health_or_control;
    use crate::http::InferTarget;

    fn infer_target(path: &str) -> Option<(&str, Option<&str>)> {
        InferTarget::parse(path).map(|target| target.of(path))
    }

    #[test]
    fn inference_paths_skip_the_router_only_when_nothing_needs_decoding() {
        assert_eq!(infer_target("/v2/models/m/infer"), Some(("m", None)));
        assert_eq!(
            infer_target("/v2/models/m/versions/2/infer"),
            Some(("m", Some("2")))
        );
        assert_eq!(
            infer_target("/v2/models/breast-cancer/versions/12/infer"),
            Some(("breast-cancer", Some("12")))
        );
        assert_eq!(
            infer_target("/v2/models/versions/infer"),
            Some(("versions", None))
        );
        for routed in [
            "/v2/models//infer",
            "/v2/models/m/versions//infer",
            "/v2/models/m%2Dx/infer",
            "/v2/models/m/versions/%32/infer",
            "/v2/models/m/x/infer",
            "/v2/models/m/versions/2/x/infer",
            "/v2/models/m/infer/",
            "/v2/models/m",
            "/v2/models/infer",
            "/v2/model/m/infer",
        ] {
            assert_eq!(infer_target(routed), None, "{routed}");
        }
    }

    #[test]
    fn health_and_control_paths_are_told_from_api_paths() {
        for open in [
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/m/ready",
            "/v2/models/m/versions/2/ready",
            "/v2/repository/index",
            "/v2/repository/models/m/load",
            "/v2/repository/models/m/unload",
        ] {
            assert!(health_or_control(open), "{open}");
        }
        for api in [
            "/v2",
            "/v2/models/ready",
            "/v2/models/m",
            "/v2/models/m/infer",
            "/v2/models/m/versions/2/infer",
            "/v2/models/m/ready/infer",
            "/v2/models/stats",
            "/v2/health/live/x",
            "/v2/repository/models/m/load/x",
            "/health/live",
        ] {
            assert!(!health_or_control(api), "{api}");
        }
    }
}

//! The API token on gRPC: one layer in front of every RPC, so an RPC added later is guarded by default.
//! Health RPCs stay open for probes, as the HTTP health endpoints do; repository control checks the
//! separate admin token in its handlers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{Request, Response};

use crate::admin::ApiAuth;

const SERVICE: &str = "/inference.GRPCInferenceService/";
const OPEN: [&str; 3] = ["ServerLive", "ServerReady", "ModelReady"];
const ADMIN: [&str; 3] = [
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
];

#[derive(Clone)]
pub struct ApiTokenLayer {
    auth: ApiAuth,
}

impl ApiTokenLayer {
    pub fn new(auth: ApiAuth) -> Self {
        ApiTokenLayer { auth }
    }
}

impl<S> tower::Layer<S> for ApiTokenLayer {
    type Service = ApiToken<S>;

    fn layer(&self, inner: S) -> ApiToken<S> {
        ApiToken {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiToken<S> {
    inner: S,
    auth: ApiAuth,
}

fn needs_api_token(path: &str) -> bool {
    match path.strip_prefix(SERVICE) {
        Some(method) => !OPEN.contains(&method) && !ADMIN.contains(&method),
        // Any other service (none today) is guarded.
        None => true,
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ApiToken<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    // Boxed: the layer is only installed when an API token is configured.
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if needs_api_token(request.uri().path()) {
            let header = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if let Err(e) = self.auth.check(header) {
                let status: tonic::Status = e.into();
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_rpcs_need_the_token() {
        for open in ["ServerLive", "ServerReady", "ModelReady"] {
            assert!(!needs_api_token(&format!("{SERVICE}{open}")));
        }
        for guarded in [
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelStreamInfer",
            "ModelConfig",
            "ModelStatistics",
        ] {
            assert!(needs_api_token(&format!("{SERVICE}{guarded}")));
        }
        assert!(needs_api_token("/grpc.health.v1.Health/Check"));
        assert!(needs_api_token(
            "/inference.GRPCInferenceService/ServerLiveX"
        ));
    }
}

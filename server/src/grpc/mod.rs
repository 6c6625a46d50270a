//! The gRPC front end: `inference.GRPCInferenceService` (KServe V2 with Triton's extensions), served from
//! the same process and the same core as HTTP.

pub mod auth;
pub mod convert;
pub mod deadline;
pub mod serve;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::AdminAuth;
use crate::error::Error;
use crate::http::metadata::EXTENSIONS;
use crate::infer::{Infer, InferResponse};
use crate::metrics::Protocol;
use crate::readiness::Readiness;
use crate::request_id;

pub use crate::protocol::inference as pb;

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Requests of one ModelStreamInfer stream that may run at once; more wait, which pushes back on the client.
const STREAM_CONCURRENCY: usize = 64;

/// What every gRPC call needs, behind one `Arc`: each call clones the state a few times (tonic's service,
/// the codec, the handler), and one shared count per clone is cheaper than one per field.
#[derive(Clone)]
pub struct GrpcState(Arc<GrpcShared>);

impl GrpcState {
    pub fn new(shared: GrpcShared) -> Self {
        GrpcState(Arc::new(shared))
    }
}

impl std::ops::Deref for GrpcState {
    type Target = GrpcShared;

    fn deref(&self) -> &GrpcShared {
        &self.0
    }
}

pub struct GrpcShared {
    pub infer: Infer,
    pub admin: AdminAuth,
    pub ready: Readiness,
    /// Turns true when shutdown starts: open ModelStreamInfer streams take no more requests and end
    /// once their requests are answered, so an idle stream cannot hold shutdown up.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// In-flight request bytes (`--max-inflight-bytes`), shared with HTTP.
    pub budget: crate::budget::Budget,
    /// Elements of all BYTES inputs of one request together (`--max-bytes-elements`).
    pub max_bytes_elements: usize,
    /// Trace spans of inference requests (`--otlp-endpoint`); off by default.
    pub tracer: crate::otel::Tracer,
}

/// The tonic service with gzip and deflate both ways (what tritonclient.grpc's `compression_algorithm`
/// sends; a response is compressed only when its request was, see `convert::guard`) and the configured
/// message size limit. ModelInfer and ModelStreamInfer are served by
/// `convert::guard::grpc`, with the same codings.
pub fn service(
    state: GrpcState,
    max_message_bytes: usize,
) -> GrpcInferenceServiceServer<GrpcState> {
    GrpcInferenceServiceServer::new(state)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

/// tonic reports a message over the size limit as OUT_OF_RANGE; gRPC's C++, Go and Python servers, and so
/// Triton's users, expect RESOURCE_EXHAUSTED. Keel itself never returns OUT_OF_RANGE, so every such status
/// in response headers is tonic's size check.
pub fn canonical_size_status<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|v| v == "11") {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    response
}

fn version_arg(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

impl GrpcState {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        Ok(self.admin.check(header)?)
    }

    /// `header_id`: the call's `x-request-id` metadata, used when the request has no `id`. The request
    /// holds its bytes from the in-flight budget until it is answered.
    async fn infer_one(
        &self,
        request: convert::guard::Decoded,
        header_id: Option<&str>,
        mut span: Option<&mut crate::otel::RequestSpan>,
    ) -> Result<InferResponse, Error> {
        use convert::guard::Decoded;
        if let Some(span) = span.as_deref_mut() {
            match &request {
                Decoded::Admitted { message, .. } | Decoded::Plain(message) => {
                    span.model(&message.model_name)
                }
                Decoded::Converted { served, .. } => span.model(&served.model),
                Decoded::Refused(_) => {}
            }
        }
        let (request, served, mut permit) = match request {
            Decoded::Refused(e) => return Err(e),
            Decoded::Admitted {
                message,
                served,
                permit,
            } => (convert::infer_request(message), served, permit),
            Decoded::Converted {
                request,
                served,
                permit,
            } => (Ok(request), served, permit),
            Decoded::Plain(message) => {
                // Decoded without the wire check: the same checks, after the fact.
                use prost::Message;
                let served = self
                    .infer
                    .version(&message.model_name, version_arg(&message.model_version))?;
                let since = std::time::Instant::now();
                let checked = self
                    .budget
                    .acquire(message.encoded_len())
                    .and_then(|mut permit| {
                        let estimate = convert::wire::check_decoded(
                            &message,
                            convert::wire::WireLimits {
                                signature: Some(&served.signature),
                                max_bytes_elements: self.max_bytes_elements,
                            },
                        )?;
                        permit.grow(estimate.tensor_bytes)?;
                        Ok(permit)
                    });
                let permit = checked.inspect_err(|e| {
                    crate::infer::count_refused(&served, Protocol::Grpc, e, since)
                })?;
                (convert::infer_request(message), served, permit)
            }
        };
        if let Some(span) = span.as_deref_mut() {
            span.version(served.version);
        }
        let mut decoded = request?;
        // The message is gone; the tensors stay until the answer.
        permit.shrink_to(
            decoded
                .inputs
                .iter()
                .map(|t| t.data.heap_bytes())
                .sum::<usize>(),
        );
        decoded.id = Some(request_id::resolve(decoded.id.take(), header_id)?);
        let response = served.infer_traced(decoded, Protocol::Grpc, span).await?;
        drop(permit);
        Ok(response)
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcState {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.ready.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = match self.infer.version(&r.name, version_arg(&r.version)) {
            Ok(_) => true,
            // Like tritonclient's HTTP client, which reads any non-200 as "not ready".
            Err(Error::Unavailable(_) | Error::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "keel".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let served = self.infer.version(&r.name, version_arg(&r.version))?;
        let versions = self.infer.ready_version_names(&r.name)?;
        Ok(Response::new(convert::model_metadata(versions, &served)))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        convert::guard::model_infer(self, request.map(convert::guard::Decoded::Plain)).await
    }

    type ModelStreamInferStream = ResponseStream;

    /// Each request is answered on the stream in its own response; a bad request gets an `error_message`
    /// and the stream carries on (see [`convert::guard::stream_infer`]).
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let trace = self
            .tracer
            .enabled()
            .then(|| crate::otel::Incoming::from_headers(request.metadata().as_ref()));
        let incoming = request
            .into_inner()
            .map(|message| message.map(convert::guard::Decoded::Plain));
        Ok(Response::new(convert::guard::stream_infer(
            self.clone(),
            incoming,
            trace,
        )))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let served = self.infer.version(&r.name, version_arg(&r.version))?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(convert::model_config(&served)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let stats = self
            .infer
            .statistics(version_arg(&r.name), version_arg(&r.version))?;
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: stats.into_iter().map(convert::statistics).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        self.authorize(&request)?;
        let rows = self.infer.repository().index(request.into_inner().ready);
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: rows.into_iter().map(convert::index_entry).collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.authorize(&request)?;
        self.infer
            .repository()
            .load_model(&request.into_inner().model_name)
            .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.authorize(&request)?;
        self.infer
            .repository()
            .unload_model(&request.into_inner().model_name)
            .await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

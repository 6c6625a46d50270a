//! The gRPC front end: `inference.GRPCInferenceService` (KServe V2 with Triton's extensions), served from
//! the same process and the same core as HTTP.

pub mod auth;
pub mod convert;

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::AdminAuth;
use crate::error::Error;
use crate::http::metadata::EXTENSIONS;
use crate::infer::Infer;
use crate::metrics::Protocol;
use crate::readiness::Readiness;
use crate::request_id;

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Requests of one ModelStreamInfer stream that may run at once; more wait, which pushes back on the client.
const STREAM_CONCURRENCY: usize = 64;

#[derive(Clone)]
pub struct GrpcState {
    pub infer: Infer,
    pub admin: AdminAuth,
    pub ready: Readiness,
}

/// The tonic service with gzip both ways and the configured message size limit.
pub fn service(
    state: GrpcState,
    max_message_bytes: usize,
) -> GrpcInferenceServiceServer<GrpcState> {
    GrpcInferenceServiceServer::new(state)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
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

    /// `header_id`: the call's `x-request-id` metadata, used when the request has no `id`.
    async fn infer_one(
        &self,
        request: pb::ModelInferRequest,
        header_id: Option<&str>,
    ) -> Result<pb::ModelInferResponse, Error> {
        let served = self
            .infer
            .version(&request.model_name, version_arg(&request.model_version))?;
        let mut decoded = convert::infer_request(request)?;
        decoded.id = Some(request_id::resolve(decoded.id.take(), header_id)?);
        Ok(convert::infer_response(
            served.infer(decoded, Protocol::Grpc).await?,
        ))
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
        let header_id = request
            .metadata()
            .get(request_id::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let reply = self
            .infer_one(request.into_inner(), header_id.as_deref())
            .await?;
        let mut response = Response::new(reply);
        if let Ok(id) = response.get_ref().id.parse() {
            response.metadata_mut().insert(request_id::HEADER, id);
        }
        Ok(response)
    }

    type ModelStreamInferStream = ResponseStream;

    /// Each request is answered on the stream in its own response; a bad request gets an `error_message`
    /// and the stream carries on.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_CONCURRENCY);
        let state = self.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(STREAM_CONCURRENCY));
            while let Some(message) = incoming.next().await {
                let request = match message {
                    Ok(r) => r,
                    // An unreadable or oversized message ends the stream with its status.
                    Err(status) => {
                        let status = match status.code() {
                            tonic::Code::OutOfRange => Status::resource_exhausted(status.message()),
                            _ => status,
                        };
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (state, tx) = (state.clone(), tx.clone());
                tokio::spawn(async move {
                    let reply = match state.infer_one(request, None).await {
                        Ok(response) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(e) => pb::ModelStreamInferResponse {
                            error_message: e.to_string(),
                            infer_response: None,
                        },
                    };
                    let _ = tx.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

//! The gRPC side: only ModelInfer is served, through Keel's own message conversions.

use keel_server::grpc::convert;
use keel_server::grpc::pb;
use keel_server::grpc::pb::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use super::response;

/// Keel's default `--grpc-max-message-bytes`.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct Canned;

/// Configured like Keel's service (gzip both ways, same size limits), so the comparison is fair.
pub fn service() -> GrpcInferenceServiceServer<Canned> {
    GrpcInferenceServiceServer::new(Canned)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

type Answer<T> = Result<Response<T>, Status>;

fn unimplemented<T>() -> Answer<T> {
    Err(Status::unimplemented("keel-canned serves ModelInfer only"))
}

#[tonic::async_trait]
impl GrpcInferenceService for Canned {
    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Answer<pb::ModelInferResponse> {
        let request = request.into_inner();
        let model = request.model_name.clone();
        // Decoded like Keel decodes it, so a malformed request fails here as it would there.
        let decoded = convert::infer_request(request)?;
        let rows = response::rows(&decoded);
        let answer = response::canned(model, decoded.id, rows, decoded.outputs.as_deref());
        Ok(Response::new(convert::infer_response(answer)))
    }

    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Answer<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Answer<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Answer<pb::ModelReadyResponse> {
        unimplemented()
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Answer<pb::ServerMetadataResponse> {
        unimplemented()
    }

    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Answer<pb::ModelMetadataResponse> {
        unimplemented()
    }

    type ModelStreamInferStream = tokio_stream::Empty<Result<pb::ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        _: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        unimplemented()
    }

    async fn model_config(
        &self,
        _: Request<pb::ModelConfigRequest>,
    ) -> Answer<pb::ModelConfigResponse> {
        unimplemented()
    }

    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Answer<pb::ModelStatisticsResponse> {
        unimplemented()
    }

    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        unimplemented()
    }

    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        unimplemented()
    }

    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        unimplemented()
    }
}

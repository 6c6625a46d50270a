//! The generated types of the `inference` protobuf package: the gRPC service (proto/grpc_service.proto)
//! and Triton's model configuration it imports (proto/model_config.proto). One module, shared by the gRPC
//! front end (`grpc::pb`) and the config.pbtxt reader (`triton_config::pb`).

#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

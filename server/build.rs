//! Compiles the protobuf schemas in pure Rust (protox), so building Keel needs no `protoc`:
//!
//! - `proto/model_config.proto`, Triton's model configuration: an encoded descriptor set
//!   (`OUT_DIR/model_config.bin`) that `config.pbtxt` is parsed against at run time (prost-reflect's text
//!   format).
//! - `proto/grpc_service.proto`, the gRPC service, which imports the model configuration: both are generated
//!   into one module for the `inference` package (`crate::protocol::inference`).
//! - `proto/opentelemetry/`, OTLP's trace export service and the messages it carries (copied unchanged
//!   from open-telemetry/opentelemetry-proto, Apache-2.0, as vendored by the `opentelemetry-proto` crate
//!   0.33.1): the OTLP/gRPC exporter's client (`crate::otel::pb`), and a server for its tests.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    println!("cargo:rerun-if-changed=proto/opentelemetry");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(false);
    compiler.open_file("model_config.proto")?;
    std::fs::write(
        out.join("model_config.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // One package, one generated module (`crate::protocol::inference`): the service and the model
    // configuration it imports. Maps of the configuration are BTreeMaps, so warnings and JSON come out in a
    // stable order; the service's maps stay HashMaps.
    let descriptors = protox::compile(["grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .btree_map(".inference.ModelConfig")
        .btree_map(".inference.ModelOptimizationPolicy")
        .btree_map(".inference.ModelDynamicBatching")
        .btree_map(".inference.ModelEnsembling")
        .btree_map(".inference.ModelWarmup")
        .btree_map(".inference.ModelRepositoryAgents")
        .compile_fds(descriptors)?;
    // One module per OTLP package, nested as the packages are (the generated code refers to its
    // neighbours by relative paths).
    let otlp = protox::compile(
        ["opentelemetry/proto/collector/trace/v1/trace_service.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(otlp)?;
    Ok(())
}

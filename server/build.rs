//! Compiles the protobuf schemas in pure Rust (protox), so building Keel needs no `protoc`:
//!
//! - `proto/model_config.proto`, Triton's model configuration: Rust types (`OUT_DIR/triton/inference.rs`,
//!   included by `triton_config::pb`) and an encoded descriptor set (`OUT_DIR/model_config.bin`) that
//!   `config.pbtxt` is parsed against at run time (prost-reflect's text format).
//! - `proto/grpc_service.proto`, the gRPC service. Its `ModelConfig` is the subset of Triton's that the
//!   service file declares; the Rust type used for it is the full one above (same package, same field
//!   numbers, so the same bytes on the wire), so the ModelConfig RPC carries everything Keel reports.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(false);
    compiler.open_file("model_config.proto")?;
    std::fs::write(
        out.join("model_config.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let triton = out.join("triton");
    std::fs::create_dir_all(&triton)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .out_dir(&triton)
        // Deterministic iteration (warnings, JSON) over `parameters`, warm-up inputs and the like.
        .btree_map(".")
        .compile_fds(compiler.file_descriptor_set())?;

    let descriptors = protox::compile(["grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(
            ".inference.ModelConfig",
            "crate::triton_config::pb::ModelConfig",
        )
        .compile_fds(descriptors)?;
    Ok(())
}

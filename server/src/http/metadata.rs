//! JSON bodies of the KServe V2 metadata endpoints and Triton's model configuration.

use serde_json::{Value, json};

use crate::repository::ServedVersion;
use crate::signature::TensorSpec;

/// Extensions this server implements, as listed by `GET /v2`.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

/// Every model is an ONNX file; Triton's clients key behaviour on this platform name.
pub const PLATFORM: &str = "onnxruntime_onnx";

pub fn server() -> Value {
    json!({ "name": "keel", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS })
}

fn tensors(specs: &[TensorSpec]) -> Vec<Value> {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.datatype.name(), "shape": s.shape }))
        .collect()
}

pub fn model(versions: Vec<String>, served: &ServedVersion) -> Value {
    json!({
        "name": served.model,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": tensors(&served.signature.inputs),
        "outputs": tensors(&served.signature.outputs),
    })
}

/// Triton's ModelConfig as protobuf JSON: the effective configuration, the same the gRPC ModelConfig RPC
/// returns ([`crate::triton_config::effective`]). perf_analyzer refuses to start without it.
pub fn config(served: &ServedVersion) -> Value {
    crate::triton_config::to_json(&crate::triton_config::effective(served))
}

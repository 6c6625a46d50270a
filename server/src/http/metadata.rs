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

/// Triton's ModelConfig as protobuf JSON. perf_analyzer refuses to start without it.
pub fn config(served: &ServedVersion) -> Value {
    let sig = &served.signature;
    let config_tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                let (dims, reshape) = s.config_dims(sig.max_batch_size);
                let mut t =
                    json!({ "name": s.name, "data_type": s.datatype.config_name(), "dims": dims });
                if let Some(shape) = reshape {
                    t["reshape"] = json!({ "shape": shape });
                }
                t
            })
            .collect()
    };
    let mut config = json!({
        "name": served.model,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "runtime": served.backend.name(),
        "max_batch_size": sig.max_batch_size,
        "input": config_tensors(&sig.inputs),
        "output": config_tensors(&sig.outputs),
        "version_policy": version_policy(&served.config.version_policy),
        "instance_group": [{ "name": served.model, "count": served.config.instance_count(), "kind": "KIND_CPU" }],
    });
    if sig.max_batch_size > 0 {
        let batching = &served.config.dynamic_batching;
        config["dynamic_batching"] = json!({
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
        });
    }
    config
}

fn version_policy(policy: &crate::repository::model_toml::VersionPolicy) -> Value {
    use crate::repository::model_toml::VersionPolicy;
    match policy {
        VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Specific(v) => json!({ "specific": { "versions": v } }),
    }
}

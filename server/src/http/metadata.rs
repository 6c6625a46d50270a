//! JSON bodies of the KServe V2 metadata endpoints and Triton's model configuration.

use serde_json::{Value, json};

use crate::repository::{ModelEntry, ServedVersion};
use crate::signature::TensorSpec;

/// Extensions this server implements, as listed by `GET /v2`.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration"];

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

pub fn model(entry: &ModelEntry, served: &ServedVersion) -> Value {
    let versions: Vec<String> = entry
        .ready_versions()
        .map(|v| v.version.to_string())
        .collect();
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
    // With a batch dimension, Triton's dims leave it out.
    let skip = usize::from(sig.max_batch_size > 0);
    let config_tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                let dims = &s.shape[skip.min(s.shape.len())..];
                let mut t =
                    json!({ "name": s.name, "data_type": s.datatype.config_name(), "dims": dims });
                // A tensor that is only the batch dimension: Triton writes dims [1] reshaped to [].
                if dims.is_empty() && skip == 1 {
                    t["dims"] = json!([1]);
                    t["reshape"] = json!({ "shape": [] });
                }
                t
            })
            .collect()
    };
    json!({
        "name": served.model,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "runtime": served.backend.name(),
        "max_batch_size": sig.max_batch_size,
        "input": config_tensors(&sig.inputs),
        "output": config_tensors(&sig.outputs),
        "version_policy": version_policy(&served.config.version_policy),
        "instance_group": [{ "name": served.model, "count": 1, "kind": "KIND_CPU" }],
    })
}

fn version_policy(policy: &crate::repository::model_toml::VersionPolicy) -> Value {
    use crate::repository::model_toml::VersionPolicy;
    match policy {
        VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Specific(v) => json!({ "specific": { "versions": v } }),
    }
}

//! The configuration a loaded version runs with, as Triton's ModelConfig: what `GET
//! /v2/models/{m}/config` and the gRPC ModelConfig RPC return, whether the model was configured by
//! `model.toml`, `config.pbtxt` or nothing. Built once here for both front ends.

use prost_reflect::{DynamicMessage, Kind, MapKey, ReflectMessage, Value};
use serde_json::{Map, Value as Json, json};

use super::pb;
use crate::backend::BackendKind;
use crate::http::metadata::PLATFORM;
use crate::model_toml::{ModelToml, OptimizationLevel, VersionPolicy, WarmupData};
use crate::repository::ServedVersion;
use crate::signature::{Signature, TensorSpec};

/// The effective configuration of `served`.
pub fn effective(served: &ServedVersion) -> pb::ModelConfig {
    build(
        &served.model,
        &served.signature,
        &served.config,
        served.backend,
    )
}

fn build(
    model: &str,
    sig: &Signature,
    config: &ModelToml,
    backend: BackendKind,
) -> pb::ModelConfig {
    let batching = &config.dynamic_batching;
    let ort = backend == BackendKind::OnnxRuntime;
    pb::ModelConfig {
        name: model.to_string(),
        platform: PLATFORM.to_string(),
        backend: "onnxruntime".into(),
        // Which of Keel's backends runs it: "onnxruntime" or "tract".
        runtime: backend.name().into(),
        version_policy: Some(version_policy(&config.version_policy)),
        max_batch_size: sig.max_batch_size as i32,
        input: sig
            .inputs
            .iter()
            .map(|s| {
                let (dims, reshape) = s.config_dims(sig.max_batch_size);
                pb::ModelInput {
                    name: s.name.clone(),
                    data_type: data_type(s),
                    dims,
                    reshape: reshape.map(|shape| pb::ModelTensorReshape { shape }),
                    ..Default::default()
                }
            })
            .collect(),
        output: sig
            .outputs
            .iter()
            .map(|s| {
                let (dims, reshape) = s.config_dims(sig.max_batch_size);
                pb::ModelOutput {
                    name: s.name.clone(),
                    data_type: data_type(s),
                    dims,
                    reshape: reshape.map(|shape| pb::ModelTensorReshape { shape }),
                    ..Default::default()
                }
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: model.to_string(),
            kind: pb::model_instance_group::Kind::Cpu as i32,
            count: config.instance_count() as i32,
            ..Default::default()
        }],
        // Keel batches whenever the model has a batch dimension.
        scheduling_choice: (sig.max_batch_size > 0).then(|| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: batching
                    .preferred_batch_sizes
                    .iter()
                    .map(|&n| n as i32)
                    .collect(),
                max_queue_delay_microseconds: batching.max_queue_delay_us,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: batching.default_timeout_us,
                    // A request's `timeout` parameter always overrides the default.
                    allow_timeout_override: true,
                    max_queue_size: batching.max_queue_size as u32,
                }),
                ..Default::default()
            })
        }),
        optimization: ort
            .then_some(config.onnxruntime.graph_optimization_level)
            .flatten()
            .map(|level| pb::ModelOptimizationPolicy {
                graph: Some(pb::model_optimization_policy::Graph {
                    // Triton's ONNX Runtime backend's numbering.
                    level: match level {
                        OptimizationLevel::Basic => -1,
                        OptimizationLevel::Extended => 1,
                        OptimizationLevel::Disable => 2,
                        OptimizationLevel::All => 0,
                    },
                }),
                ..Default::default()
            }),
        parameters: if ort {
            let threads = |n: Option<usize>| pb::ModelParameter {
                string_value: n.unwrap_or(1).to_string(),
            };
            [
                (
                    "intra_op_thread_count".to_string(),
                    threads(config.onnxruntime.intra_op_threads),
                ),
                (
                    "inter_op_thread_count".to_string(),
                    threads(config.onnxruntime.inter_op_threads),
                ),
            ]
            .into()
        } else {
            Default::default()
        },
        default_model_filename: crate::repository::MODEL_FILE.into(),
        model_warmup: config
            .warmup_samples
            .iter()
            .map(|sample| pb::ModelWarmup {
                name: sample.name.clone(),
                batch_size: sample.batch_size.max(1),
                count: sample.count,
                inputs: sample
                    .inputs
                    .iter()
                    .map(|input| {
                        use pb::model_warmup::input::InputDataType;
                        let data = match &input.data {
                            WarmupData::Zero => InputDataType::ZeroData(true),
                            WarmupData::Random => InputDataType::RandomData(true),
                            WarmupData::File(path) => {
                                InputDataType::InputDataFile(path.display().to_string())
                            }
                        };
                        let data_type = crate::tensor::DataType::parse(&input.datatype)
                            .ok()
                            .and_then(|dt| pb::DataType::from_str_name(dt.config_name()))
                            .unwrap_or(pb::DataType::TypeInvalid);
                        let value = pb::model_warmup::Input {
                            data_type: data_type as i32,
                            dims: input.dims.clone(),
                            input_data_type: Some(data),
                        };
                        (input.name.clone(), value)
                    })
                    .collect(),
            })
            .collect(),
        ..Default::default()
    }
}

fn data_type(spec: &TensorSpec) -> i32 {
    pb::DataType::from_str_name(spec.datatype.config_name()).unwrap_or(pb::DataType::TypeInvalid)
        as i32
}

fn version_policy(policy: &VersionPolicy) -> pb::ModelVersionPolicy {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let choice = match policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(v) => PolicyChoice::Specific(Specific {
            versions: v.iter().map(|&v| v as i64).collect(),
        }),
    };
    pb::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

/// Triton's JSON form of a ModelConfig (its HTTP `/config`): protobuf field names, enums by name, 64-bit
/// integers as numbers, every field without presence printed even when default, message fields only
/// when set.
pub fn to_json(config: &pb::ModelConfig) -> Json {
    let mut message = DynamicMessage::new(super::text::descriptor());
    message
        .transcode_from(config)
        .expect("pb::ModelConfig and the descriptor come from the same .proto");
    message_json(&message)
}

fn message_json(message: &DynamicMessage) -> Json {
    let mut out = Map::new();
    for field in message.descriptor().fields() {
        if field.supports_presence() && !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        let json = match (&*value, field.kind()) {
            (Value::Map(map), Kind::Message(entry)) => {
                let kind = entry.map_entry_value_field().kind();
                let mut object = Map::new();
                for (key, value) in map {
                    object.insert(map_key(key), value_json(value, &kind));
                }
                Json::Object(object)
            }
            (value, kind) => value_json(value, &kind),
        };
        out.insert(field.name().to_string(), json);
    }
    Json::Object(out)
}

fn value_json(value: &Value, kind: &Kind) -> Json {
    match value {
        Value::Bool(b) => json!(b),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F32(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(b.to_vec()),
        Value::EnumNumber(n) => match kind.as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => json!(v.name()),
            None => json!(n),
        },
        Value::Message(m) => message_json(m),
        Value::List(items) => Json::Array(items.iter().map(|v| value_json(v, kind)).collect()),
        Value::Map(_) => Json::Null,
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_toml::{WarmupInput, WarmupSample};
    use crate::tensor::DataType;

    fn signature(max_batch_size: u32) -> Signature {
        let batch = |dims: &[i64]| {
            (max_batch_size > 0)
                .then_some(-1)
                .into_iter()
                .chain(dims.iter().copied())
                .collect()
        };
        Signature {
            inputs: vec![TensorSpec {
                name: "INPUT0".into(),
                datatype: DataType::Int32,
                shape: batch(&[16]),
            }],
            outputs: vec![TensorSpec {
                name: "label".into(),
                datatype: DataType::Int64,
                shape: batch(&[]),
            }],
            max_batch_size,
        }
    }

    #[test]
    fn triton_effective_config_reflects_what_keel_runs() {
        let (toml, _) = super::super::from_pbtxt(
            r#"max_batch_size: 8
               version_policy { specific { versions: [ 1, 3 ] } }
               instance_group [ { kind: KIND_GPU count: 3 } ]
               dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 250
                 default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 7 } }
               optimization { graph { level: -1 } }
               parameters { key: "intra_op_thread_count" value { string_value: "2" } }
               model_warmup [ { name: "w" batch_size: 2 count: 2
                 inputs { key: "INPUT0" value { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } } } ]"#,
            "simple",
        )
        .unwrap();
        let config = build("simple", &signature(8), &toml, BackendKind::OnnxRuntime);
        let json = to_json(&config);
        assert_eq!(json["name"], "simple");
        assert_eq!(json["platform"], "onnxruntime_onnx");
        assert_eq!(json["backend"], "onnxruntime");
        assert_eq!(json["runtime"], "onnxruntime");
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(
            json["version_policy"],
            json!({"specific": {"versions": [1, 3]}})
        );
        let input = &json["input"][0];
        assert_eq!(input["name"], "INPUT0");
        assert_eq!(input["data_type"], "TYPE_INT32");
        assert_eq!(input["dims"], json!([16]));
        assert_eq!(input["optional"], false);
        assert_eq!(input["format"], "FORMAT_NONE");
        assert!(
            input.get("reshape").is_none(),
            "unset messages are left out"
        );
        let output = &json["output"][0];
        assert_eq!(output["dims"], json!([1]));
        assert_eq!(output["reshape"], json!({"shape": []}));
        assert_eq!(
            json["instance_group"],
            json!([{"name": "simple", "kind": "KIND_CPU", "count": 3, "gpus": [], "profile": [],
                    "passive": false, "host_policy": "", "secondary_devices": []}])
        );
        let batching = &json["dynamic_batching"];
        assert_eq!(batching["preferred_batch_size"], json!([2, 4]));
        assert_eq!(batching["max_queue_delay_microseconds"], 250);
        assert_eq!(
            batching["default_queue_policy"],
            json!({"timeout_action": "REJECT", "default_timeout_microseconds": 7,
                   "allow_timeout_override": true, "max_queue_size": 16})
        );
        assert!(json.get("sequence_batching").is_none());
        assert_eq!(json["optimization"]["graph"]["level"], -1);
        assert_eq!(
            json["parameters"],
            json!({"intra_op_thread_count": {"string_value": "2"},
                   "inter_op_thread_count": {"string_value": "1"}})
        );
        assert_eq!(json["default_model_filename"], "model.onnx");
        assert_eq!(
            json["model_warmup"],
            json!([{"name": "w", "batch_size": 2, "count": 2, "inputs": {
                "INPUT0": {"data_type": "TYPE_INT32", "dims": [16], "random_data": true}}}])
        );
    }

    #[test]
    fn triton_effective_config_without_batching_or_onnxruntime() {
        let toml = ModelToml {
            warmup_samples: vec![WarmupSample {
                name: "z".into(),
                batch_size: 0,
                count: 1,
                inputs: vec![WarmupInput {
                    name: "INPUT0".into(),
                    datatype: "INT32".into(),
                    dims: vec![16],
                    data: WarmupData::Zero,
                }],
            }],
            ..ModelToml::default()
        };
        let config = build("m", &signature(0), &toml, BackendKind::Tract);
        assert!(config.scheduling_choice.is_none());
        assert!(config.parameters.is_empty() && config.optimization.is_none());
        assert_eq!(config.input[0].dims, vec![16]);
        assert_eq!(config.output[0].dims, Vec::<i64>::new());
        assert_eq!(config.model_warmup[0].batch_size, 1);
        let json = to_json(&config);
        assert_eq!(json["runtime"], "tract");
        assert_eq!(json["max_batch_size"], 0);
        assert_eq!(
            json["version_policy"],
            json!({"latest": {"num_versions": 1}})
        );
        assert!(json.get("dynamic_batching").is_none());
        // The gRPC message is the same one: it encodes and decodes as Triton's.
        use prost::Message;
        let bytes = config.encode_to_vec();
        assert_eq!(pb::ModelConfig::decode(&bytes[..]).unwrap(), config);
    }
}

use super::*;

fn read(text: &str) -> (ModelToml, Vec<String>) {
    from_pbtxt(text, "simple").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn error(text: &str) -> String {
    from_pbtxt(text, "simple").expect_err(text)
}

/// Triton's `simple` example model, as its test generators write it.
const SIMPLE: &str = r#"
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { all { } }
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
instance_group [ { kind: KIND_CPU count: 2 }, { kind: KIND_AUTO } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 default_timeout_microseconds: 5000 allow_timeout_override: true }
}
"#;

#[test]
fn triton_simple_maps_onto_model_toml() {
    let (toml, warnings) = read(SIMPLE);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(toml.backend, BackendChoice::OnnxRuntime);
    assert_eq!(toml.max_batch_size, Some(8));
    assert_eq!(toml.version_policy, VersionPolicy::All);
    assert_eq!(toml.inputs.len(), 2);
    assert_eq!(toml.inputs["INPUT0"].shape, Some(vec![-1, 16]));
    assert_eq!(toml.outputs["OUTPUT1"].shape, Some(vec![-1, 16]));
    assert_eq!(toml.instances, Some(3));
    let batching = &toml.dynamic_batching;
    assert_eq!(batching.preferred_batch_sizes, vec![4, 8]);
    assert_eq!(batching.max_queue_delay_us, 100);
    assert_eq!(batching.max_queue_size, 32);
    assert_eq!(batching.default_timeout_us, 5000);
}

#[test]
fn triton_minimal_configurations_infer_from_the_graph() {
    let (toml, warnings) = read("");
    assert!(warnings.is_empty());
    assert_eq!(toml.backend, BackendChoice::OnnxRuntime);
    assert_eq!(toml.max_batch_size, None);
    assert_eq!(toml.instances, None);
    assert_eq!(toml.version_policy, VersionPolicy::Latest(1));
    let (toml, _) = read("backend: \"onnxruntime\"\nmax_batch_size: 0\n");
    assert_eq!(toml.max_batch_size, None, "no tensors: read from the graph");
    let (toml, _) =
        read("max_batch_size: 0\ninput { name: \"x\" data_type: TYPE_FP32 dims: [ 2, -1 ] }");
    assert_eq!(toml.max_batch_size, Some(0));
    assert_eq!(toml.inputs["x"].shape, Some(vec![2, -1]));
}

#[test]
fn triton_version_policies() {
    let policy = |text: &str| read(&format!("version_policy: {text}")).0.version_policy;
    assert_eq!(
        policy("{ latest { num_versions: 2 } }"),
        VersionPolicy::Latest(2)
    );
    assert_eq!(policy("{ all: {} }"), VersionPolicy::All);
    assert_eq!(
        policy("{ specific { versions: [1, 3] } }"),
        VersionPolicy::Specific(vec![1, 3])
    );
    assert!(error("version_policy { latest { } }").contains("version_policy"));
    assert!(error("version_policy { specific { versions: -1 } }").contains("-1"));
}

#[test]
fn triton_every_datatype_maps() {
    for dt in DataType::ALL {
        let text = format!(
            "input {{ name: \"x\" data_type: {} dims: [ 1 ] }}",
            dt.config_name()
        );
        read(&text);
        let number = pb::DataType::from_str_name(dt.config_name()).unwrap() as i32;
        assert_eq!(datatype(number, "x").unwrap(), dt);
    }
    assert!(error("input { name: \"x\" data_type: TYPE_BF16 dims: 1 }").contains("TYPE_BF16"));
    assert!(error("input { name: \"x\" dims: 1 }").contains("data_type is missing"));
    assert!(error("input { name: \"x\" data_type: TYPE_FP33 dims: 1 }").contains("TYPE_FP33"));
}

#[test]
fn triton_unsupported_platforms_are_errors() {
    for (text, named) in [
        ("platform: \"tensorrt_plan\"", "tensorrt_plan"),
        ("platform: \"pytorch_libtorch\"", "pytorch_libtorch"),
        (
            "platform: \"tensorflow_savedmodel\"",
            "tensorflow_savedmodel",
        ),
        ("platform: \"tensorflow_graphdef\"", "tensorflow_graphdef"),
        ("platform: \"ensemble\"", "ensemble"),
        ("backend: \"python\"", "python"),
        ("backend: \"openvino\"", "openvino"),
        (
            "platform: \"onnxruntime_onnx\" backend: \"tensorrt\"",
            "tensorrt",
        ),
    ] {
        let err = error(text);
        assert!(
            err.contains(named) && err.contains("not supported"),
            "{err}"
        );
    }
    assert_eq!(
        read("platform: \"onnxruntime_onnx\" backend: \"onnxruntime\"")
            .0
            .backend,
        BackendChoice::OnnxRuntime
    );
    assert!(error("default_model_filename: \"net.onnx\"").contains("default_model_filename"));
    read("default_model_filename: \"model.onnx\"");
}

#[test]
fn triton_fields_keel_does_not_honour_are_warnings_naming_them() {
    let text = r#"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 3 ] optional: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
instance_group [ { name: "g" kind: KIND_GPU count: 2 gpus: [ 0, 1 ] }, { kind: KIND_CPU count: 0 } ]
dynamic_batching { preserve_ordering: true priority_levels: 2 default_queue_policy { timeout_action: DELAY } }
optimization { cuda { graphs: true } graph { level: 1 } }
parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
model_transaction_policy { decoupled: true }
response_cache { enable: true }
model_operations { op_library_filename: "libcustom.so" }
runtime: "model.py"
metric_tags { key: "team" value: "a" }
"#;
    let (toml, warnings) = read(text);
    for named in [
        "input[x].format",
        "input[x].optional",
        "output[y].label_filename",
        "instance_group[g].gpus",
        "instance_group[g].kind: KIND_GPU",
        "its 2 instance(s) run on CPU",
        "dynamic_batching.preserve_ordering",
        "dynamic_batching.priority_levels",
        "timeout_action: DELAY",
        "optimization.cuda",
        "parameters[execution_mode]",
        "model_transaction_policy.decoupled",
        "response_cache.enable",
        "model_operations",
        "runtime",
        "metric_tags",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(named)),
            "no warning names {named}: {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 15, "{warnings:#?}");
    assert_eq!(
        toml.instances,
        Some(3),
        "GPU instances run on CPU; count 0 is 1"
    );
    assert_eq!(toml.onnxruntime.intra_op_threads, Some(3));
    assert_eq!(
        toml.onnxruntime.graph_optimization_level,
        Some(OptimizationLevel::Extended)
    );
    // Valid Triton fields Keel ignores parse: scheduling and ensembles, accelerators, agents.
    let (_, warnings) = read(
        r#"sequence_batching { max_sequence_idle_microseconds: 5000000
                 control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ]
                 oldest { max_candidate_sequences: 4 } }
               optimization { execution_accelerators { gpu_execution_accelerator : [ {
                 name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }
               model_repository_agents { agents [ { name: "checksum" parameters { key: "MD5:x" value: "y" } } ] }
               batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP32 source_input: "x" } ]
               model_metrics { metric_control [ { metric_identifier { family: "f" } histogram_options { buckets: [ 1.5 ] } } ] }
               cc_model_filenames { key: "7.5" value: "m.onnx" }"#,
    );
    assert_eq!(warnings.len(), 6, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("sequence_batching: Keel has no sequence batcher")),
        "{warnings:#?}"
    );
}

#[test]
fn triton_reshape_and_batch_only_tensors() {
    let (toml, warnings) = read(
        "max_batch_size: 4\noutput { name: \"label\" data_type: TYPE_INT64 dims: [ 1 ] reshape { shape: [ ] } }",
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(toml.outputs["label"].shape, Some(vec![-1]));
    let (toml, warnings) = read(
        "max_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP32 dims: [ 6 ] reshape { shape: [ 2, 3 ] } }",
    );
    assert_eq!(toml.inputs["x"].shape, Some(vec![-1, 2, 3]));
    assert!(warnings[0].starts_with("input[x].reshape"), "{warnings:?}");
    assert!(
        error("input { name: \"x\" data_type: TYPE_FP32 dims: [ -2 ] }").contains("input[x].dims")
    );
    assert!(
            error("input { name: \"x\" data_type: TYPE_FP32 dims: 1 } input { name: \"x\" data_type: TYPE_FP32 dims: 1 }")
                .contains("twice")
        );
}

#[test]
fn triton_warmup_fills_warmup_samples() {
    let text = r#"
max_batch_size: 8
model_warmup [
  {
    name: "zeros"
    batch_size: 4
    inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }
    inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } }
    count: 3
  },
  {
    batch_size: 1
    inputs { key: "TEXT" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "raw/text" } }
  }
]
"#;
    let (toml, _) = read(text);
    assert_eq!(
        toml.warmup_samples,
        vec![
            WarmupSample {
                name: "zeros".into(),
                batch_size: 4,
                count: 3,
                inputs: vec![
                    WarmupInput {
                        name: "INPUT0".into(),
                        datatype: "INT32".into(),
                        dims: vec![16],
                        data: WarmupData::Zero,
                    },
                    WarmupInput {
                        name: "INPUT1".into(),
                        datatype: "INT32".into(),
                        dims: vec![16],
                        data: WarmupData::Random,
                    },
                ],
            },
            WarmupSample {
                name: String::new(),
                batch_size: 1,
                count: 1,
                inputs: vec![WarmupInput {
                    name: "TEXT".into(),
                    datatype: "BYTES".into(),
                    dims: vec![16],
                    data: WarmupData::File("raw/text".into()),
                }],
            },
        ]
    );
    let unbatched = read(
            "model_warmup { batch_size: 1 inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: 2 zero_data: true } } }",
        )
        .0;
    assert_eq!(unbatched.warmup_samples[0].batch_size, 0);
    for (text, named) in [
        (
            "max_batch_size: 2 model_warmup { batch_size: 3 inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: 2 zero_data: true } } }",
            "batch_size",
        ),
        (
            "model_warmup { name: \"w\" inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: 2 } } }",
            "model_warmup[w].inputs[x]: no data",
        ),
        (
            "model_warmup { inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: 2 input_data_file: \"../secret\" } } }",
            "input_data_file",
        ),
        (
            "model_warmup { inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: -1 zero_data: true } } }",
            "dims",
        ),
        ("model_warmup { batch_size: 1 }", "no inputs"),
    ] {
        let err = error(text);
        assert!(err.contains(named), "{text}: {err}");
    }
}

#[test]
fn triton_out_of_range_values_are_errors() {
    assert!(error("max_batch_size: -1").contains("max_batch_size"));
    assert!(error("instance_group { count: 100000 }").contains("instances"));
    assert!(
        error("max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }")
            .contains("preferred_batch_size")
    );
    assert!(
        error("dynamic_batching { preferred_batch_size: -8 }").contains("preferred_batch_size")
    );
    assert!(
        error("parameters { key: \"intra_op_thread_count\" value: { string_value: \"many\" } }")
            .contains("intra_op_thread_count")
    );
}

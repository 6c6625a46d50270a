//! `config.pbtxt` → [`ModelToml`]: parsed as protobuf text format against Triton's `inference.ModelConfig`
//! (a malformed file is an error with its line and column), then mapped field by field. Every field that
//! is set and that Keel does not honour is a warning naming it ([`unhonoured`]); a platform or backend
//! other than ONNX Runtime is an error. docs/configuration.md#triton-configpbtxt has the table.

use std::collections::BTreeMap;
use std::path::{Component, PathBuf};

use prost_reflect::{DynamicMessage, Value};

use super::text::parse;

use super::pb::{self, model_config::SchedulingChoice};
use crate::model_toml::{
    BackendChoice, ModelToml, OptimizationLevel, TensorOverride, VersionPolicy, WarmupData,
    WarmupInput, WarmupSample,
};
use crate::tensor::DataType;

/// Reads a `config.pbtxt` of model `model` (its directory name): the configuration Keel runs it with,
/// and a warning for each thing it asks for that Keel does not do.
pub fn from_pbtxt(text: &str, model: &str) -> Result<(ModelToml, Vec<String>), String> {
    let message = parse(text)?;
    let config: pb::ModelConfig = message
        .transcode_to()
        .map_err(|e| format!("cannot read the parsed configuration: {e}"))?;
    let mut warnings = Vec::new();
    unhonoured(&message, "", "", &mut warnings);
    let toml = map(&config, model, &mut warnings)?;
    toml.validate()
        .map_err(|e| format!("{e} (Keel's equivalent of the config.pbtxt setting)"))?;
    Ok((toml, warnings))
}

/// Field paths (list indices left out) that [`map`] reads. A message field leading to one of them is
/// looked into; any other field that is set gets a warning from [`unhonoured`].
const HONOURED: &[&str] = &[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "default_model_filename",
    "version_policy",
    "input.name",
    "input.data_type",
    "input.dims",
    "input.reshape",
    "input.optional",
    "output.name",
    "output.data_type",
    "output.dims",
    "output.reshape",
    "instance_group.name",
    "instance_group.kind",
    "instance_group.count",
    "dynamic_batching.preferred_batch_size",
    "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    // Keel always lets a request's `timeout` parameter override the default.
    "dynamic_batching.default_queue_policy.allow_timeout_override",
    "dynamic_batching.default_queue_policy.timeout_action",
    "optimization.graph.level",
    "parameters",
    "model_warmup",
];

/// Messages looked into although Keel reads none of their fields: each field set in them is named.
const LOOKED_INTO: &[&str] = &["model_transaction_policy", "response_cache"];

/// Why a field is ignored, where there is more to say than that Keel does not implement it.
fn reason(path: &str) -> &'static str {
    let is = |p: &str| path == p || path.starts_with(&format!("{p}."));
    if is("sequence_batching") {
        "Keel has no sequence batcher; requests are scheduled one by one (batched dynamically); ignored"
    } else if is("ensemble_scheduling") {
        "Keel does not run ensembles; ignored"
    } else if is("optimization") {
        "GPU, accelerator and memory settings do not apply to Keel (ONNX Runtime on CPU); ignored"
    } else if is("instance_group") {
        "Keel places its instances itself (one CPU thread each); ignored"
    } else if is("model_transaction_policy.decoupled") {
        "Keel answers every request with exactly one response; ignored"
    } else if is("response_cache") {
        "Keel has no response cache; ignored"
    } else if [
        "priority_levels",
        "default_priority_level",
        "priority_queue_policy",
    ]
    .iter()
    .any(|p| is(&format!("dynamic_batching.{p}")))
    {
        "Keel has one priority level; ignored"
    } else if is("output.label_filename") {
        "Keel has no classification extension; ignored"
    } else if is("batch_input") || is("batch_output") {
        "Keel does not generate batch inputs or scatter batch outputs; ignored"
    } else {
        "not supported by Keel; ignored"
    }
}

/// Warns about every field set in `message` that Keel does not honour. `path` is the message's field
/// path (list indices left out, as in [`HONOURED`]); `shown`, the same with the list elements named.
fn unhonoured(message: &DynamicMessage, path: &str, shown: &str, warnings: &mut Vec<String>) {
    for (field, value) in message.fields() {
        let (key, shown) = match path {
            "" => (field.name().to_string(), field.name().to_string()),
            _ => (
                format!("{path}.{}", field.name()),
                format!("{shown}.{}", field.name()),
            ),
        };
        if HONOURED.contains(&key.as_str()) {
            continue;
        }
        let prefix = format!("{key}.");
        let look_into =
            LOOKED_INTO.contains(&key.as_str()) || HONOURED.iter().any(|h| h.starts_with(&prefix));
        match value {
            Value::Message(inner) if look_into => unhonoured(inner, &key, &shown, warnings),
            Value::List(items) if look_into => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        let element = format!("{shown}[{}]", label(inner, i));
                        unhonoured(inner, &key, &element, warnings);
                    }
                }
            }
            _ => warnings.push(format!("{shown}: {}", reason(&key))),
        }
    }
}

/// A list element as warnings show it: its `name` if it has one, else its index.
fn label(message: &DynamicMessage, index: usize) -> String {
    match message.get_field_by_name("name").as_deref() {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => index.to_string(),
    }
}

/// The ModelConfig fields Keel honours, onto a [`ModelToml`]. Semantic warnings (a GPU instance group, an
/// optional input, a reshape) are added here; errors name the field.
fn map(
    config: &pb::ModelConfig,
    model: &str,
    warnings: &mut Vec<String>,
) -> Result<ModelToml, String> {
    let mut toml = ModelToml {
        backend: backend(&config.platform, &config.backend)?,
        ..ModelToml::default()
    };
    if !config.name.is_empty() && config.name != model {
        warnings.push(format!(
            "name \"{}\" differs from the model's directory name; the model is served as \"{model}\"",
            config.name
        ));
    }
    if !matches!(config.default_model_filename.as_str(), "" | "model.onnx") {
        return Err(format!(
            "default_model_filename \"{}\": Keel loads <version>/model.onnx only; rename the file",
            config.default_model_filename
        ));
    }
    if config.max_batch_size < 0 {
        return Err(format!(
            "max_batch_size: {} is negative",
            config.max_batch_size
        ));
    }
    let max_batch = config.max_batch_size as u32;
    let batched = max_batch > 0;
    // Without tensors and without a batch size, Keel reads both from the graph, as Triton's auto-complete
    // does; otherwise max_batch_size 0 means what it means to Triton: no batch dimension.
    toml.max_batch_size =
        (batched || !config.input.is_empty() || !config.output.is_empty()).then_some(max_batch);
    toml.version_policy = version_policy(config.version_policy.as_ref())?;
    for input in &config.input {
        let what = format!("input[{}]", input.name);
        let shape = tensor_shape(
            &what,
            &input.name,
            input.data_type,
            &input.dims,
            input.reshape.as_ref(),
            batched,
            warnings,
        )?;
        if input.optional {
            warnings.push(format!(
                "{what}.optional: Keel requires every input; requests must send it"
            ));
        }
        let datatype = datatype(input.data_type, &what)?;
        insert(&mut toml.inputs, "input", &input.name, shape, datatype)?;
    }
    for output in &config.output {
        let what = format!("output[{}]", output.name);
        let shape = tensor_shape(
            &what,
            &output.name,
            output.data_type,
            &output.dims,
            output.reshape.as_ref(),
            batched,
            warnings,
        )?;
        let datatype = datatype(output.data_type, &what)?;
        insert(&mut toml.outputs, "output", &output.name, shape, datatype)?;
    }
    toml.instances = instances(&config.instance_group, warnings)?;
    if let Some(SchedulingChoice::DynamicBatching(batching)) = &config.scheduling_choice {
        dynamic_batching(batching, &mut toml, warnings)?;
    }
    if let Some(level) = config
        .optimization
        .as_ref()
        .and_then(|o| o.graph.as_ref())
        .map(|g| g.level)
    {
        // Triton's ONNX Runtime backend: -1 basic, 1 basic and extended, 2 none, otherwise all.
        toml.onnxruntime.graph_optimization_level = match level {
            -1 => Some(OptimizationLevel::Basic),
            1 => Some(OptimizationLevel::Extended),
            2 => Some(OptimizationLevel::Disable),
            0 => None,
            other => {
                warnings.push(format!(
                    "optimization.graph.level: {other} is not one of -1, 1, 2; all optimisations stay on"
                ));
                None
            }
        };
    }
    for (key, value) in &config.parameters {
        let threads = |value: &str| {
            value.trim().parse::<usize>().map_err(|_| {
                format!("parameters[{key}]: \"{value}\" is not a thread count (0 or more)")
            })
        };
        match key.as_str() {
            "intra_op_thread_count" => {
                toml.onnxruntime.intra_op_threads = Some(threads(&value.string_value)?)
            }
            "inter_op_thread_count" => {
                toml.onnxruntime.inter_op_threads = Some(threads(&value.string_value)?)
            }
            _ => warnings.push(format!(
                "parameters[{key}]: not a parameter Keel knows (it reads intra_op_thread_count and inter_op_thread_count); ignored"
            )),
        }
    }
    toml.warmup_samples = config
        .model_warmup
        .iter()
        .enumerate()
        .map(|(i, sample)| warmup(sample, i, batched, max_batch))
        .collect::<Result<_, _>>()?;
    Ok(toml)
}

/// Only ONNX Runtime models: `platform: "onnxruntime_onnx"` and/or `backend: "onnxruntime"`, or neither
/// (Triton then picks the backend from the model file, which for Keel is always `model.onnx`).
fn backend(platform: &str, backend: &str) -> Result<BackendChoice, String> {
    let refuse = |field: &str, value: &str| {
        Err(format!(
            "{field} \"{value}\" is not supported: Keel serves ONNX models only (platform \"onnxruntime_onnx\" or backend \"onnxruntime\"), so this model cannot load"
        ))
    };
    match (platform, backend) {
        ("" | "onnxruntime_onnx", "" | "onnxruntime") => Ok(BackendChoice::OnnxRuntime),
        ("" | "onnxruntime_onnx", other) => refuse("backend", other),
        (other, _) => refuse("platform", other),
    }
}

fn version_policy(policy: Option<&pb::ModelVersionPolicy>) -> Result<VersionPolicy, String> {
    use pb::model_version_policy::PolicyChoice;
    Ok(match policy.and_then(|p| p.policy_choice.as_ref()) {
        None => VersionPolicy::default(),
        Some(PolicyChoice::Latest(latest)) => VersionPolicy::Latest(latest.num_versions),
        Some(PolicyChoice::All(_)) => VersionPolicy::All,
        Some(PolicyChoice::Specific(specific)) => VersionPolicy::Specific(
            specific
                .versions
                .iter()
                .map(|&v| {
                    u64::try_from(v).map_err(|_| {
                        format!("version_policy: specific version {v} is not a positive integer")
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Keel's datatype for Triton's `TYPE_*` number; `what` names the field in errors.
pub(super) fn datatype(number: i32, what: &str) -> Result<DataType, String> {
    let name = pb::DataType::try_from(number)
        .map_err(|_| format!("{what}.data_type: unknown value {number}"))?;
    match name {
        pb::DataType::TypeInvalid => Err(format!("{what}: data_type is missing")),
        other => DataType::ALL
            .into_iter()
            .find(|dt| dt.config_name() == other.as_str_name())
            .ok_or_else(|| {
                format!(
                    "{what}.data_type: {} is not supported by Keel",
                    other.as_str_name()
                )
            }),
    }
}

/// The tensor's full shape (batch dimension first when batched) as a `model.toml` shape override.
fn tensor_shape(
    what: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&pb::ModelTensorReshape>,
    batched: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<i64>, String> {
    if name.is_empty() {
        return Err(format!("{what}: name is missing"));
    }
    // Checked for being one Keel serves here; against the graph when the signature is read.
    datatype(data_type, what)?;
    let model_dims = match reshape {
        None => dims,
        // Triton's way of writing a tensor that is only the batch dimension (Keel's /config writes it too).
        Some(r) if batched && dims == [1] && r.shape.is_empty() => &r.shape[..],
        Some(r) => {
            warnings.push(format!(
                "{what}.reshape: Keel does not reshape tensors; clients send the model's shape {:?} (dims {dims:?} is not used)",
                r.shape
            ));
            &r.shape[..]
        }
    };
    if let Some(bad) = model_dims.iter().find(|&&d| d < -1 || d == 0) {
        return Err(format!(
            "{what}.dims: {bad} is not a dimension (a size, or -1 for variable)"
        ));
    }
    Ok(batched
        .then_some(-1)
        .into_iter()
        .chain(model_dims.iter().copied())
        .collect())
}

fn insert(
    tensors: &mut BTreeMap<String, TensorOverride>,
    kind: &str,
    name: &str,
    shape: Vec<i64>,
    datatype: DataType,
) -> Result<(), String> {
    let over = TensorOverride {
        shape: Some(shape),
        datatype: Some(datatype.name().to_string()),
    };
    match tensors.insert(name.to_string(), over) {
        Some(_) => Err(format!("{kind}[{name}] is listed twice")),
        None => Ok(()),
    }
}

/// Instances: the counts of every group together (a count below 1 is 1, as in Triton); all on CPU.
fn instances(
    groups: &[pb::ModelInstanceGroup],
    warnings: &mut Vec<String>,
) -> Result<Option<usize>, String> {
    use pb::model_instance_group::Kind;
    if groups.is_empty() {
        return Ok(None);
    }
    let mut total = 0usize;
    for (i, group) in groups.iter().enumerate() {
        let what = match group.name.as_str() {
            "" => format!("instance_group[{i}]"),
            name => format!("instance_group[{name}]"),
        };
        let count = group.count.max(1) as usize;
        match Kind::try_from(group.kind) {
            Ok(Kind::Auto | Kind::Cpu) => {}
            Ok(Kind::Gpu) => warnings.push(format!(
                "{what}.kind: KIND_GPU, but Keel runs on CPU only (no GPU is available to it); its {count} instance(s) run on CPU"
            )),
            Ok(Kind::Model) => warnings.push(format!(
                "{what}.kind: KIND_MODEL; Keel places instances itself, its {count} instance(s) run on CPU"
            )),
            Err(_) => return Err(format!("{what}.kind: unknown value {}", group.kind)),
        }
        total = total.saturating_add(count);
    }
    Ok(Some(total))
}

fn dynamic_batching(
    batching: &pb::ModelDynamicBatching,
    toml: &mut ModelToml,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let keel = &mut toml.dynamic_batching;
    keel.preferred_batch_sizes = batching
        .preferred_batch_size
        .iter()
        .map(|&n| {
            usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("dynamic_batching.preferred_batch_size: {n} is not a batch size")
            })
        })
        .collect::<Result<_, _>>()?;
    keel.max_queue_delay_us = batching.max_queue_delay_microseconds;
    if let Some(policy) = &batching.default_queue_policy {
        // 0 is Triton's "unbounded"; Keel keeps its bound then.
        if policy.max_queue_size > 0 {
            keel.max_queue_size = policy.max_queue_size as usize;
        }
        keel.default_timeout_us = policy.default_timeout_microseconds;
        if policy.timeout_action == pb::model_queue_policy::TimeoutAction::Delay as i32 {
            warnings.push(
                "dynamic_batching.default_queue_policy.timeout_action: DELAY is not supported; a request whose queue timeout expires is rejected (REJECT)"
                    .to_string(),
            );
        }
    }
    Ok(())
}

/// One `model_warmup` entry as a [`WarmupSample`].
fn warmup(
    sample: &pb::ModelWarmup,
    index: usize,
    batched: bool,
    max_batch: u32,
) -> Result<WarmupSample, String> {
    use pb::model_warmup::input::InputDataType;
    let what = match sample.name.as_str() {
        "" => format!("model_warmup[{index}]"),
        name => format!("model_warmup[{name}]"),
    };
    let batch_size = match (batched, sample.batch_size) {
        (true, 0) => return Err(format!("{what}.batch_size: must be at least 1")),
        (true, n) if n > max_batch => {
            return Err(format!(
                "{what}.batch_size: {n} is more than max_batch_size {max_batch}"
            ));
        }
        (true, n) => n,
        (false, 0 | 1) => 0,
        (false, n) => {
            return Err(format!(
                "{what}.batch_size: {n}, but the model has no batch dimension (max_batch_size 0): use 1"
            ));
        }
    };
    if sample.inputs.is_empty() {
        return Err(format!("{what}: no inputs"));
    }
    let inputs = sample
        .inputs
        .iter()
        .map(|(name, input)| {
            let what = format!("{what}.inputs[{name}]");
            let datatype = datatype(input.data_type, &what)?;
            if let Some(bad) = input.dims.iter().find(|&&d| d < 1) {
                return Err(format!(
                    "{what}.dims: {bad}; warm-up dimensions are fixed sizes (1 or more)"
                ));
            }
            let data = match &input.input_data_type {
                Some(InputDataType::ZeroData(true)) => WarmupData::Zero,
                Some(InputDataType::RandomData(true)) => WarmupData::Random,
                Some(InputDataType::InputDataFile(file)) => WarmupData::File(warmup_file(file, &what)?),
                _ => {
                    return Err(format!(
                        "{what}: no data (set zero_data: true, random_data: true or input_data_file)"
                    ));
                }
            };
            Ok(WarmupInput {
                name: name.clone(),
                datatype: datatype.name().to_string(),
                dims: input.dims.clone(),
                data,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(WarmupSample {
        name: sample.name.clone(),
        batch_size,
        // Unset is once, as in Triton.
        count: sample.count.max(1),
        inputs,
    })
}

/// `input_data_file` is relative to the model's `warmup/` directory and stays inside it.
fn warmup_file(file: &str, what: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(file);
    let inside = !file.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    match inside {
        true => Ok(path),
        false => Err(format!(
            "{what}.input_data_file: \"{file}\" must be a relative path inside the model's warmup/ directory"
        )),
    }
}

#[cfg(test)]
#[path = "pbtxt_tests.rs"]
mod tests;

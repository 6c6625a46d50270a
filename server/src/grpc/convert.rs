//! Conversions between the gRPC messages and the serving core's types. [`wire`] checks a request on its
//! wire bytes before prost decodes it; [`guard`] serves ModelInfer and ModelStreamInfer with that check and
//! the in-flight budget; `unary` serves a plain ModelInfer call the same way without tonic's generic
//! unary path, its answer written straight to its frame by [`answer`].

pub mod answer;
pub mod guard;
mod raw_request;
mod unary;
pub mod wire;

use super::pb;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::repository::{IndexEntry, ServedVersion};
use crate::signature::TensorSpec;
use crate::stats::{DurationSnapshot, StatsSnapshot};
use crate::tensor::{DataType, Tensor, TensorData, element_count, shape_from_wire};

/// Decodes a ModelInferRequest. Each input's data comes either from its typed `contents` or from the
/// matching `raw_input_contents` entry, never both; sizes are checked against the shape before use.
pub fn infer_request(req: pb::ModelInferRequest) -> Result<InferRequest> {
    reject_shared_memory(&req.parameters, "request")?;
    let timeout = timeout_param(&req.parameters)?;
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} entries for {} inputs: with raw contents every input needs one",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let context = |e: Error| Error::invalid(format!("input '{}': {e}", input.name));
        reject_shared_memory(&input.parameters, &format!("input '{}'", input.name))?;
        let datatype = DataType::parse(&input.datatype).map_err(context)?;
        let shape = shape_from_wire(&input.name, &input.shape)?;
        let data = match (raw.next(), input.contents) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "input '{}' sets both contents and raw_input_contents",
                    input.name
                )));
            }
            (Some(bytes), None) => {
                let count = element_count(&shape, bytes.len()).map_err(context)?;
                TensorData::from_le_bytes(datatype, &bytes, count).map_err(context)?
            }
            (None, Some(contents)) => {
                typed_contents(datatype, &shape, contents).map_err(context)?
            }
            (None, None) => {
                return Err(Error::invalid(format!(
                    "input '{}' has no data",
                    input.name
                )));
            }
        };
        inputs.push(Tensor {
            name: input.name,
            shape,
            data,
        });
    }
    let outputs = if req.outputs.is_empty() {
        None
    } else {
        let mut names = Vec::with_capacity(req.outputs.len());
        for out in req.outputs {
            reject_shared_memory(&out.parameters, &format!("output '{}'", out.name))?;
            if out.parameters.contains_key("classification") {
                return Err(Error::Unsupported(format!(
                    "output '{}': the classification extension is not supported by Keel",
                    out.name
                )));
            }
            names.push(out.name);
        }
        Some(names)
    };
    let id = (!req.id.is_empty()).then_some(req.id);
    Ok(InferRequest {
        id,
        inputs,
        outputs,
        timeout,
    })
}

/// Triton's schedule-policy `timeout` parameter, in microseconds; 0 means none.
fn timeout_param(
    params: &std::collections::HashMap<String, pb::InferParameter>,
) -> Result<Option<std::time::Duration>> {
    use pb::infer_parameter::ParameterChoice;
    let us = match params
        .get("timeout")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => return Ok(None),
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => *v as u64,
        Some(ParameterChoice::Uint64Param(v)) => *v,
        Some(other) => {
            return Err(Error::invalid(format!(
                "parameter 'timeout' must be a non-negative integer (µs), got {other:?}"
            )));
        }
    };
    Ok((us > 0).then(|| std::time::Duration::from_micros(us)))
}

fn reject_shared_memory<V>(
    params: &std::collections::HashMap<String, V>,
    what: &str,
) -> Result<()> {
    if params.contains_key("shared_memory_region") {
        return Err(Error::Unsupported(format!(
            "{what}: shared memory is not supported by Keel"
        )));
    }
    Ok(())
}

/// Typed contents: each datatype has its one field (INT8/16/32 share `int_contents`, UINT8/16/32 share
/// `uint_contents`); values outside the datatype's range are refused, not truncated.
fn typed_contents(
    datatype: DataType,
    shape: &[usize],
    c: pb::InferTensorContents,
) -> Result<TensorData> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        values: Vec<S>,
        dt: DataType,
    ) -> Result<Vec<T>> {
        values
            .into_iter()
            .map(|v| {
                T::try_from(v).map_err(|_| Error::invalid(format!("{v} is out of range for {dt}")))
            })
            .collect()
    }
    check_typed_counts(datatype, shape, None, &content_counts(&c))?;
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Int8 => TensorData::Int8(narrow(c.int_contents, datatype)?),
        DataType::Int16 => TensorData::Int16(narrow(c.int_contents, datatype)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(c.uint_contents, datatype)?),
        DataType::Uint16 => TensorData::Uint16(narrow(c.uint_contents, datatype)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
        DataType::Fp16 => unreachable!("refused above"),
    })
}

/// The typed contents fields, in field order.
const CONTENTS_FIELDS: [&str; 8] = [
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
];

/// Checks typed contents by their element counts (in [`CONTENTS_FIELDS`] order): only the datatype's field
/// is filled, with exactly the elements the shape needs (`declared` when a signature already counted them).
/// Returns that count.
pub(crate) fn check_typed_counts(
    datatype: DataType,
    shape: &[usize],
    declared: Option<usize>,
    counts: &[usize; 8],
) -> Result<usize> {
    let field = match datatype {
        DataType::Bool => 0,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => 1,
        DataType::Int64 => 2,
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => 3,
        DataType::Uint64 => 4,
        DataType::Fp32 => 5,
        DataType::Fp64 => 6,
        DataType::Bytes => 7,
        DataType::Fp16 => {
            return Err(Error::invalid(
                "FP16 data must be sent in raw_input_contents",
            ));
        }
    };
    if let Some(other) = (0..8).find(|&i| i != field && counts[i] > 0) {
        return Err(Error::invalid(format!(
            "{datatype} data belongs in {}, not {}",
            CONTENTS_FIELDS[field], CONTENTS_FIELDS[other]
        )));
    }
    let len = counts[field];
    let count = match declared {
        Some(count) => count,
        None => element_count(shape, len)?,
    };
    if count != len {
        return Err(Error::invalid(format!(
            "{} has {len} elements, the shape needs {count}",
            CONTENTS_FIELDS[field]
        )));
    }
    Ok(count)
}

/// Outputs always travel in `raw_output_contents`, which is what tritonclient's `as_numpy` reads.
pub fn infer_response(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for t in resp.outputs {
        let mut bytes = Vec::with_capacity(t.data.byte_len());
        t.data.write_le_bytes(&mut bytes);
        raw.push(bytes);
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: t.name,
            datatype: t.data.datatype().name().to_string(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version.to_string(),
        id: resp.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.name().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

pub fn model_metadata(versions: Vec<String>, served: &ServedVersion) -> pb::ModelMetadataResponse {
    pb::ModelMetadataResponse {
        name: served.model.clone(),
        versions,
        platform: crate::http::metadata::PLATFORM.to_string(),
        inputs: tensor_metadata(&served.signature.inputs),
        outputs: tensor_metadata(&served.signature.outputs),
    }
}

/// The effective configuration (shared with HTTP's `/config`; see [`crate::triton_config::effective`]).
/// The service's ModelConfig is Triton's full message (build.rs maps it onto `triton_config::pb`).
pub fn model_config(served: &ServedVersion) -> crate::triton_config::pb::ModelConfig {
    crate::triton_config::effective(served)
}

fn duration(d: DurationSnapshot) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

pub fn statistics(s: StatsSnapshot) -> pb::ModelStatistics {
    let i = s.inference_stats;
    pb::ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
            cache_hit: duration(i.cache_hit),
            cache_miss: duration(i.cache_miss),
        }),
        batch_stats: Vec::new(),
    }
}

pub fn index_entry(e: IndexEntry) -> pb::repository_index_response::ModelIndex {
    pb::repository_index_response::ModelIndex {
        name: e.name,
        version: e.version,
        state: e.state.to_string(),
        reason: e.reason,
    }
}

/// Elements in each typed field of `contents`, in the field order the counts checks use.
pub(crate) fn content_counts(c: &pb::InferTensorContents) -> [usize; 8] {
    [
        c.bool_contents.len(),
        c.int_contents.len(),
        c.int64_contents.len(),
        c.uint_contents.len(),
        c.uint64_contents.len(),
        c.fp32_contents.len(),
        c.fp64_contents.len(),
        c.bytes_contents.len(),
    ]
}

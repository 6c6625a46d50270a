//! KServe V2 REST inference bodies: JSON, and Triton's binary tensor extension in both directions.

use std::collections::HashMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json_data;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::tensor::{DataType, Tensor, TensorData, element_count, shape_from_wire};

/// The header that splits a binary-extension body into its JSON part and its tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type Parameters = Map<String, Value>;

/// The JSON length from `Inference-Header-Content-Length`, if the request carries binary tensors.
pub fn json_length(headers: &axum::http::HeaderMap) -> Result<Option<usize>> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| Error::invalid(format!("{HEADER_LENGTH} must be a non-negative integer")))
}

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// A decoded request plus how each output should travel back.
pub struct DecodedRequest {
    pub request: InferRequest,
    pub binary: BinaryOutputs,
}

/// Which outputs go back as raw bytes after the JSON: Triton's `binary_data_output` sets the default,
/// a requested output's `binary_data` overrides it.
#[derive(Default)]
pub struct BinaryOutputs {
    default: bool,
    overrides: HashMap<String, bool>,
}

impl BinaryOutputs {
    fn is_binary(&self, name: &str) -> bool {
        self.overrides.get(name).copied().unwrap_or(self.default)
    }
}

fn bool_param(params: Option<&Parameters>, key: &str) -> Result<Option<bool>> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::invalid(format!(
            "parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

/// Triton's schedule-policy `timeout` parameter, in microseconds; 0 means none.
fn timeout_param(params: Option<&Parameters>) -> Result<Option<std::time::Duration>> {
    match params.and_then(|p| p.get("timeout")) {
        None => Ok(None),
        Some(v) => {
            let us = v.as_u64().ok_or_else(|| {
                Error::invalid(format!(
                    "parameter 'timeout' must be a non-negative integer (µs), got {v}"
                ))
            })?;
            Ok((us > 0).then(|| std::time::Duration::from_micros(us)))
        }
    }
}

fn reject_shared_memory(params: Option<&Parameters>, what: &str) -> Result<()> {
    if params.is_some_and(|p| p.contains_key("shared_memory_region")) {
        return Err(Error::Unsupported(format!(
            "{what}: shared memory is not supported by Keel"
        )));
    }
    Ok(())
}

/// Decodes a request body. `json_len` is the `Inference-Header-Content-Length` value when present:
/// the first `json_len` bytes are JSON, the rest are the binary inputs in input order.
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<DecodedRequest> {
    let (json, mut binary) = match json_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(Error::invalid(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )));
        }
    };
    let hint = if json_len.is_none() {
        " (binary tensor data needs the Inference-Header-Content-Length header)"
    } else {
        ""
    };
    let json = std::str::from_utf8(json)
        .map_err(|e| Error::invalid(format!("request JSON is not UTF-8: {e}{hint}")))?;
    let parsed: RequestJson = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("malformed inference request: {e}{hint}")))?;
    reject_shared_memory(parsed.parameters.as_ref(), "request")?;

    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in parsed.inputs {
        let datatype = DataType::parse(&input.datatype)
            .map_err(|e| Error::invalid(format!("input '{}': {e}", input.name)))?;
        let shape = shape_from_wire(&input.name, &input.shape)?;
        reject_shared_memory(
            input.parameters.as_ref(),
            &format!("input '{}'", input.name),
        )?;
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            input.name
                        ))
                    })?,
            ),
        };
        let context = |e: Error| Error::invalid(format!("input '{}': {e}", input.name));
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "input '{}' has both JSON data and binary_data_size",
                    input.name
                )));
            }
            (None, None) => {
                return Err(Error::invalid(format!(
                    "input '{}' has no data",
                    input.name
                )));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(Error::invalid(format!(
                        "input '{}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                        input.name,
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                let count = element_count(&shape, bytes.len()).map_err(context)?;
                TensorData::from_le_bytes(datatype, bytes, count).map_err(context)?
            }
            (None, Some(raw)) => {
                let count = element_count(&shape, raw.get().len()).map_err(context)?;
                json_data::decode(raw, datatype, count).map_err(context)?
            }
        };
        inputs.push(Tensor {
            name: input.name,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the inputs that no input claims",
            binary.len()
        )));
    }

    let mut binary_outputs = BinaryOutputs {
        default: bool_param(parsed.parameters.as_ref(), "binary_data_output")?.unwrap_or(false),
        overrides: HashMap::new(),
    };
    let outputs = match parsed.outputs {
        None => None,
        Some(list) => {
            let mut names = Vec::with_capacity(list.len());
            for out in list {
                let params = out.parameters.as_ref();
                reject_shared_memory(params, &format!("output '{}'", out.name))?;
                if params.is_some_and(|p| p.contains_key("classification")) {
                    return Err(Error::Unsupported(format!(
                        "output '{}': the classification extension is not supported by Keel",
                        out.name
                    )));
                }
                if let Some(b) = bool_param(params, "binary_data")? {
                    binary_outputs.overrides.insert(out.name.clone(), b);
                }
                names.push(out.name);
            }
            Some(names)
        }
    };
    let timeout = timeout_param(parsed.parameters.as_ref())?;
    Ok(DecodedRequest {
        request: InferRequest {
            id: parsed.id,
            inputs,
            outputs,
            timeout,
        },
        binary: binary_outputs,
    })
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputOut<'a>>,
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    // Omitted entirely when absent: Triton's C++ client fails on `"parameters": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

struct JsonData<'a>(&'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Bool(v) => s.collect_seq(v),
            TensorData::Uint8(v) => s.collect_seq(v),
            TensorData::Uint16(v) => s.collect_seq(v),
            TensorData::Uint32(v) => s.collect_seq(v),
            TensorData::Uint64(v) => s.collect_seq(v),
            TensorData::Int8(v) => s.collect_seq(v),
            TensorData::Int16(v) => s.collect_seq(v),
            TensorData::Int32(v) => s.collect_seq(v),
            TensorData::Int64(v) => s.collect_seq(v),
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Fp32(v) => s.collect_seq(v),
            TensorData::Fp64(v) => s.collect_seq(v),
            TensorData::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

/// An encoded response body; `json_len` is set when binary outputs follow the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

pub fn encode_response(
    response: &InferResponse,
    binary: &BinaryOutputs,
) -> Result<EncodedResponse> {
    let mut tail = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|t| {
            if binary.is_binary(&t.name) {
                let before = tail.len();
                t.data.write_le_bytes(&mut tail);
                OutputOut {
                    name: &t.name,
                    datatype: t.datatype().name(),
                    shape: &t.shape,
                    parameters: Some(BinarySize {
                        binary_data_size: tail.len() - before,
                    }),
                    data: None,
                }
            } else {
                OutputOut {
                    name: &t.name,
                    datatype: t.datatype().name(),
                    shape: &t.shape,
                    parameters: None,
                    data: Some(JsonData(&t.data)),
                }
            }
        })
        .collect();
    let json = ResponseJson {
        model_name: &response.model_name,
        model_version: response.model_version.to_string(),
        id: response.id.as_deref(),
        outputs,
    };
    let mut body = serde_json::to_vec(&json)
        .map_err(|e| Error::Internal(format!("encoding the response: {e}")))?;
    if tail.is_empty() && !response.outputs.iter().any(|t| binary.is_binary(&t.name)) {
        return Ok(EncodedResponse {
            body,
            json_len: None,
        });
    }
    let json_len = body.len();
    body.extend_from_slice(&tail);
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

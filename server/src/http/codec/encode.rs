//! A response body: JSON, with Triton's binary outputs after it when asked.

use serde::{Serialize, Serializer};

use super::BinaryOutputs;
use crate::error::{Error, Result};
use crate::infer::InferResponse;
use crate::tensor::TensorData;

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

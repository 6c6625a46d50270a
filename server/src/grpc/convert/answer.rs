//! A ModelInferResponse written straight from the serving core's answer to its gRPC frame: one vector of
//! exactly the frame's size, the fields in prost's order and form, so the bytes are the ones prost writes
//! for [`super::infer_response`]'s message (a test holds them equal).
//!
//! Built as a prost message first, a single-row answer of two outputs took nine allocations (the outputs'
//! list, the raw contents' list, each output's contents, datatype and shape, the version's text) and its
//! contents were copied twice, into the message and then into the frame.

use bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;

use crate::infer::InferResponse;
use crate::tensor::Tensor;

/// The gRPC frame of `response`'s ModelInferResponse (a 0 flag, the length, the message), or
/// RESOURCE_EXHAUSTED when the message is longer than `max`.
pub fn frame(response: &InferResponse, max: usize) -> Result<Bytes, Status> {
    let mut digits = [0; 20];
    let version = crate::http::data_spans::itoa(response.model_version, &mut digits);
    let id = response.id.as_deref().unwrap_or_default();
    let outputs = response.outputs.iter().map(output_len);
    let len = string_len(&response.model_name)
        + string_len(version)
        + string_len(id)
        + outputs.map(nested).sum::<usize>()
        + response
            .outputs
            .iter()
            .map(|t| nested(t.data.byte_len()))
            .sum::<usize>();
    if len > max {
        // As tonic's encoder words it; RESOURCE_EXHAUSTED, as the size checks on requests answer.
        return Err(Status::resource_exhausted(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    let Ok(len32) = u32::try_from(len) else {
        return Err(Status::resource_exhausted(format!(
            "the answer is {len} bytes, more than a gRPC message can carry"
        )));
    };
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&len32.to_be_bytes());
    put_string(&mut out, 1, &response.model_name);
    put_string(&mut out, 2, version);
    put_string(&mut out, 3, id);
    for t in &response.outputs {
        encode_key(5, WireType::LengthDelimited, &mut out);
        encode_varint(output_len(t) as u64, &mut out);
        put_string(&mut out, 1, &t.name);
        put_string(&mut out, 2, t.data.datatype().name());
        if !t.shape.is_empty() {
            encode_key(3, WireType::LengthDelimited, &mut out);
            encode_varint(shape_len(&t.shape) as u64, &mut out);
            for &d in &t.shape {
                encode_varint(d as u64, &mut out);
            }
        }
    }
    for t in &response.outputs {
        encode_key(6, WireType::LengthDelimited, &mut out);
        encode_varint(t.data.byte_len() as u64, &mut out);
        t.data.write_le_bytes(&mut out);
    }
    debug_assert_eq!(out.len(), 5 + len);
    // Exactly its capacity, so the vector becomes the frame's bytes without a copy.
    Ok(Bytes::from(out))
}

/// One InferOutputTensor's length: its name, datatype and shape (it has no parameters, and its data is
/// in `raw_output_contents`).
fn output_len(t: &Tensor) -> usize {
    let shape = match shape_len(&t.shape) {
        0 => 0,
        n => nested(n),
    };
    string_len(&t.name) + string_len(t.data.datatype().name()) + shape
}

fn shape_len(shape: &[usize]) -> usize {
    shape.iter().map(|&d| encoded_len_varint(d as u64)).sum()
}

/// A length-delimited field of `len` bytes with its one-byte key (fields 1 to 15) and its length.
fn nested(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// A string field's bytes as proto3 writes it: none when it is empty.
fn string_len(s: &str) -> usize {
    if s.is_empty() { 0 } else { nested(s.len()) }
}

fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        encode_key(field, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::tensor::TensorData;

    fn tensor(name: &str, shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            data,
        }
    }

    /// What the tonic paths send: prost's encoding of the converted message, framed.
    fn by_prost(response: &InferResponse) -> Vec<u8> {
        let message = super::super::infer_response(InferResponse {
            model_name: response.model_name.clone(),
            model_version: response.model_version,
            id: response.id.clone(),
            outputs: response.outputs.clone(),
        });
        let body = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    #[test]
    fn the_frame_is_what_prost_writes_for_the_same_answer() {
        let answers = [
            // The common case: one row of a classifier.
            InferResponse {
                model_name: "breast-cancer".into(),
                model_version: 2,
                id: Some("0471dc4297bff772abd8951ba2b1fa87".into()),
                outputs: vec![
                    tensor("label", vec![1], TensorData::Int64(vec![0])),
                    tensor(
                        "probabilities",
                        vec![1, 2],
                        TensorData::Fp32(vec![0.9, 0.1]),
                    ),
                ],
            },
            // Empty strings and shapes are left out; an empty tensor's raw contents are still written.
            InferResponse {
                model_name: String::new(),
                model_version: 0,
                id: Some(String::new()),
                outputs: vec![
                    tensor("", vec![], TensorData::Fp64(vec![])),
                    tensor("y", vec![0, 3], TensorData::Uint8(vec![])),
                ],
            },
            // No id, no outputs, the largest version.
            InferResponse {
                model_name: "m".into(),
                model_version: u64::MAX,
                id: None,
                outputs: vec![],
            },
            // Multi-byte varints: long names, dimensions past 127 and 16383, 300 BYTES elements.
            InferResponse {
                model_name: "n".repeat(200),
                model_version: 1234567,
                id: Some("i".repeat(256)),
                outputs: vec![
                    tensor(
                        &"o".repeat(130),
                        vec![300, 20000, 1],
                        TensorData::Bool(vec![true, false, true]),
                    ),
                    tensor(
                        "text",
                        vec![300],
                        TensorData::Bytes((0..300).map(|i| vec![b'x'; i % 7]).collect()),
                    ),
                    tensor(
                        "h",
                        vec![2],
                        TensorData::Fp16(vec![half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]),
                    ),
                    tensor("i8", vec![2], TensorData::Int8(vec![-1, 2])),
                    tensor("u64", vec![1], TensorData::Uint64(vec![u64::MAX])),
                ],
            },
        ];
        for answer in &answers {
            let framed = frame(answer, usize::MAX).unwrap();
            assert_eq!(framed.as_ref(), by_prost(answer).as_slice());
        }
    }

    #[test]
    fn an_answer_over_the_limit_is_resource_exhausted() {
        let answer = InferResponse {
            model_name: "m".into(),
            model_version: 1,
            id: None,
            outputs: vec![tensor("y", vec![100], TensorData::Fp32(vec![0.0; 100]))],
        };
        let len = by_prost(&answer).len() - 5;
        assert!(frame(&answer, len).is_ok());
        let refused = frame(&answer, len - 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains(&format!("found {len} bytes")));
    }
}

//! The usual ModelInferRequest converted straight from its wire bytes: every input's data in
//! `raw_input_contents`, no typed contents and no parameters anywhere (what tritonclient and
//! perf_analyzer send). prost would first build the whole message, eight allocations and a copy of
//! each input's bytes for a one-input request, only for [`super::infer_request`] to take it apart into
//! the serving core's request; this builds that request in one walk of the bytes.
//!
//! Anything else (typed contents, parameters, a field of an unexpected wire type, a value the
//! converter would refuse) gives `None`, and the request takes the prost path, which answers it. So
//! both paths give the same request or the same error; the tests hold them to it.

use super::wire::{Value, next_field, read_varint};
use crate::infer::InferRequest;
use crate::tensor::{DataType, MAX_DIMS, Tensor, TensorData, element_count, shape_from_wire_into};

/// The serving core's request from `bytes`, when it is of the usual form; `None` otherwise. Meant for
/// a message the wire check has passed.
pub fn convert(bytes: &[u8]) -> Option<InferRequest> {
    let mut id = "";
    let mut inputs = Vec::new();
    let mut outputs: Option<Vec<String>> = None;
    // Where to look for the next `raw_input_contents` entry: the entries pair with the inputs in order.
    let mut raw = bytes;
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf).ok()? {
        match (number, value) {
            // model_name and model_version: the served version was found by them already.
            (1 | 2, Value::Len(v)) => _ = std::str::from_utf8(v).ok()?,
            (3, Value::Len(v)) => id = std::str::from_utf8(v).ok()?,
            (5, Value::Len(input)) => {
                let entry = next_raw(&mut raw)?;
                inputs.push(convert_input(input, entry)?);
            }
            (6, Value::Len(output)) => outputs
                .get_or_insert_with(Vec::new)
                .push(output_name(output)?),
            (7, Value::Len(_)) => {}
            // Parameters, or a known field of the wrong wire type.
            (1..=7, _) => return None,
            _ => {}
        }
    }
    // An entry left over: the entries and inputs are not as many.
    if next_raw(&mut raw).is_some() {
        return None;
    }
    Some(InferRequest {
        id: (!id.is_empty()).then(|| id.to_owned()),
        inputs,
        outputs,
        timeout: None,
    })
}

/// The next `raw_input_contents` entry after `buf`.
fn next_raw<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    while let Some((number, value)) = next_field(buf).ok()? {
        if let (7, Value::Len(entry)) = (number, value) {
            return Some(entry);
        }
    }
    None
}

/// An `InferInputTensor` without parameters or typed contents, its data `raw`.
fn convert_input(bytes: &[u8], raw: &[u8]) -> Option<Tensor> {
    let mut name = "";
    let mut datatype = "";
    let mut dims = [0i64; MAX_DIMS];
    let mut rank = 0;
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf).ok()? {
        match (number, value) {
            (1, Value::Len(v)) => name = std::str::from_utf8(v).ok()?,
            (2, Value::Len(v)) => datatype = std::str::from_utf8(v).ok()?,
            (3, Value::Varint(d)) => {
                *dims.get_mut(rank)? = d as i64;
                rank += 1;
            }
            (3, Value::Len(mut packed)) => {
                while !packed.is_empty() {
                    *dims.get_mut(rank)? = read_varint(&mut packed).ok()? as i64;
                    rank += 1;
                }
            }
            // Parameters, typed contents, or a known field of the wrong wire type.
            (1..=5, _) => return None,
            _ => {}
        }
    }
    let datatype = DataType::parse(datatype).ok()?;
    let mut sizes = [0usize; MAX_DIMS];
    let shape = shape_from_wire_into(name, &dims[..rank], &mut sizes).ok()?;
    let count = element_count(shape, raw.len()).ok()?;
    let data = TensorData::from_le_bytes(datatype, raw, count).ok()?;
    Some(Tensor {
        name: name.to_owned(),
        shape: shape.to_vec(),
        data,
    })
}

/// An `InferRequestedOutputTensor`'s name, when it has no parameters.
fn output_name(bytes: &[u8]) -> Option<String> {
    let mut name = "";
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf).ok()? {
        match (number, value) {
            (1, Value::Len(v)) => name = std::str::from_utf8(v).ok()?,
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message;

    use super::super::pb;
    use super::*;
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    fn parameter() -> HashMap<String, pb::InferParameter> {
        HashMap::from([(
            "timeout".to_owned(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(5)),
            },
        )])
    }

    /// A request of random form: mostly the usual one, sometimes with what sends it down the prost
    /// path (parameters, typed contents), sometimes wrong (sizes, counts, datatypes, dimensions).
    fn request(rng: &mut fastrand::Rng) -> pb::ModelInferRequest {
        let types = [
            ("FP32", 4),
            ("INT64", 8),
            ("UINT8", 1),
            ("BOOL", 1),
            ("FP16", 2),
        ];
        let odd = |rng: &mut fastrand::Rng| rng.u8(..20) == 0;
        let mut req = pb::ModelInferRequest {
            model_name: "m".into(),
            model_version: if rng.bool() {
                "1".into()
            } else {
                String::new()
            },
            id: if rng.bool() {
                format!("id-{}", rng.u32(..))
            } else {
                String::new()
            },
            ..Default::default()
        };
        for i in 0..rng.usize(0..4) {
            let (datatype, size) = types[rng.usize(..types.len())];
            let rows = rng.i64(0..4);
            let width = rng.i64(1..5);
            let mut shape = vec![rows, width];
            if odd(rng) {
                shape[0] = -1;
            }
            let datatype = if odd(rng) { "FLOAT" } else { datatype };
            let mut len = (rows * width).max(0) as usize * size;
            if odd(rng) {
                len += 1;
            }
            let contents = odd(rng).then(|| pb::InferTensorContents {
                fp32_contents: vec![0.5; len / 4],
                ..Default::default()
            });
            req.inputs.push(InferInputTensor {
                name: format!("in{i}"),
                datatype: datatype.into(),
                shape,
                parameters: if odd(rng) {
                    parameter()
                } else {
                    HashMap::new()
                },
                contents,
            });
            if !odd(rng) {
                req.raw_input_contents
                    .push((0..len).map(|_| rng.u8(..2)).collect());
            }
        }
        for i in 0..rng.usize(0..3) {
            req.outputs.push(InferRequestedOutputTensor {
                name: format!("out{i}"),
                parameters: if odd(rng) {
                    parameter()
                } else {
                    HashMap::new()
                },
            });
        }
        if odd(rng) {
            req.parameters = parameter();
        }
        req
    }

    /// The fast path gives what the prost path gives, whenever it gives anything, and takes the usual
    /// requests.
    #[test]
    fn converts_as_the_prost_path_does() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut fast = 0;
        for case in 0..5000 {
            let req = request(&mut rng);
            let mut bytes = req.encode_to_vec();
            // Repeated singular fields (the last counts) and unknown fields (skipped), as prost reads them.
            if case % 7 == 0 {
                prost::encoding::string::encode(3, &"last".to_owned(), &mut bytes);
                prost::encoding::uint64::encode(99, &5, &mut bytes);
            }
            let slow =
                super::super::infer_request(pb::ModelInferRequest::decode(&bytes[..]).unwrap());
            match convert(&bytes) {
                Some(converted) => {
                    fast += 1;
                    let slow =
                        slow.unwrap_or_else(|e| panic!("case {case}: prost path refused: {e}"));
                    assert_eq!(format!("{converted:?}"), format!("{slow:?}"), "case {case}");
                }
                None => {
                    let usual = req.parameters.is_empty()
                        && req.outputs.iter().all(|o| o.parameters.is_empty())
                        && req
                            .inputs
                            .iter()
                            .all(|i| i.parameters.is_empty() && i.contents.is_none());
                    assert!(
                        !usual || slow.is_err(),
                        "case {case}: a usual request the prost path takes was not converted"
                    );
                }
            }
        }
        assert!(fast > 2000, "{fast} of 5000 converted");
    }

    #[test]
    fn malformed_or_unusual_bytes_take_the_prost_path() {
        let mut bytes = Vec::new();
        prost::encoding::string::encode(1, &"m".to_owned(), &mut bytes);
        assert!(convert(&bytes).is_some());
        for tail in [
            &[0x0a, 0x05, b'a'][..],
            &[0x08, 0x01],
            &[0x3a],
            &[0x0a, 0x01, 0xff],
        ] {
            let mut bad = bytes.clone();
            bad.extend_from_slice(tail);
            assert!(convert(&bad).is_none(), "{tail:?}");
        }
    }
}

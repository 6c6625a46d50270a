//! gRPC: structured ModelInferRequest values, and their mutated wire bytes; the check of a conversion.

use std::collections::HashMap;
use std::fmt;

use keel_server::grpc::convert::wire::WireLimits;
use keel_server::grpc::pb;
use keel_server::http::codec;
use keel_server::signature::Signature;
use keel_server::tensor::{DataType, Tensor, TensorData};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use prost::Message;

use crate::generators::{
    PARAM_KEYS, byte_ops, consistent, datatype_name, dim, interesting_f64, mutate, name,
    same_tensors, valid_tensor, wire,
};
use crate::harness::Bytes;

fn infer_parameter() -> impl Strategy<Value = pb::InferParameter> + Clone {
    use pb::infer_parameter::ParameterChoice as P;
    proptest::option::of(prop_oneof![
        any::<bool>().prop_map(P::BoolParam),
        prop_oneof![any::<i64>(), -2i64..1_000_000].prop_map(P::Int64Param),
        name().prop_map(P::StringParam),
        interesting_f64().prop_map(P::DoubleParam),
        any::<u64>().prop_map(P::Uint64Param),
    ])
    .prop_map(|parameter_choice| pb::InferParameter { parameter_choice })
}

fn pb_params() -> impl Strategy<Value = HashMap<String, pb::InferParameter>> + Clone {
    hash_map(
        prop_oneof![3 => select(PARAM_KEYS.to_vec()).prop_map(String::from), 1 => name()],
        infer_parameter(),
        0..3,
    )
}

fn contents() -> impl Strategy<Value = pb::InferTensorContents> + Clone {
    let n = 0usize..6;
    (
        proptest::option::of(vec(any::<bool>(), n.clone())),
        proptest::option::of(vec(prop_oneof![any::<i32>(), -200i32..300], n.clone())),
        proptest::option::of(vec(any::<i64>(), n.clone())),
        proptest::option::of(vec(prop_oneof![any::<u32>(), 0u32..70000], n.clone())),
        proptest::option::of(vec(any::<u64>(), n.clone())),
        proptest::option::of(vec(any::<f32>(), n.clone())),
        proptest::option::of(vec(any::<f64>(), n.clone())),
        proptest::option::of(vec(vec(any::<u8>(), 0..4), n)),
    )
        .prop_map(|(b, i, i64s, u, u64s, f, d, by)| pb::InferTensorContents {
            bool_contents: b.unwrap_or_default(),
            int_contents: i.unwrap_or_default(),
            int64_contents: i64s.unwrap_or_default(),
            uint_contents: u.unwrap_or_default(),
            uint64_contents: u64s.unwrap_or_default(),
            fp32_contents: f.unwrap_or_default(),
            fp64_contents: d.unwrap_or_default(),
            bytes_contents: by.unwrap_or_default(),
        })
}

fn hostile_grpc() -> impl Strategy<Value = pb::ModelInferRequest> + Clone {
    let input = (
        name(),
        datatype_name(),
        vec(dim(), 0..5),
        pb_params(),
        proptest::option::of(contents()),
    )
        .prop_map(|(name, datatype, shape, parameters, contents)| {
            pb::model_infer_request::InferInputTensor {
                name,
                datatype,
                shape,
                parameters,
                contents,
            }
        });
    let output = (name(), pb_params()).prop_map(|(name, parameters)| {
        pb::model_infer_request::InferRequestedOutputTensor { name, parameters }
    });
    (
        name(),
        pb_params(),
        vec(input, 0..4),
        vec(output, 0..3),
        vec(vec(any::<u8>(), 0..40), 0..4),
    )
        .prop_map(|(id, parameters, inputs, outputs, raw_input_contents)| {
            pb::ModelInferRequest {
                model_name: "m".into(),
                model_version: String::new(),
                id,
                parameters,
                inputs,
                outputs,
                raw_input_contents,
            }
        })
}

/// A valid request and the tensors it must decode to: typed contents, or raw for every input.
fn valid_grpc() -> impl Strategy<Value = (pb::ModelInferRequest, Vec<Tensor>)> + Clone {
    (vec(valid_tensor(), 0..4), any::<bool>(), name()).prop_map(|(tensors, raw, id)| {
        let raw = raw || tensors.iter().any(|t| t.datatype() == DataType::Fp16);
        let mut req = pb::ModelInferRequest {
            id: id.clone(),
            ..Default::default()
        };
        for t in &tensors {
            let mut input = pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype().name().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            };
            if raw {
                req.raw_input_contents.push(wire(&t.data));
            } else {
                let mut c = pb::InferTensorContents::default();
                match &t.data {
                    TensorData::Bool(v) => c.bool_contents = v.clone(),
                    TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| x.into()).collect(),
                    TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| x.into()).collect(),
                    TensorData::Int32(v) => c.int_contents = v.clone(),
                    TensorData::Int64(v) => c.int64_contents = v.clone(),
                    TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| x.into()).collect(),
                    TensorData::Uint16(v) => {
                        c.uint_contents = v.iter().map(|&x| x.into()).collect()
                    }
                    TensorData::Uint32(v) => c.uint_contents = v.clone(),
                    TensorData::Uint64(v) => c.uint64_contents = v.clone(),
                    TensorData::Fp32(v) => c.fp32_contents = v.clone(),
                    TensorData::Fp64(v) => c.fp64_contents = v.clone(),
                    TensorData::Bytes(v) => c.bytes_contents = v.clone(),
                    TensorData::Fp16(_) => unreachable!("FP16 goes raw"),
                }
                input.contents = Some(c);
            }
            req.inputs.push(input);
        }
        (req, tensors)
    })
}

/// Large gRPC requests from repeated fields: what `gzip` makes a tiny wire message into.
#[derive(Clone, Debug)]
pub(crate) enum GrpcBulk {
    /// `n` empty `inputs` entries.
    EmptyInputs(usize),
    /// One BYTES input with `n` empty `bytes_contents`, its shape `[dim]`.
    EmptyBytes(usize, i64),
    /// One INT8 input with `n` zero `int_contents` (narrowed to a new vector), its shape `[dim]`.
    Int8Zeros(usize, i64),
    /// One input and `n` empty `raw_input_contents` entries.
    RawEntries(usize),
    /// A shape of `n` dimensions of 1.
    Rank(usize),
    /// `n` requested outputs.
    Outputs(usize),
    /// `n` request parameters.
    Params(usize),
}

fn grpc_bulk() -> impl Strategy<Value = GrpcBulk> + Clone {
    let n = select(vec![2_000usize, 20_000, 200_000]);
    let dim = prop_oneof![Just(-1i64), Just(1), Just(1 << 40)];
    prop_oneof![
        n.clone().prop_map(|n| GrpcBulk::EmptyInputs(n / 4)),
        (n.clone(), dim.clone()).prop_map(|(n, d)| GrpcBulk::EmptyBytes(n, d)),
        (n.clone(), dim).prop_map(|(n, d)| GrpcBulk::Int8Zeros(n, d)),
        n.clone().prop_map(GrpcBulk::RawEntries),
        n.clone().prop_map(GrpcBulk::Rank),
        n.clone().prop_map(|n| GrpcBulk::Outputs(n / 4)),
        n.prop_map(|n| GrpcBulk::Params(n / 10)),
    ]
}

pub(crate) fn grpc_bulk_request(b: &GrpcBulk) -> pb::ModelInferRequest {
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    let one =
        |datatype: &str, dim: i64, contents: Option<pb::InferTensorContents>| InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape: vec![if dim < 0 { 0 } else { dim }],
            parameters: HashMap::new(),
            contents,
        };
    let mut req = pb::ModelInferRequest {
        model_name: "m".into(),
        ..Default::default()
    };
    match *b {
        GrpcBulk::EmptyInputs(n) => req.inputs = vec![InferInputTensor::default(); n],
        GrpcBulk::EmptyBytes(n, dim) => {
            let c = pb::InferTensorContents {
                bytes_contents: vec![Vec::new(); n],
                ..Default::default()
            };
            req.inputs = vec![one("BYTES", if dim < 0 { n as i64 } else { dim }, Some(c))];
        }
        GrpcBulk::Int8Zeros(n, dim) => {
            let c = pb::InferTensorContents {
                int_contents: vec![0; n],
                ..Default::default()
            };
            req.inputs = vec![one("INT8", if dim < 0 { n as i64 } else { dim }, Some(c))];
        }
        GrpcBulk::RawEntries(n) => {
            req.inputs = vec![one("FP32", 1, None)];
            req.raw_input_contents = vec![Vec::new(); n];
        }
        GrpcBulk::Rank(n) => {
            let mut input = one("FP32", 1, None);
            input.shape = vec![1; n];
            req.inputs = vec![input];
            req.raw_input_contents = vec![vec![0; 4]];
        }
        GrpcBulk::Outputs(n) => {
            req.inputs = vec![one("FP32", 1, None)];
            req.raw_input_contents = vec![vec![0; 4]];
            req.outputs = vec![
                InferRequestedOutputTensor {
                    name: "label".into(),
                    parameters: HashMap::new()
                };
                n
            ];
        }
        GrpcBulk::Params(n) => {
            req.inputs = vec![one("FP32", 1, None)];
            req.raw_input_contents = vec![vec![0; 4]];
            req.parameters = (0..n)
                .map(|i| (format!("p{i}"), pb::InferParameter::default()))
                .collect();
        }
    }
    req
}

/// A request, shown as its descriptor when it came from a bulk generator.
#[derive(Clone)]
pub(crate) struct GrpcCase {
    pub(crate) req: pb::ModelInferRequest,
    pub(crate) expect: Option<Vec<Tensor>>,
    bulk: Option<GrpcBulk>,
}

impl fmt::Debug for GrpcCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.bulk {
            Some(b) => write!(f, "{b:?}"),
            None => write!(f, "{:?}", self.req),
        }
    }
}

pub(crate) fn grpc_case() -> impl Strategy<Value = GrpcCase> {
    prop_oneof![
        3 => valid_grpc().prop_map(|(req, tensors)| GrpcCase {
            req,
            expect: Some(tensors),
            bulk: None
        }),
        6 => hostile_grpc().prop_map(|req| GrpcCase {
            req,
            expect: None,
            bulk: None
        }),
        1 => grpc_bulk().prop_map(|b| GrpcCase {
            req: grpc_bulk_request(&b),
            expect: None,
            bulk: Some(b)
        }),
    ]
}

pub(crate) fn check_grpc_result(
    result: Result<keel_server::infer::InferRequest, keel_server::error::Error>,
    expect: Option<Vec<Tensor>>,
) -> Result<(), TestCaseError> {
    match (result, expect) {
        (Ok(req), expect) => {
            consistent(&req.inputs)?;
            if let Some(want) = expect {
                same_tensors(&req.inputs, &want)?;
            }
        }
        (Err(e), Some(_)) => {
            return Err(TestCaseError::fail(format!(
                "a valid request was refused: {e}"
            )));
        }
        (Err(e), None) => {
            let code = e.grpc_code();
            prop_assert!(
                matches!(
                    code,
                    tonic::Code::InvalidArgument
                        | tonic::Code::Unimplemented
                        | tonic::Code::ResourceExhausted
                ),
                "refused with {code:?}: {e}"
            );
        }
    }
    Ok(())
}

pub(crate) fn wire_limits(signature: Option<&Signature>) -> WireLimits<'_> {
    WireLimits {
        signature,
        max_bytes_elements: codec::DEFAULT_MAX_BYTES_ELEMENTS,
    }
}

#[derive(Clone, Debug)]
pub(crate) struct WireCase {
    pub(crate) bytes: Bytes,
}

/// `ModelInferRequest` messages as bytes: encoded valid or hostile requests, byte-mutated, or a run of
/// one repeated field.
pub(crate) fn wire_case() -> impl Strategy<Value = WireCase> {
    let encoded = prop_oneof![valid_grpc().prop_map(|(req, _)| req), hostile_grpc()]
        .prop_map(|req| req.encode_to_vec());
    let mutated = (encoded.clone(), byte_ops()).prop_map(|(mut bytes, ops)| {
        mutate(&mut bytes, &ops);
        WireCase {
            bytes: Bytes {
                bytes,
                origin: "mutated encoding".into(),
            },
        }
    });
    let plain = encoded.prop_map(|bytes| WireCase {
        bytes: Bytes {
            bytes,
            origin: "encoding".into(),
        },
    });
    // Field 5 (inputs) or 7 (raw_input_contents), length 0, `n` times; or one input whose contents
    // (field 5 of the input) hold `n` empty bytes_contents (field 8) or packed int64 zeros (field 3).
    let runs = (0u8..4, select(vec![2_000usize, 20_000, 200_000])).prop_map(|(kind, n)| {
        let bytes = match kind {
            0 => [0x2a, 0x00].repeat(n),
            1 => [0x3a, 0x00].repeat(n),
            2 => {
                let contents = [0x42, 0x00].repeat(n);
                nest_field(0x2a, &nest_field(0x2a, &contents))
            }
            _ => {
                let zeros = vec![0u8; n];
                let packed = nest_field(0x1a, &zeros);
                nest_field(0x2a, &nest_field(0x2a, &packed))
            }
        };
        WireCase {
            bytes: Bytes {
                bytes,
                origin: format!("field run kind {kind} x {n}"),
            },
        }
    });
    prop_oneof![2 => plain, 6 => mutated, 1 => runs, 1 => vec(any::<u8>(), 0..256).prop_map(|bytes| WireCase {
        bytes: Bytes { bytes, origin: "random bytes".into() }
    })]
}

/// `tag` followed by the varint length of `body` and `body`.
fn nest_field(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

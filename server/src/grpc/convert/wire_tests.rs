use super::*;
use prost::Message;

use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

fn field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn input(
    datatype: &str,
    shape: Vec<i64>,
    contents: Option<pb::InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: datatype.into(),
        shape,
        parameters: Default::default(),
        contents,
    }
}

fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "m".into(),
        model_version: "1".into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn signature() -> Signature {
    let spec = |name: &str, datatype, shape: Vec<i64>| crate::signature::TensorSpec {
        name: name.into(),
        datatype,
        shape,
    };
    Signature {
        inputs: vec![spec("input", DataType::Fp32, vec![-1, 30])],
        outputs: vec![spec("label", DataType::Int64, vec![-1])],
        max_batch_size: 1024,
    }
}

fn limits(signature: &Signature) -> WireLimits<'_> {
    WireLimits {
        signature: Some(signature),
        max_bytes_elements: 1000,
    }
}

/// The wire check and the decoded check agree, and refuse with `needle`.
fn refused(req: &pb::ModelInferRequest, sig: Option<&Signature>, needle: &str) {
    let limits = WireLimits {
        signature: sig,
        max_bytes_elements: 1000,
    };
    let wire = check(&req.encode_to_vec(), limits).unwrap_err().to_string();
    let decoded = check_decoded(req, limits).unwrap_err().to_string();
    assert!(wire.contains(needle), "wire: {wire}");
    assert_eq!(wire, decoded);
}

#[test]
fn good_requests_pass_with_their_size() {
    let sig = signature();
    let raw = request(vec![input("FP32", vec![2, 30], None)], vec![vec![0; 240]]);
    let bytes = raw.encode_to_vec();
    let e = check(&bytes, limits(&sig)).unwrap();
    assert_eq!(e.tensor_bytes, 240);
    assert!(e.message_bytes >= bytes.len());
    assert_eq!(model_of(&bytes).unwrap(), ("m", "1"));
    let typed = request(
        vec![input(
            "FP32",
            vec![1, 30],
            Some(pb::InferTensorContents {
                fp32_contents: vec![0.5; 30],
                ..Default::default()
            }),
        )],
        vec![],
    );
    assert_eq!(
        check(&typed.encode_to_vec(), limits(&sig))
            .unwrap()
            .tensor_bytes,
        120
    );
    assert_eq!(
        check_decoded(&typed, limits(&sig)).unwrap().tensor_bytes,
        120
    );
}

#[test]
fn each_input_is_checked_against_its_own_raw_entry() {
    let named = |name: &str, datatype: &str, shape: Vec<i64>| InferInputTensor {
        name: name.into(),
        ..input(datatype, shape, None)
    };
    let inputs = || {
        vec![
            named("a", "FP32", vec![1, 2]),
            named("b", "INT64", vec![1, 3]),
        ]
    };
    let unchecked = WireLimits {
        signature: None,
        max_bytes_elements: 1000,
    };
    // Another field between the two entries: each input still finds its own.
    let mut bytes = request(inputs(), vec![]).encode_to_vec();
    bytes.extend(field(7, &[0; 8]));
    bytes.extend(field(3, b"id"));
    bytes.extend(field(7, &[0; 24]));
    assert_eq!(check(&bytes, unchecked).unwrap().tensor_bytes, 32);
    let decoded = pb::ModelInferRequest::decode(&bytes[..]).unwrap();
    assert_eq!(decoded.raw_input_contents.len(), 2);
    assert_eq!(check_decoded(&decoded, unchecked).unwrap().tensor_bytes, 32);
    // The entries in the other order: the first input's entry is now the second's size.
    let swapped = request(inputs(), vec![vec![0; 24], vec![0; 8]]);
    refused(&swapped, None, "input 'a'");
    refused(
        &request(vec![named("a", "FP32", vec![1, -2])], vec![vec![0; 8]]),
        None,
        "input 'a': negative dimension in shape [1, -2]",
    );
}

#[test]
fn refusals_match_the_converter() {
    let sig = signature();
    let s = Some(&sig);
    let bytes_for_fp32 = request(
        vec![input(
            "BYTES",
            vec![1, 3],
            Some(pb::InferTensorContents {
                bytes_contents: vec![Vec::new(); 3],
                ..Default::default()
            }),
        )],
        vec![],
    );
    refused(
        &bytes_for_fp32,
        s,
        "has datatype BYTES, the model expects FP32",
    );
    let wrong_field = request(
        vec![input(
            "FP32",
            vec![1, 30],
            Some(pb::InferTensorContents {
                bytes_contents: vec![Vec::new(); 30],
                ..Default::default()
            }),
        )],
        vec![],
    );
    refused(
        &wrong_field,
        s,
        "FP32 data belongs in fp32_contents, not bytes_contents",
    );
    let short = request(vec![input("FP32", vec![1, 30], None)], vec![vec![0; 116]]);
    refused(&short, s, "needs 120 bytes, got 116");
    let rows = request(
        vec![input("FP32", vec![1 << 40, 30], None)],
        vec![vec![0; 120]],
    );
    refused(&rows, s, "more than the model's max_batch_size 1024");
    refused(&rows, None, "more elements than the request carries");
    let two = request(
        vec![
            input("FP32", vec![1, 30], None),
            input("FP32", vec![1, 30], None),
        ],
        vec![vec![0; 120], vec![0; 120]],
    );
    refused(&two, s, "given more than once");
    let extra = request(
        vec![input("FP32", vec![1, 30], None)],
        vec![vec![0; 120]; 2],
    );
    refused(&extra, s, "raw_input_contents has 2 entries for 1 inputs");
    let mut outputs = request(vec![input("FP32", vec![1, 30], None)], vec![vec![0; 120]]);
    outputs.outputs = vec![
        InferRequestedOutputTensor {
            name: "label".into(),
            parameters: Default::default(),
        };
        2
    ];
    refused(&outputs, s, "output 'label' is requested more than once");
    outputs.outputs[1].name = "nope".into();
    refused(&outputs, s, "unknown output 'nope' requested");
    let rank = request(vec![input("FP32", vec![1; 65], None)], vec![vec![0; 4]]);
    refused(&rank, None, "more than 64 dimensions");
}

#[test]
fn bytes_elements_are_capped_per_request() {
    let bytes = |n: usize| {
        request(
            vec![input(
                "BYTES",
                vec![n as i64],
                Some(pb::InferTensorContents {
                    bytes_contents: vec![b"ab".to_vec(); n],
                    ..Default::default()
                }),
            )],
            vec![],
        )
    };
    let limits = WireLimits {
        signature: None,
        max_bytes_elements: 1000,
    };
    let e = check(&bytes(1000).encode_to_vec(), limits).unwrap();
    assert_eq!(e.tensor_bytes, 1000 * (24 + 2));
    refused(&bytes(1001), None, "more than 1000 elements together");
    // Raw BYTES: the cap, and at least a 4-byte length per element.
    let raw = request(
        vec![input("BYTES", vec![1001], None)],
        vec![vec![0; 4 * 1001]],
    );
    refused(&raw, None, "more than 1000 elements together");
    let raw = request(vec![input("BYTES", vec![10], None)], vec![vec![0; 39]]);
    refused(&raw, None, "needs at least 40 bytes");
}

#[test]
fn millions_of_empty_entries_cost_nothing_to_refuse() {
    let sig = signature();
    // 2 wire bytes each, a 24-byte Vec each once decoded: refused from the counts alone.
    let n = 4_000_000;
    let mut tensor = input("FP32", vec![1, 30], None).encode_to_vec();
    tensor.extend(field(5, &b"\x42\x00".repeat(n)));
    let mut bytes = pb::ModelInferRequest {
        model_name: "m".into(),
        ..Default::default()
    }
    .encode_to_vec();
    bytes.extend(field(5, &tensor));
    let err = check(&bytes, limits(&sig)).unwrap_err().to_string();
    assert!(err.contains("not bytes_contents"), "{err}");
    // Empty `inputs` entries: counted in the first pass, never descended into.
    let bytes = [&b"\x0a\x01m"[..], &b"\x2a\x00".repeat(n)].concat();
    let err = check(&bytes, limits(&sig)).unwrap_err().to_string();
    assert!(err.contains("at most 4096"), "{err}");
    let bytes = [&b"\x0a\x01m"[..], &b"\x3a\x00".repeat(n)].concat();
    let err = check(&bytes, limits(&sig)).unwrap_err().to_string();
    assert!(err.contains("raw_input_contents has"), "{err}");
    let bytes = [&b"\x0a\x01m"[..], &b"\x22\x00".repeat(n)].concat();
    let err = check(&bytes, limits(&sig)).unwrap_err().to_string();
    assert!(err.contains("parameters; at most"), "{err}");
}

#[test]
fn malformed_wire_bytes_are_refused_not_panicked_on() {
    let sig = signature();
    for bytes in [
        &b"\x0a\x05ab"[..],
        b"\x0a\x01\xff",
        b"\x00",
        b"\x0b",
        b"\x2a\x03\x1a\x01",
        b"\x2a\x04\x2a\x02\x0a\x80",
        b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
    ] {
        let err = check(bytes, limits(&sig)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bytes:?}: {err}");
    }
}

#[test]
fn varints_of_every_length_read_as_prost_writes_them() {
    let mut values = vec![
        0,
        1,
        0x7f,
        0x80,
        0x3fff,
        0x4000,
        u64::from(u32::MAX),
        u64::MAX,
    ];
    values.extend((0..64).map(|bit| 1u64 << bit));
    for value in values {
        let mut bytes = Vec::new();
        prost::encoding::encode_varint(value, &mut bytes);
        bytes.push(0x2a);
        let mut buf = &bytes[..];
        assert_eq!(read_varint(&mut buf).unwrap(), value);
        assert_eq!(buf, [0x2a], "{value}: the rest is left");
        // Cut anywhere before its last byte, it is refused.
        for cut in 0..bytes.len() - 1 {
            let mut short = &bytes[..cut];
            assert!(read_varint(&mut short).is_err(), "{value} cut at {cut}");
        }
    }
    let mut eleven = &[0x80u8; 11][..];
    assert!(read_varint(&mut eleven).is_err());
}

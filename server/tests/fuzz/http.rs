//! HTTP: the cases of the `http_json` and `http_binary` targets (valid, edited, byte-mutated, bulk and
//! random bodies), the model signature they are decoded against, and the check of each decode.

use keel_server::http::codec::{self, DecodeLimits};
use keel_server::signature::{Signature, TensorSpec};
use keel_server::tensor::{DataType, Tensor};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

use crate::DECODE_FACTOR;
use crate::generators::{byte_ops, consistent, mutate, same_tensors};
use crate::harness::{Bytes, Stats, measured};
use crate::http_bulk::{bulk, bulk_body};
use crate::http_request::{ValidRequest, apply_edit, edit, to_json, valid_request};

#[derive(Debug)]
pub(crate) struct HttpCase {
    body: Bytes,
    json_len: Option<usize>,
    /// Decode against the model signature of `signature()` (else without one, as `decode_request`).
    with_signature: bool,
    /// Set when the request was built valid: it must decode to exactly this.
    expect: Option<ValidRequest>,
}

pub(crate) fn http_case(binary: bool) -> impl Strategy<Value = HttpCase> {
    let valid = valid_request(binary).prop_map(move |mut req| {
        let (doc, tail) = to_json(&mut req, binary);
        let mut body = serde_json::to_vec(&doc).unwrap();
        let json_len = (binary || !tail.is_empty()).then_some(body.len());
        body.extend_from_slice(&tail);
        HttpCase {
            body: Bytes {
                bytes: body,
                origin: "valid request".into(),
            },
            json_len,
            with_signature: false,
            expect: Some(req),
        }
    });
    let edited = (valid_request(binary), vec(edit(), 1..4)).prop_map(move |(mut req, edits)| {
        let (mut doc, tail) = to_json(&mut req, binary);
        for e in &edits {
            apply_edit(&mut doc, e);
        }
        let mut body = serde_json::to_vec(&doc).unwrap();
        let json_len = (binary || !tail.is_empty()).then_some(body.len());
        body.extend_from_slice(&tail);
        HttpCase {
            body: Bytes {
                bytes: body,
                origin: format!("edits {edits:?}"),
            },
            json_len,
            with_signature: false,
            expect: None,
        }
    });
    // json_len moved: the split lands inside the JSON, inside the tail, or past the body.
    let shift = prop_oneof![
        4 => Just(0i64),
        1 => -8i64..8,
        1 => select(vec![i64::MIN, i64::MAX, -1_000_000, 1_000_000]),
    ];
    let mutated =
        (valid_request(binary), byte_ops(), shift).prop_map(move |(mut req, ops, shift)| {
            let (doc, tail) = to_json(&mut req, binary);
            let mut body = serde_json::to_vec(&doc).unwrap();
            let json_len = (binary || !tail.is_empty()).then(|| {
                let n = body.len() as i64;
                n.saturating_add(shift).max(0) as usize
            });
            body.extend_from_slice(&tail);
            mutate(&mut body, &ops);
            HttpCase {
                body: Bytes {
                    bytes: body,
                    origin: format!("byte ops {ops:?}"),
                },
                json_len,
                with_signature: false,
                expect: None,
            }
        });
    let bulky = bulk().prop_map(|b| {
        let (body, json_len) = bulk_body(&b);
        HttpCase {
            body: Bytes {
                bytes: body,
                origin: format!("{b:?}"),
            },
            json_len,
            with_signature: false,
            expect: None,
        }
    });
    let random = (vec(any::<u8>(), 0..256), proptest::option::of(0usize..300)).prop_map(
        move |(bytes, json_len)| HttpCase {
            body: Bytes {
                bytes,
                origin: "random bytes".into(),
            },
            json_len: json_len.filter(|_| binary),
            with_signature: false,
            expect: None,
        },
    );
    (
        prop_oneof![3 => valid, 4 => edited, 3 => mutated, 1 => bulky, 1 => random],
        any::<bool>(),
    )
        .prop_map(|(mut case, with_signature)| {
            case.with_signature = with_signature;
            case
        })
}

/// A model like breast-cancer plus a BYTES input: what the server decodes requests against.
pub(crate) fn signature() -> Signature {
    let spec = |name: &str, datatype, shape: &[i64]| TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    };
    Signature {
        inputs: vec![
            spec("input", DataType::Fp32, &[-1, 30]),
            spec("text", DataType::Bytes, &[-1, -1]),
        ],
        outputs: vec![
            spec("label", DataType::Int64, &[-1]),
            spec("probabilities", DataType::Fp32, &[-1, 2]),
        ],
        max_batch_size: 1024,
    }
}

pub(crate) fn check_http(case: HttpCase, stats: &Stats) -> Result<(), TestCaseError> {
    let body = &case.body.bytes;
    let signature = signature();
    let limits = DecodeLimits {
        signature: case.with_signature.then_some(&signature),
        ..DecodeLimits::default()
    };
    let (result, peak) = measured(|| codec::decode_request_with(body, case.json_len, limits, None));
    stats.outcome(&result);
    stats.bound("decode_request_with", body.len(), peak, DECODE_FACTOR)?;
    let expect = case.expect.filter(|_| !case.with_signature);
    if let (Ok(decoded), true) = (&result, case.with_signature) {
        // Every accepted input is one of the model's, with its datatype and a shape it allows.
        for t in &decoded.request.inputs {
            let spec = signature
                .input(&t.name)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(t.datatype(), spec.datatype, "input '{}'", t.name);
            prop_assert_eq!(t.shape.len(), spec.shape.len(), "input '{}'", t.name);
            for (&got, &want) in t.shape.iter().zip(&spec.shape) {
                prop_assert!(
                    want < 0 || got as i64 == want,
                    "input '{}' shape {:?}",
                    t.name,
                    t.shape
                );
            }
            prop_assert!(
                t.shape[0] <= 1024,
                "input '{}' has {} rows",
                t.name,
                t.shape[0]
            );
        }
    }
    match (result, expect) {
        (Ok(decoded), expect) => {
            let req = &decoded.request;
            consistent(&req.inputs)?;
            // The in-flight budget is charged at least what the decoded tensors hold.
            let held: usize = req.inputs.iter().map(|t| t.data.heap_bytes()).sum();
            prop_assert!(
                held <= decoded.tensor_bytes,
                "tensors hold {held} bytes, the budget was charged {}",
                decoded.tensor_bytes
            );
            if let Some(want) = expect {
                let tensors: Vec<Tensor> = want.inputs.into_iter().map(|(t, _)| t).collect();
                same_tensors(&req.inputs, &tensors)?;
                prop_assert_eq!(&req.id, &want.id);
                prop_assert_eq!(
                    req.outputs.clone(),
                    want.outputs
                        .map(|o| o.into_iter().map(|(n, _)| n).collect::<Vec<_>>())
                );
                prop_assert_eq!(
                    req.timeout,
                    want.timeout
                        .filter(|&t| t > 0)
                        .map(std::time::Duration::from_micros)
                );
            }
        }
        (Err(e), Some(_)) => {
            return Err(TestCaseError::fail(format!(
                "a valid request was refused: {e}"
            )));
        }
        (Err(e), None) => {
            // A refusal is the client's fault or an unsupported feature, never an internal error.
            let status = e.http_status().as_u16();
            prop_assert!(
                status == 400 || status == 413 || status == 501,
                "refused with {status}: {e}"
            );
        }
    }
    Ok(())
}

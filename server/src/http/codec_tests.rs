//! Tests of request decoding and response encoding, JSON and binary.

use super::*;
use crate::budget::Budget;
use crate::signature::TensorSpec;
use crate::tensor::MAX_DIMS;

fn signature() -> Signature {
    Signature {
        inputs: vec![
            TensorSpec {
                name: "x".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 2],
            },
            TensorSpec {
                name: "s".into(),
                datatype: DataType::Bytes,
                shape: vec![-1, -1],
            },
        ],
        outputs: vec![TensorSpec {
            name: "y".into(),
            datatype: DataType::Fp32,
            shape: vec![-1],
        }],
        max_batch_size: 4,
    }
}

fn decode(body: &str, permit: Option<&mut Permit>) -> Result<DecodedRequest> {
    let sig = signature();
    let limits = DecodeLimits {
        signature: Some(&sig),
        max_bytes_elements: 4,
    };
    decode_request_with(body.as_bytes(), None, limits, permit)
}

fn refused(body: &str) -> String {
    match decode(body, None) {
        Ok(_) => panic!("accepted: {body}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_request_takes_its_tensors_from_the_budget() {
    let budget = Budget::unmetered(1000);
    let mut permit = budget.empty();
    let body = r#"{"id": "r", "parameters": {"timeout": 5, "p": "x", "q": 1.5, "b": false},
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
                   {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["ab"], [""]]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}], "extra": [1, {"a": 2}]}"#;
    let decoded = decode(body, Some(&mut permit)).unwrap();
    assert_eq!(decoded.request.inputs.len(), 2);
    assert_eq!(decoded.request.outputs, Some(vec!["y".to_string()]));
    assert_eq!(decoded.tensor_bytes, permit.bytes());
    assert!(decoded.tensor_bytes >= 16 + 2 * 24);
    let held: usize = decoded
        .request
        .inputs
        .iter()
        .map(|t| t.data.heap_bytes())
        .sum();
    assert!(held <= decoded.tensor_bytes);
    // No room for the tensors: 429 before anything is built.
    let budget = Budget::unmetered(10);
    let mut permit = budget.empty();
    assert!(matches!(
        decode(body, Some(&mut permit)),
        Err(Error::PayloadTooLarge(_))
    ));
    let mut permit = Budget::unmetered(100).acquire(90).unwrap();
    assert!(matches!(
        decode(body, Some(&mut permit)),
        Err(Error::Overloaded(_))
    ));
}

#[test]
fn headers_are_checked_before_data() {
    // The data after a bad header is not data any datatype takes: it is never decoded.
    let junk = r#""data": [[["a", {"b": null}]]]}"#;
    for (body, needle) in [
        (
            format!(
                r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "BYTES", {junk}]}}"#
            ),
            "has datatype BYTES, the model expects FP32",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "z", "shape": [1, 2], "datatype": "FP32", {junk}]}}"#
            ),
            "unknown input 'z'",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "x", "shape": [1, 3], "datatype": "FP32", {junk}]}}"#
            ),
            "expects [-1, 2]",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "x", "shape": [5, 2], "datatype": "FP32", {junk}]}}"#
            ),
            "max_batch_size 4",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}},
                               {{"name": "x", "shape": [1, 2], "datatype": "FP32", {junk}]}}"#
            ),
            "given more than once",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "s", "shape": [1, 5], "datatype": "BYTES", {junk}]}}"#
            ),
            "more than 4 elements",
        ),
        (
            format!(r#"{{"outputs": [{{"name": "nope"}}], "inputs": [{{"name": "x", {junk}]}}"#),
            "unknown output 'nope'",
        ),
    ] {
        let err = refused(&body);
        assert!(err.contains(needle), "{body}: {err}");
    }
}

#[test]
fn parameters_are_scalars() {
    let good = r#"{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}"#;
    for (params, needle) in [
        (
            r#"{"a": [1, 2]}"#,
            "parameter 'a' must be a boolean, number or string, not an array",
        ),
        (r#"{"a": {"b": 1}}"#, "not an object"),
        (r#"{"a": null}"#, "not null"),
        (r#"[1]"#, "invalid type: sequence"),
    ] {
        let err = refused(&format!(
            r#"{{"parameters": {params}, "inputs": [{good}]}}"#
        ));
        assert!(err.contains(needle), "{params}: {err}");
    }
    let many: Vec<String> = (0..=MAX_PARAMETERS)
        .map(|i| format!(r#""k{i}": 1"#))
        .collect();
    let err = refused(&format!(
        r#"{{"parameters": {{{}}}, "inputs": [{good}]}}"#,
        many.join(",")
    ));
    assert!(err.contains("more than 256 parameters"), "{err}");
    assert!(
        decode(
            &format!(r#"{{"parameters": null, "inputs": [{good}]}}"#),
            None
        )
        .is_ok()
    );
}

#[tokio::test]
async fn error_bodies_become_json() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let text = (
        StatusCode::BAD_REQUEST,
        "Invalid URL: Invalid UTF-8 in `model`",
    )
        .into_response();
    let json = json_error_body(text).await;
    assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
    let body = axum::body::to_bytes(json.into_body(), 1024).await.unwrap();
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["error"], "Invalid URL: Invalid UTF-8 in `model`");
    let empty = StatusCode::METHOD_NOT_ALLOWED.into_response();
    let body = axum::body::to_bytes(json_error_body(empty).await.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&body[..], br#"{"error":"method not allowed"}"#);
    // JSON errors and successes pass untouched.
    let ok = (StatusCode::OK, "plain").into_response();
    assert_eq!(
        json_error_body(ok).await.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    let err = Error::invalid("x").into_response();
    let body = axum::body::to_bytes(json_error_body(err).await.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&body[..], br#"{"error":"x"}"#);
}

#[test]
fn raw_binary_requests_take_their_shape_from_the_signature() {
    let one = |datatype, shape: &[i64], max_batch_size| Signature {
        inputs: vec![TensorSpec {
            name: "x".into(),
            datatype,
            shape: shape.to_vec(),
        }],
        outputs: Vec::new(),
        max_batch_size,
    };
    let raw = |sig: &Signature, body: &[u8]| {
        let limits = DecodeLimits {
            signature: Some(sig),
            max_bytes_elements: 4,
        };
        decode_request_with(body, Some(0), limits, None)
    };
    let refused = |sig: &Signature, body: &[u8]| match raw(sig, body) {
        Ok(_) => panic!("accepted {body:?}"),
        Err(e) => e.to_string(),
    };
    // Fixed dimensions: a batch of one, exactly shape x element size.
    let fixed = one(DataType::Fp32, &[-1, 2], 8);
    let decoded = raw(&fixed, &[0; 8]).unwrap();
    let t = &decoded.request.inputs[0];
    assert_eq!((t.shape.as_slice(), t.data.len()), (&[1, 2][..], 2));
    assert!(decoded.binary.is_binary("anything"));
    assert_eq!(decoded.request.outputs, None);
    assert_eq!(decoded.tensor_bytes, 8);
    let err = refused(&fixed, &[0; 7]);
    assert!(err.contains("needs 8 bytes, got 7"), "{err}");
    // One variable dimension besides the batch: sized from the body, in whole rows.
    let rows = one(DataType::Int16, &[-1, -1, 3], 8);
    let decoded = raw(&rows, &[0; 24]).unwrap();
    assert_eq!(decoded.request.inputs[0].shape, vec![1, 4, 3]);
    let err = refused(&rows, &[0; 25]);
    assert!(err.contains("rows of 6 bytes"), "{err}");
    // Without batching the leading -1 is the variable dimension.
    let unbatched = one(DataType::Uint8, &[-1, 2], 0);
    assert_eq!(
        raw(&unbatched, &[1; 6]).unwrap().request.inputs[0].shape,
        vec![3, 2]
    );
    let err = refused(&one(DataType::Fp32, &[-1, -1, -1], 8), &[0; 8]);
    assert!(err.contains("more than one variable dimension"), "{err}");
    // BYTES: one element, the whole body, NUL and non-UTF-8 bytes included.
    let text = one(DataType::Bytes, &[-1, 1], 8);
    let decoded = raw(&text, b"a\0\xffb").unwrap();
    let t = &decoded.request.inputs[0];
    assert_eq!(t.shape, vec![1, 1]);
    assert_eq!(t.data, TensorData::Bytes(vec![b"a\0\xffb".to_vec()]));
    assert_eq!(
        raw(&one(DataType::Bytes, &[], 0), b"")
            .unwrap()
            .request
            .inputs[0]
            .shape,
        Vec::<usize>::new()
    );
    for shape in [&[-1, 3][..], &[-1, -1]] {
        let err = refused(&one(DataType::Bytes, shape, 8), b"abc");
        assert!(err.contains("one BYTES element"), "{err}");
    }
    // Not one input, or no signature to say what the body is.
    let err = refused(&signature(), &[0; 8]);
    assert!(
        err.contains("exactly one input; this model has 2 (x, s)"),
        "{err}"
    );
    let err = decode_request(&[0; 8], Some(0))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("needs the model's configuration"), "{err}");
    // The tensor's bytes come from the budget before it is built.
    let budget = Budget::unmetered(4);
    let mut permit = budget.empty();
    let limits = DecodeLimits {
        signature: Some(&fixed),
        max_bytes_elements: 4,
    };
    let err = decode_request_with(&[0; 8], Some(0), limits, Some(&mut permit));
    assert!(matches!(err, Err(Error::PayloadTooLarge(_))));
}

#[test]
fn data_is_read_apart_from_the_rest() {
    let ok = |body: &str| match decode(body, None) {
        Ok(d) => d.request.inputs,
        Err(e) => panic!("{body}: {e}"),
    };
    // `data` before the header it needs, pretty-printed, or with a key spelled with an escape (which
    // the walk leaves to serde_json): the same tensors.
    let want = TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]);
    for body in [
        r#"{"inputs": [{"data": [[1, 2], [3, 4]], "name": "x", "shape": [2, 2], "datatype": "FP32"}]}"#,
        "{\n  \"inputs\": [\n    {\n      \"name\": \"x\",\n      \"shape\": [2, 2],\n      \"datatype\": \"FP32\",\n      \"data\": [\n        [1.0, 2.0],\n        [3.0, 4.0]\n      ]\n    }\n  ]\n}",
        r#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "d\u0061ta": [1, 2, 3, 4]}]}"#,
    ] {
        assert_eq!(ok(body)[0].data, want, "{body}");
    }
    let inputs = ok(
        r#"{"inputs": [{"name": "s", "shape": [1, 2], "datatype": "BYTES", "data": [["a,]\"[", "}"]]},
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [5, 6]}]}"#,
    );
    assert_eq!(
        inputs[0].data,
        TensorData::Bytes(vec![b"a,]\"[".to_vec(), b"}".to_vec()])
    );
    assert_eq!(inputs[1].data, TensorData::Fp32(vec![5.0, 6.0]));
    // Bad data is the input's fault, named; a request that does not parse is malformed, with
    // serde_json's position in the request itself.
    let x = |data: &str| {
        format!(
            r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": {data}}}]}}"#
        )
    };
    for (body, needle) in [
        (x("[1 2]"), "input 'x': FP32 data: expected `,` or `]`"),
        (x("[1, 01]"), "input 'x': FP32 data: invalid number"),
        (
            x(r#"[1, "2"]"#),
            r#"input 'x': FP32 data: string "2" is not a valid FP32 value"#,
        ),
        (
            x("[1, 2, 3]"),
            "input 'x': FP32 data: more elements than the shape's 2",
        ),
        (x("null"), "input 'x' has no data"),
        (
            x("[1, 2"),
            "malformed inference request: expected `,` or `]` at line 1 column 77",
        ),
        (
            x("[1, 2]}"),
            "malformed inference request: expected `,` or `]` at line 1 column 79",
        ),
        (
            x(r#"[1, 2], "data": [3, 4]"#),
            "malformed inference request: duplicate field `data` at line 1 column 85",
        ),
        (
            format!("{} 1", x("[1, 2]")),
            "trailing characters at line 1 column 82 (binary tensor data needs",
        ),
    ] {
        let err = refused(&body);
        assert!(err.contains(needle), "{body}: {err}");
    }
}

#[test]
fn without_a_signature_the_payload_bounds_the_count() {
    let err = decode_request(
        br#"{"inputs": [{"name": "x", "shape": [1000000], "datatype": "FP64", "data": [1, 2]}]}"#,
        None,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("more elements than the request carries"),
        "{err}"
    );
    let dims = vec!["1"; MAX_DIMS + 1].join(",");
    let body = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [{dims}], "datatype": "FP32", "data": [1]}}]}}"#
    );
    let err = decode_request(body.as_bytes(), None)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("more than 64 dimensions"), "{err}");
}

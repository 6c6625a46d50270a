//! Every way a client can get a request wrong: a 4xx with a JSON error naming the problem, and the server
//! keeps serving. Nothing here may produce a 5xx, a hang, or a large allocation.
//!
//! The HTTP tests are here, at the crate root (their names are what `cargo test` prints); the gRPC ones
//! in grpc.rs (`grpc::...`); what the HTTP tests share in support.rs.

#[path = "../common/mod.rs"]
mod common;
mod grpc;
mod support;

use std::time::Duration;

use common::{TempRepo, TestServer, breast_cancer_rows, example_models, infer_body, workspace};
use keel_server::ServeConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{assert_rejected, input, metric, raw_http, with_element, zeros};

const INFER: &str = "/v2/models/breast-cancer/infer";

#[tokio::test]
async fn malformed_requests_get_clear_400s() {
    let s = TestServer::start(&example_models()).await;
    let thirty = json!(breast_cancer_rows(1));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"inputs\": [".to_vec(), "malformed"),
        (br#"{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1, 2"#.to_vec(), "malformed"),
        (b"\xff\xfe{}".to_vec(), "utf-8"),
        (br#"{"inputs": "input"}"#.to_vec(), "malformed"),
        (br#"{"inputs": [{"name": "input", "shape": "1,30", "datatype": "FP32", "data": []}]}"#.to_vec(), "malformed"),
        (br#"{"inputs": [{"name": "input", "name": "x", "shape": [1,30], "datatype": "FP32", "data": []}]}"#.to_vec(), "duplicate field"),
        (serde_json::to_vec(&json!({ "inputs": [] })).unwrap(), "missing input 'input'"),
        (serde_json::to_vec(&json!({ "inputs": [
            { "name": "input", "shape": [1, 30], "datatype": "FP32", "data": thirty },
            { "name": "extra", "shape": [1], "datatype": "FP32", "data": [1] }] })).unwrap(), "unknown input 'extra'"),
        (serde_json::to_vec(&json!({ "inputs": [
            { "name": "input", "shape": [1, 30], "datatype": "FP32", "data": thirty },
            { "name": "input", "shape": [1, 30], "datatype": "FP32", "data": thirty }] })).unwrap(), "more than once"),
        (serde_json::to_vec(&input(json!([1, 30]), "FP64", thirty.clone())).unwrap(), "expects FP32"),
        (serde_json::to_vec(&input(json!([1, 30]), "FP33", thirty.clone())).unwrap(), "unknown datatype"),
        (serde_json::to_vec(&input(json!([1, 30]), "FP32", json!(breast_cancer_rows(2)[..31]))).unwrap(), "more elements"),
        (serde_json::to_vec(&input(json!([2, 30]), "FP32", thirty.clone())).unwrap(), "needs 60"),
        (serde_json::to_vec(&input(json!([1, 31]), "FP32", thirty.clone())).unwrap(), "expects [-1, 30]"),
        (serde_json::to_vec(&input(json!([1, 29]), "FP32", json!(breast_cancer_rows(1)[..29]))).unwrap(), "expects [-1, 30]"),
        (serde_json::to_vec(&input(json!([-1, 30]), "FP32", thirty.clone())).unwrap(), "negative dimension"),
        (serde_json::to_vec(&input(json!([4294967296u64, 30]), "FP32", thirty.clone())).unwrap(), "more than the model's max_batch_size 1024"),
        (serde_json::to_vec(&input(json!([1024, 30]), "FP32", thirty.clone())).unwrap(), "more elements than the request carries"),
        (serde_json::to_vec(&input(json!([u64::MAX, 2]), "FP32", thirty.clone())).unwrap(), "malformed"),
        (serde_json::to_vec(&input(json!([2, 30]), "FP32", json!([vec![1; 30], vec![1; 29]]))).unwrap(), "ragged"),
        (serde_json::to_vec(&input(json!([1, 30]), "FP32", with_element(json!("two")))).unwrap(), "string \"two\""),
        (serde_json::to_vec(&input(json!([1, 30]), "FP32", with_element(Value::Null))).unwrap(), "null"),
        (serde_json::to_vec(&json!({ "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32" }] })).unwrap(), "has no data"),
        (serde_json::to_vec(&json!({ "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": thirty }],
            "outputs": [{ "name": "nope" }] })).unwrap(), "unknown output 'nope'"),
        (serde_json::to_vec(&json!({ "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": thirty }],
            "outputs": [{ "name": "label", "parameters": { "binary_data": "yes" } }] })).unwrap(), "must be a boolean"),
        (serde_json::to_vec(&input(json!([2000, 30]), "FP32", json!(vec![0.5f32; 60000]))).unwrap(), "max_batch_size"),
    ];
    for (body, needle) in cases {
        assert_rejected(&s, INFER, body, &[], 400, needle).await;
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn json_bomb_is_refused() {
    let s = TestServer::start(&example_models()).await;
    let depth = 200_000;
    let bomb = format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": {}1{}}}]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_rejected(&s, INFER, bomb.into_bytes(), &[], 400, "recursion").await;
    let bomb = format!(r#"{{"inputs": {}"#, "[".repeat(depth));
    assert_rejected(&s, INFER, bomb.into_bytes(), &[], 400, "malformed").await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn broken_binary_extension_requests() {
    let s = TestServer::start(&example_models()).await;
    let raw: Vec<u8> = breast_cancer_rows(1)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let with = |declared: usize, header_extra: &str, tail: &[u8]| -> (Vec<u8>, usize) {
        let head = format!(
            r#"{{"inputs": [{{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {{"binary_data_size": {declared}}}{header_extra}}}]}}"#
        );
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(tail);
        (body, head.len())
    };
    let hl = "Inference-Header-Content-Length";
    let (body, n) = with(120, "", &raw);
    // The header says the JSON is longer than the body.
    assert_rejected(
        &s,
        INFER,
        body.clone(),
        &[(hl, (body.len() + 1).to_string())],
        400,
        "only",
    )
    .await;
    assert_rejected(
        &s,
        INFER,
        body.clone(),
        &[(hl, "twelve".into())],
        400,
        "non-negative integer",
    )
    .await;
    // The header cuts the JSON short.
    assert_rejected(
        &s,
        INFER,
        body.clone(),
        &[(hl, (n - 5).to_string())],
        400,
        "malformed",
    )
    .await;
    // Without the header the bytes after the JSON make it invalid JSON.
    assert_rejected(
        &s,
        INFER,
        body,
        &[],
        400,
        "needs the Inference-Header-Content-Length header",
    )
    .await;
    let (body, n) = with(240, "", &raw);
    assert_rejected(&s, INFER, body, &[(hl, n.to_string())], 400, "exceeds").await;
    let (body, n) = with(118, "", &raw[..118]);
    assert_rejected(
        &s,
        INFER,
        body,
        &[(hl, n.to_string())],
        400,
        "needs 120 bytes",
    )
    .await;
    let (body, n) = with(120, "", &[raw.as_slice(), &[1, 2, 3]].concat());
    assert_rejected(
        &s,
        INFER,
        body,
        &[(hl, n.to_string())],
        400,
        "no input claims",
    )
    .await;
    let (body, n) = with(120, r#", "data": [1]"#, &raw);
    assert_rejected(&s, INFER, body, &[(hl, n.to_string())], 400, "both").await;
    let (body, n) = with(usize::MAX, "", &raw);
    assert_rejected(&s, INFER, body, &[(hl, n.to_string())], 400, "exceeds").await;
    // binary_data_size is checked against shape x element size before anything is decoded.
    let (body, n) = with(240, "", &[raw.as_slice(), &raw].concat());
    assert_rejected(
        &s,
        INFER,
        body,
        &[(hl, n.to_string())],
        400,
        "needs 120 bytes, got 240",
    )
    .await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_models_and_versions_are_404() {
    let s = TestServer::start(&example_models()).await;
    let body = serde_json::to_vec(&infer_body(1)).unwrap();
    assert_rejected(
        &s,
        "/v2/models/nope/infer",
        body.clone(),
        &[],
        404,
        "unknown model 'nope'",
    )
    .await;
    assert_rejected(
        &s,
        "/v2/models/breast-cancer/versions/3/infer",
        body.clone(),
        &[],
        404,
        "no version 3",
    )
    .await;
    assert_rejected(
        &s,
        "/v2/models/breast-cancer/versions/0/infer",
        body,
        &[],
        400,
        "positive integer",
    )
    .await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_limit_from_model_toml() {
    let model = workspace().join("models/breast-cancer/1/model.onnx");
    let repo = TempRepo::new("maxbatch", &[("small", &model, "max_batch_size = 4")]);
    let s = TestServer::start(&repo.root).await;
    let (status, _) = s.post_json("/v2/models/small/infer", &infer_body(4)).await;
    assert_eq!(status, 200);
    let (status, err) = s.post_json("/v2/models/small/infer", &infer_body(5)).await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("max_batch_size 4"),
        "{err}"
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_get_413_without_reading_them() {
    let mut config = ServeConfig::local(example_models());
    config.max_body_bytes = 64 * 1024;
    let s = TestServer::start_with(config).await;
    let addr = s.server.http_addr();
    // Declared too large: refused from the headers alone, with none of the 1 GiB sent.
    let head = format!(
        "POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        1u64 << 30
    );
    let reply = raw_http(addr, &head, &[]).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains(r#"{"error":"#), "{reply}");
    // Chunked: cut off once past the limit.
    let head = format!(
        "POST {INFER} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "[".repeat(16 * 1024));
    let chunks: Vec<&[u8]> = std::iter::repeat_n(chunk.as_bytes(), 8).collect();
    let reply = raw_http(addr, &head, &chunks).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // A keep-alive client is told that the connection closes: its body was left unread, so the server
    // closes it, and a client that pooled it would send its next request into the close.
    let head = format!(
        "POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        1u64 << 30
    );
    let reply = raw_http(addr, &head, &[]).await.to_lowercase();
    assert!(reply.starts_with("http/1.1 413"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    // A request read whole keeps its connection, chunked or not.
    let body = serde_json::to_string(&infer_body(1)).unwrap();
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for (framing, payload) in [
        (format!("content-length: {}", body.len()), body.clone()),
        ("transfer-encoding: chunked".to_string(), chunked),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n\r\n{payload}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{framing}: {head}");
        assert!(!head.contains("connection: close"), "{framing}: {head}");
    }
    let (status, _) = s.post_json(INFER, &infer_body(1)).await;
    assert_eq!(status, 200);
    s.server.shutdown().await.unwrap();
}

/// Issue 11's hostile kinds: each is refused from what comes before its bulk (an array or object where a
/// scalar belongs is refused at its `[` or `{`; a tensor header the model does not take is refused before
/// its data is read), with a JSON error, and the server keeps serving.
#[tokio::test]
async fn hostile_requests_are_refused_before_their_bulk_is_built() {
    let s = TestServer::start(&example_models()).await;
    let good = json!({ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": breast_cancer_rows(1) });
    let big = zeros(2_000_000);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(r#"{{"parameters": {{"x": {big}}}, "inputs": [{good}]}}"#),
            INFER,
            "parameter 'x' must be a boolean, number or string, not an array",
        ),
        (
            format!(r#"{{"inputs": [{good}], "parameters": {{"x": {{"y": {big}}}}}}}"#),
            INFER,
            "not an object",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {{"p": {big}}}, "data": [{}]}}]}}"#,
                vec!["1"; 30].join(",")
            ),
            INFER,
            "parameter 'p' must be a boolean, number or string",
        ),
        (
            format!(
                r#"{{"inputs": [{good}], "outputs": [{{"name": "label", "parameters": {{"binary_data": {big}}}}}]}}"#
            ),
            INFER,
            "parameter 'binary_data' must be a boolean, number or string",
        ),
        (
            format!(r#"{{"inputs": [{good}], "parameters": {{"x": null}}}}"#),
            INFER,
            "not null",
        ),
        (
            format!(
                r#"{{"inputs": [{good}], "parameters": {{{}}}}}"#,
                (0..300)
                    .map(|i| format!(r#""k{i}": 1"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            INFER,
            "more than 256 parameters",
        ),
        // BYTES declared for the FP32 input: refused from the header, its million strings never decoded.
        (
            format!(
                r#"{{"inputs": [{{"name": "input", "shape": [1, 1000000], "datatype": "BYTES", "data": [{}""]}}]}}"#,
                r#""","#.repeat(999_999)
            ),
            INFER,
            "has datatype BYTES, the model expects FP32",
        ),
        (
            format!(
                r#"{{"inputs": [{{"name": "input", "shape": [{}], "datatype": "FP32", "data": [1]}}]}}"#,
                vec!["1"; 100_000].join(",")
            ),
            INFER,
            "more than 64 dimensions",
        ),
        (
            format!(r#"{{"feedback": [{{"id": "a", "label": {big}}}]}}"#),
            "/v2/models/breast-cancer/feedback",
            "\"label\" must be a number, string or boolean, not an array",
        ),
        (
            format!(r#"{{"feedback": [{{"id": "a", "label": {{"k": {big}}}}}]}}"#),
            "/v2/models/breast-cancer/feedback",
            "not an object",
        ),
        (
            format!(r#"{{"feedback": [{{"id": "a", "value": {big}}}]}}"#),
            "/v2/models/breast-cancer/feedback",
            "invalid type: sequence",
        ),
        (
            format!(
                r#"{{"feedback": [{}]}}"#,
                vec![r#"{"id": "a", "label": 1}"#; 100_001].join(",")
            ),
            "/v2/models/breast-cancer/feedback",
            "more than 100000 feedback items",
        ),
    ];
    for (body, path, needle) in cases {
        assert_rejected(&s, path, body.into_bytes(), &[], 400, needle).await;
    }
    // Scalars are still taken, including ones Keel does not use.
    let mut ok = infer_body(1);
    ok["parameters"] = json!({ "priority": 1, "sequence_id": "s", "flag": true, "w": 0.5 });
    let (status, reply) = s.post_json(INFER, &ok).await;
    assert_eq!(status, 200, "{reply}");
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bytes_elements_per_request_are_capped() {
    let model = workspace().join("tests/models/datatypes/1/model.onnx");
    let repo = TempRepo::new("bytescap", &[("dt", &model, "")]);
    let mut config = ServeConfig::local(&repo.root);
    config.limits.max_bytes_elements = 5;
    let s = TestServer::start_with(config).await;
    let bytes = |rows: usize| {
        json!({ "inputs": [{ "name": "in_bytes", "shape": [rows, 3], "datatype": "BYTES",
                             "data": vec!["ab"; rows * 3] }] })
    };
    let (status, err) = s.post_json("/v2/models/dt/infer", &bytes(2)).await;
    assert_eq!(status, 413, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("--max-bytes-elements"),
        "{err}"
    );
    // Within the cap the request goes on (and fails later for the inputs it lacks).
    let (status, err) = s.post_json("/v2/models/dt/infer", &bytes(1)).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("missing input"),
        "{err}"
    );
    s.server.shutdown().await.unwrap();
}

/// A small in-flight budget: a request that alone is larger gets 413, one that does not fit next to a
/// request being read gets 429 with Retry-After, at once; once that request is gone the budget is whole
/// again, and the refusals are counted.
#[tokio::test]
async fn inflight_budget_refuses_with_429_and_recovers() {
    let mut config = ServeConfig::local(example_models());
    config.limits.max_inflight_bytes = 64 * 1024;
    let s = TestServer::start_with(config).await;
    let (status, _) = s.post_json(INFER, &infer_body(1)).await;
    assert_eq!(status, 200);

    let whole = serde_json::to_vec(&infer_body(300)).unwrap();
    assert!(whole.len() > 64 * 1024);
    assert_rejected(&s, INFER, whole, &[], 413, "--max-inflight-bytes").await;

    // 30 000 bytes: does not fit next to 40 000 held (64 KiB budget), fits alone with its tensors.
    let mut body = serde_json::to_vec(&infer_body(50)).unwrap();
    assert!(body.len() < 30_000);
    body.resize(30_000, b' ');
    let srv = &s;
    let slow_client = move |sent: usize| async move {
        let mut slow = TcpStream::connect(srv.server.http_addr()).await.unwrap();
        let head = format!(
            "POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{}",
            " ".repeat(sent)
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow
    };
    let holding = move |bytes: f64| async move {
        for _ in 0..100 {
            if metric(srv, "keel_inflight_request_bytes").await == bytes {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the in-flight bytes never reached {bytes}");
    };
    // A client that declares 60 000 bytes and sends nothing holds nothing: it blocks no one.
    let idle = slow_client(0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    holding(0.0).await;
    let (status, _, _) = s.post_raw(INFER, body.clone(), &[]).await;
    assert_eq!(status, 200);
    drop(idle);
    // One that has sent 40 000 of them holds those while it sends the rest.
    let slow = slow_client(40_000).await;
    holding(40_000.0).await;
    let started = std::time::Instant::now();
    let (status, headers, reply) = s.post_raw(INFER, body.clone(), &[]).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&reply));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(headers["retry-after"], "1");
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert!(
        reply["error"].as_str().unwrap().contains("retry later"),
        "{reply}"
    );
    // Small requests still fit.
    let (status, _) = s.post_json(INFER, &infer_body(1)).await;
    assert_eq!(status, 200);
    assert!(metric(&s, "keel_requests_refused_total{reason=\"inflight_bytes\"}").await >= 2.0);

    drop(slow);
    let mut status = 0;
    for _ in 0..100 {
        status = s.post_raw(INFER, body.clone(), &[]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status, 200,
        "the budget is whole again once the slow client is gone"
    );
    for _ in 0..100 {
        if metric(&s, "keel_inflight_request_bytes").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&s, "keel_inflight_request_bytes").await, 0.0);
    s.server.shutdown().await.unwrap();
}

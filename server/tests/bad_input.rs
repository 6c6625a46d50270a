//! Every way a client can get a request wrong: a 4xx with a JSON error naming the problem, and the server
//! keeps serving. Nothing here may produce a 5xx, a hang, or a large allocation.

mod common;

use std::time::Duration;

use common::{TempRepo, TestServer, breast_cancer_rows, example_models, infer_body, workspace};
use keel_server::ServeConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INFER: &str = "/v2/models/breast-cancer/infer";

fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": data }] })
}

async fn assert_rejected(
    s: &TestServer,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    code: u16,
    needle: &str,
) {
    let (status, _, reply) = s.post_raw(path, body, headers).await;
    let reply: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
    let msg = reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error for case '{needle}': {reply}"));
    assert_eq!(status, code, "case '{needle}': {msg}");
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "case '{needle}': message was: {msg}"
    );
    // The server still serves.
    let (status, ok) = s.post_json(INFER, &infer_body(1)).await;
    assert_eq!(status, 200, "after case '{needle}': {ok}");
}

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
        (serde_json::to_vec(&input(json!([1, 29]), "FP32", thirty.clone())).unwrap(), "more elements"),
        (serde_json::to_vec(&input(json!([1, 31]), "FP32", thirty.clone())).unwrap(), "needs 31"),
        (serde_json::to_vec(&input(json!([1, 29]), "FP32", json!(breast_cancer_rows(1)[..29]))).unwrap(), "expects [-1, 30]"),
        (serde_json::to_vec(&input(json!([-1, 30]), "FP32", thirty.clone())).unwrap(), "negative dimension"),
        (serde_json::to_vec(&input(json!([4294967296u64, 30]), "FP32", thirty.clone())).unwrap(), "more elements than the request carries"),
        (serde_json::to_vec(&input(json!([u64::MAX, 2]), "FP32", thirty.clone())).unwrap(), "malformed"),
        (serde_json::to_vec(&input(json!([2, 2]), "FP32", json!([[1, 2], [3]]))).unwrap(), "ragged"),
        (serde_json::to_vec(&input(json!([1, 2]), "FP32", json!([1, "two"]))).unwrap(), "string \"two\""),
        (serde_json::to_vec(&input(json!([1, 2]), "FP32", json!([1, null]))).unwrap(), "null"),
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

async fn raw_http(addr: std::net::SocketAddr, head: &str, chunks: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        // The server may answer and close before taking everything: that is the point.
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
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
    let (status, _) = s.post_json(INFER, &infer_body(1)).await;
    assert_eq!(status, 200);
    s.server.shutdown().await.unwrap();
}

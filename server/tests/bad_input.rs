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

/// One row of the model's 30 features with the last one replaced by `v`.
fn with_element(v: Value) -> Value {
    let mut row = json!(breast_cancer_rows(1));
    row[29] = v;
    row
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

/// `"x": [0,0,...]` of `n` elements: megabytes on the wire, far more if it were built as JSON values.
fn zeros(n: usize) -> String {
    format!("[{}0]", "0,".repeat(n))
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

async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", s.server.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

mod grpc {
    use super::*;
    use keel_server::grpc::pb;
    use keel_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    use pb::model_infer_request::InferInputTensor;
    use tonic::transport::Channel;

    async fn client(s: &TestServer) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", s.server.grpc_addr()))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20)
    }

    fn request(rows: usize) -> pb::ModelInferRequest {
        let x: Vec<u8> = breast_cancer_rows(1)
            .repeat(rows)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        pb::ModelInferRequest {
            model_name: "breast-cancer".into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, 30],
                ..Default::default()
            }],
            raw_input_contents: vec![x],
            ..Default::default()
        }
    }

    fn empty_bytes(datatype: &str, n: usize) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "breast-cancer".into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: datatype.into(),
                shape: vec![1, n as i64],
                contents: Some(pb::InferTensorContents {
                    bytes_contents: vec![Vec::new(); n],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    async fn assert_status(
        c: &mut GrpcInferenceServiceClient<Channel>,
        req: pb::ModelInferRequest,
        code: tonic::Code,
        needle: &str,
    ) {
        let err = c.model_infer(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{needle}: {}", err.message());
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
        let ok = c.model_infer(request(1)).await.unwrap().into_inner();
        assert_eq!(ok.raw_output_contents.len(), 2);
    }

    #[tokio::test]
    async fn hostile_messages_are_refused_before_decoding() {
        let s = TestServer::start(&example_models()).await;
        let mut c = client(&s).await;
        let invalid = tonic::Code::InvalidArgument;
        assert_status(
            &mut c,
            empty_bytes("BYTES", 3_000_000),
            invalid,
            "has datatype BYTES",
        )
        .await;
        let mut wrong = empty_bytes("FP32", 3_000_000);
        wrong.inputs[0].shape = vec![1, 30];
        assert_status(&mut c, wrong, invalid, "not bytes_contents").await;
        let mut inputs = request(1);
        inputs.inputs = vec![InferInputTensor::default(); 100_000];
        inputs.raw_input_contents.clear();
        assert_status(&mut c, inputs, invalid, "at most 4096").await;
        let mut raw = request(1);
        raw.raw_input_contents.extend(vec![Vec::new(); 1_000_000]);
        assert_status(
            &mut c,
            raw,
            invalid,
            "raw_input_contents has 1000001 entries",
        )
        .await;
        let mut rows = request(1);
        rows.inputs[0].shape = vec![2000, 30];
        rows.raw_input_contents[0] = vec![0; 2000 * 30 * 4];
        assert_status(&mut c, rows, invalid, "max_batch_size").await;
        s.server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn responses_are_compressed_only_when_their_request_was() {
        use tonic::codec::CompressionEncoding::{Deflate, Gzip};
        let s = TestServer::start(&example_models()).await;
        let coding = |r: &tonic::Response<pb::ModelInferResponse>| {
            r.metadata()
                .get("grpc-encoding")
                .map(|v| v.to_str().unwrap().to_string())
        };
        // Accepting gzip, as every gRPC library says it does, but sending plain.
        let mut plain = client(&s).await.accept_compressed(Gzip);
        let reply = plain.model_infer(request(1)).await.unwrap();
        assert_eq!(coding(&reply), None);
        assert_eq!(reply.get_ref().raw_output_contents.len(), 2);
        for (encoding, name) in [(Gzip, "gzip"), (Deflate, "deflate")] {
            let mut compressed = client(&s)
                .await
                .send_compressed(encoding)
                .accept_compressed(Gzip)
                .accept_compressed(Deflate);
            let reply = compressed.model_infer(request(1)).await.unwrap();
            assert_eq!(coding(&reply).as_deref(), Some(name));
            assert_eq!(reply.get_ref().raw_output_contents.len(), 2);
        }
        s.server.shutdown().await.unwrap();
    }

    /// One ModelInfer call over a bare HTTP/2 stream, the request body sent in `pieces`; the answer's
    /// `grpc-status` (from the trailers, or the headers of a trailers-only answer), its message, and the
    /// response message if there is one.
    async fn call_in_pieces(
        s: &TestServer,
        pieces: Vec<Vec<u8>>,
    ) -> (String, String, Option<pb::ModelInferResponse>) {
        use prost::Message;
        let tcp = tokio::net::TcpStream::connect(s.server.grpc_addr())
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let call = axum::http::Request::post(format!(
            "http://{}/inference.GRPCInferenceService/ModelInfer",
            s.server.grpc_addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (response, mut body) = client.send_request(call, pieces.is_empty()).unwrap();
        let last = pieces.len().saturating_sub(1);
        for (i, piece) in pieces.into_iter().enumerate() {
            body.send_data(piece.into(), i == last).unwrap();
            // Each piece its own DATA frame, read by the server before the next is sent.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let get = |headers: &axum::http::HeaderMap, name: &str| {
            headers.get(name).map(|v| v.to_str().unwrap().to_owned())
        };
        if let Some(status) = get(response.headers(), "grpc-status") {
            let message =
                percent_decoded(&get(response.headers(), "grpc-message").unwrap_or_default());
            return (status, message, None);
        }
        let mut data = Vec::new();
        let stream = response.body_mut();
        while let Some(chunk) = stream.data().await {
            let chunk = chunk.unwrap();
            stream.flow_control().release_capacity(chunk.len()).unwrap();
            data.extend_from_slice(&chunk);
        }
        let trailers = stream.trailers().await.unwrap().unwrap_or_default();
        let status = get(&trailers, "grpc-status").unwrap_or_default();
        let message = percent_decoded(&get(&trailers, "grpc-message").unwrap_or_default());
        let reply = (data.len() >= 5).then(|| {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            assert_eq!(data.len(), 5 + len, "one message");
            pb::ModelInferResponse::decode(&data[5..]).unwrap()
        });
        (status, message, reply)
    }

    /// `grpc-message` as sent: percent-encoded.
    fn percent_decoded(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend((message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// A unary request is one message however its bytes are cut into DATA frames (the header split
    /// too). Bodies that are not one plain message are answered as tonic answers them: a compressed
    /// flag without `grpc-encoding`, a body with no message, two messages.
    #[tokio::test]
    async fn unary_requests_are_read_whatever_their_framing() {
        use prost::Message;
        let s = TestServer::start(&example_models()).await;
        let message = request(3).encode_to_vec();
        let wire = framed(0, &message);
        let cuts: [&[usize]; 4] = [&[], &[2], &[1, 3, 4], &[5, 17, wire.len() - 1]];
        for cut in cuts {
            let mut pieces = Vec::new();
            let mut from = 0;
            for &to in cut.iter().chain([&wire.len()]) {
                pieces.push(wire[from..to].to_vec());
                from = to;
            }
            let (status, message, reply) = call_in_pieces(&s, pieces).await;
            assert_eq!(status, "0", "cut at {cut:?}: {message}");
            let reply = reply.expect("a response message");
            assert_eq!(reply.outputs[1].shape, vec![3, 2], "cut at {cut:?}");
            assert_eq!(reply.raw_output_contents.len(), 2);
            assert_eq!(reply.id.len(), 32, "a generated request id");
        }
        let (status, message, _) = call_in_pieces(&s, vec![framed(1, &message)]).await;
        assert_eq!(status, "13", "{message}");
        assert!(message.contains("compressed-flag"), "{message}");
        let (status, message, _) = call_in_pieces(&s, vec![]).await;
        assert_eq!(status, "13", "{message}");
        assert!(message.contains("Missing request message"), "{message}");
        let two = [framed(0, &message_of(1)), framed(0, &message_of(2))].concat();
        let (status, message, reply) = call_in_pieces(&s, vec![two]).await;
        assert_eq!(status, "0", "{message}");
        assert_eq!(
            reply.unwrap().outputs[1].shape,
            vec![1, 2],
            "the first is answered"
        );
        // A model that is not there, on the direct path: NOT_FOUND, as before.
        let mut missing = request(1);
        missing.model_name = "no-such-model".into();
        let (status, message, _) =
            call_in_pieces(&s, vec![framed(0, &missing.encode_to_vec())]).await;
        assert_eq!(status, "5", "{message}");
        s.server.shutdown().await.unwrap();
    }

    fn message_of(rows: usize) -> Vec<u8> {
        use prost::Message;
        request(rows).encode_to_vec()
    }

    #[tokio::test]
    async fn inflight_budget_over_grpc() {
        let mut config = ServeConfig::local(example_models());
        config.limits.max_inflight_bytes = 64 * 1024;
        let s = TestServer::start_with(config).await;
        let mut c = client(&s).await;
        // 1024 rows: 120 KiB of raw input, more than the whole budget.
        assert_status(
            &mut c,
            request(1024),
            tonic::Code::ResourceExhausted,
            "--max-inflight-bytes",
        )
        .await;
        // In a stream, the refused request gets its error and the stream carries on.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut replies = c
            .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(request(1024)).await.unwrap();
        let first = replies.message().await.unwrap().unwrap();
        assert!(
            first.error_message.contains("--max-inflight-bytes"),
            "{}",
            first.error_message
        );
        tx.send(request(2)).await.unwrap();
        let second = replies.message().await.unwrap().unwrap();
        assert_eq!(second.error_message, "");
        assert_eq!(second.infer_response.unwrap().outputs[1].shape, vec![2, 2]);
        tx.send(empty_bytes("BYTES", 10)).await.unwrap();
        let third = replies.message().await.unwrap().unwrap();
        assert!(
            third.error_message.contains("has datatype BYTES"),
            "{}",
            third.error_message
        );
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
        s.server.shutdown().await.unwrap();
    }
}

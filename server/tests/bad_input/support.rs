//! What the HTTP tests share: request bodies, the check that a request is refused with a JSON error
//! and the server still serves, a raw HTTP/1.1 client, and the value of a metric.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::INFER;
use crate::common::{TestServer, breast_cancer_rows, infer_body};

pub(crate) fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": data }] })
}

/// One row of the model's 30 features with the last one replaced by `v`.
pub(crate) fn with_element(v: Value) -> Value {
    let mut row = json!(breast_cancer_rows(1));
    row[29] = v;
    row
}

pub(crate) async fn assert_rejected(
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

pub(crate) async fn raw_http(addr: std::net::SocketAddr, head: &str, chunks: &[&[u8]]) -> String {
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

/// `"x": [0,0,...]` of `n` elements: megabytes on the wire, far more if it were built as JSON values.
pub(crate) fn zeros(n: usize) -> String {
    format!("[{}0]", "0,".repeat(n))
}

pub(crate) async fn metric(s: &TestServer, name: &str) -> f64 {
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

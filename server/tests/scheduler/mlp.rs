//! The slow MLP (512 features, milliseconds a batch): its requests built, sent from their own task or
//! inline, and full batches started until its queue holds two.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::{TestServer, workspace};
use crate::observe::{metric, scrape};

pub(crate) fn slow_mlp() -> std::path::PathBuf {
    workspace().join("tests/models/slow-mlp/1/model.onnx")
}

/// A binary-extension request for the slow MLP: `rows` rows of 512 features.
pub(crate) fn mlp_request(rows: usize, parameters: Value) -> (Vec<u8>, String) {
    let mut head = json!({
        "inputs": [{ "name": "input", "shape": [rows, 512], "datatype": "FP32",
                     "parameters": { "binary_data_size": rows * 512 * 4 } }],
        "outputs": [{ "name": "output", "parameters": { "binary_data": true } }],
    });
    if !parameters.is_null() {
        head["parameters"] = parameters;
    }
    let mut body = serde_json::to_vec(&head).unwrap();
    let json_len = body.len().to_string();
    body.extend((0..rows * 512).flat_map(|i| ((i % 97) as f32 / 97.0).to_le_bytes()));
    (body, json_len)
}

/// Sends an MLP request from its own task, so the test can go on while it waits; yields the status.
pub(crate) fn spawn_mlp(
    s: &TestServer,
    model: &str,
    rows: usize,
    parameters: Value,
) -> JoinHandle<reqwest::Result<u16>> {
    let (client, url) = (
        s.client.clone(),
        s.url(&format!("/v2/models/{model}/infer")),
    );
    let (body, json_len) = mlp_request(rows, parameters);
    tokio::spawn(async move {
        let request = client
            .post(url)
            .header("Inference-Header-Content-Length", json_len)
            .body(body);
        Ok(request
            .timeout(Duration::from_secs(60))
            .send()
            .await?
            .status()
            .as_u16())
    })
}

pub(crate) async fn post_mlp(
    s: &TestServer,
    model: &str,
    rows: usize,
    parameters: Value,
) -> (u16, Value) {
    let (body, json_len) = mlp_request(rows, parameters);
    let (status, headers, bytes) = s
        .post_raw(
            &format!("/v2/models/{model}/infer"),
            body,
            &[("Inference-Header-Content-Length", json_len)],
        )
        .await;
    let json_len = headers
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap())
        .unwrap_or(bytes.len());
    let head = serde_json::from_slice(&bytes[..json_len]).unwrap_or(Value::Null);
    if status == 429 {
        assert_eq!(
            headers.get("retry-after").map(|v| v.to_str().unwrap()),
            Some("1")
        );
    }
    (status, head)
}

/// Starts full batches (1024 rows: each runs alone) until the version's one instance computes one while
/// two more wait behind it; returns them and how many were started. A round whose batches do not overlap
/// so (a slow box took longer to send one than to compute another) is waited out and started again.
pub(crate) async fn fill_the_queue(
    s: &TestServer,
    model: &str,
) -> (Vec<JoinHandle<reqwest::Result<u16>>>, u64) {
    let series = format!("{{model=\"{model}\",version=\"1\"}}");
    let mut started = 0;
    for _ in 0..5 {
        // Their own long timeout overrides the model's default.
        let blockers: Vec<_> = (0..3)
            .map(|_| spawn_mlp(s, model, 1024, json!({ "timeout": 60_000_000 })))
            .collect();
        started += 3;
        while !blockers.iter().all(|b| b.is_finished()) {
            let text = scrape(s).await;
            if metric(&text, &format!("keel_inflight_requests{series}")) >= 3.0
                && metric(&text, &format!("keel_queue_depth{series}")) >= 2.0
            {
                return (blockers, started);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for blocker in blockers {
            assert_eq!(blocker.await.unwrap().unwrap(), 200);
        }
    }
    panic!("{model}: three full batches never overlapped in five rounds");
}

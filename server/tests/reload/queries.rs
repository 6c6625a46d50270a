//! What the tests ask the server: the version that serves, the repository index and a model's reason in
//! it, the metrics text and what it says, and the load/unload API.

use crate::common::{TestServer, infer_body};

pub(crate) async fn served_version(server: &TestServer) -> String {
    let (status, body) = server.post_json("/v2/models/m/infer", &infer_body(1)).await;
    assert_eq!(status, 200, "{body}");
    body["model_version"].as_str().unwrap().to_string()
}

pub(crate) async fn index(server: &TestServer) -> Vec<serde_json::Value> {
    let response = server
        .client
        .post(server.url("/v2/repository/index"))
        .bearer_auth("t")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

pub(crate) async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.server.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The model's failed loads so far, from the metrics text.
pub(crate) fn load_failures(text: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(r#"keel_model_loads_total{model="m",outcome="failure"} "#)
        })
        .map_or(0.0, |n| n.trim().parse().unwrap())
}

/// The control endpoint `action` ("load", "unload") of `model`, with the admin token.
pub(crate) async fn control(server: &TestServer, model: &str, action: &str) -> u16 {
    server
        .client
        .post(server.url(&format!("/v2/repository/models/{model}/{action}")))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Whether /metrics has a drift-window series of `model` version `version`.
pub(crate) async fn has_drift_series(server: &TestServer, model: &str, version: u64) -> bool {
    let labels = format!(r#"{{model="{model}",version="{version}"}}"#);
    metrics(server)
        .await
        .lines()
        .any(|l| l.starts_with("keel_drift_window_rows") && l.contains(&labels))
}

pub(crate) async fn index_reason(server: &TestServer, model: &str) -> Option<String> {
    index(server)
        .await
        .into_iter()
        .find(|r| r["name"] == model)
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
}

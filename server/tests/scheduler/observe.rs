//! What the tests read back: a version's statistics, the metrics text and one series of it, a batched
//! answer against the same request computed alone, and how often threads slept.

use serde_json::Value;

use crate::common::TestServer;

pub(crate) async fn stats(s: &TestServer, model: &str) -> Value {
    let (_, body) = s.get(&format!("/v2/models/{model}/versions/1/stats")).await;
    body["model_stats"][0].clone()
}

pub(crate) async fn scrape(s: &TestServer) -> String {
    let url = format!("http://{}/metrics", s.server.metrics_addr());
    s.client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub(crate) fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A batched answer to request `id` is the one the same request got computed alone: its own rows, labels
/// equal, probabilities within float noise.
pub(crate) fn assert_same_answer(id: &Value, got: &Value, alone: &Value) {
    assert_eq!(got["id"], *id);
    assert_eq!(
        got["outputs"][0]["data"], alone["outputs"][0]["data"],
        "labels of {id}"
    );
    assert_eq!(got["outputs"][1]["shape"], alone["outputs"][1]["shape"]);
    let a = got["outputs"][1]["data"].as_array().unwrap();
    let b = alone["outputs"][1]["data"].as_array().unwrap();
    assert_eq!(a.len(), b.len(), "{id}");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-6,
            "{id}: {x} vs {y}"
        );
    }
}

/// Voluntary context switches of this process's threads whose name starts with `prefix` (Linux): how
/// often they went to sleep and were woken.
pub(crate) fn sleeps_of_threads(prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Held shared by every test here, and alone by the one that needs both cores for its server: the
/// test harness runs two tests at once, and a crowd of requests only forms when the server's two
/// connection threads run side by side (on one core each request is served alone, as it should be).
pub(crate) static CORES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

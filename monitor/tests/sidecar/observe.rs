//! What the tests read over HTTP: any path (with or without a token), a drift report or a metric once it
//! is there, and the lines of one metric.

use std::time::{Duration, Instant};

use keel_monitor::DriftReport;
use keel_monitor::sidecar::Sidecar;

pub(crate) async fn get(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", sidecar.metrics_addr());
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Polls the drift report until `done` holds (the evaluation loop runs every 50 ms).
pub(crate) async fn wait_for_report(
    sidecar: &Sidecar,
    path: &str,
    done: impl Fn(&DriftReport) -> bool,
) -> DriftReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(sidecar, path).await;
        if status == 200 {
            let report: DriftReport = serde_json::from_str(&body).unwrap();
            if done(&report) {
                return report;
            }
        }
        assert!(Instant::now() < deadline, "timed out: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls /metrics until `name` has a series.
pub(crate) async fn wait_for_metrics(sidecar: &Sidecar, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = get(sidecar, "/metrics").await;
        assert_eq!(status, 200);
        if !metric_lines(&text, name).is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "no {name}: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn metric_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

pub(crate) async fn get_with(
    sidecar: &Sidecar,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let url = format!("http://{}{path}", sidecar.metrics_addr());
    let mut request = reqwest::Client::new().get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        response.status().as_u16(),
        challenge,
        response.text().await.unwrap(),
    )
}

//! The webhook sender against a real HTTP receiver on 127.0.0.1, which checks every signature
//! with its own HMAC-SHA256 (built from SHA-256 here, not the sender's `hmac` crate).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keel_monitor::AlertEvent;
use keel_monitor::parquet_log::{ParquetConfig, ParquetSink};
use keel_monitor::webhook::{Secret, Webhook, WebhookConfig, WebhookError};
use keel_monitor::{FeatureValue, PredictionRecord};
use prometheus::{Registry, TextEncoder};
use sha2::{Digest, Sha256};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// HMAC-SHA256 from its definition (RFC 2104), independent of the code under test.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    body: serde_json::Value,
    content_type: String,
    signature_ok: bool,
    at: Instant,
    status: u16,
}

#[derive(Default)]
struct Inbox {
    /// Replies to give, in order: (status, Retry-After seconds); then `otherwise`.
    script: VecDeque<(u16, Option<u64>)>,
    otherwise: u16,
    log: Vec<Delivery>,
}

type Shared = Arc<Mutex<Inbox>>;

async fn receive(State(inbox): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", &body].concat();
    let expected = format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &signed)));
    let signature_ok = header("webhook-signature")
        .split(' ')
        .any(|s| s == expected);
    let fresh = timestamp.parse::<u64>().is_ok_and(|ts| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        now.abs_diff(ts) <= 5
    });
    let mut inbox = inbox.lock().unwrap();
    let (status, retry_after) = inbox.script.pop_front().unwrap_or((inbox.otherwise, None));
    inbox.log.push(Delivery {
        id,
        body: serde_json::from_slice(&body).unwrap_or_default(),
        content_type: header("content-type"),
        signature_ok: signature_ok && fresh,
        at: Instant::now(),
        status,
    });
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}

/// A receiver on 127.0.0.1 answering `script`, then `otherwise`.
async fn receiver(script: Vec<(u16, Option<u64>)>, otherwise: u16) -> (String, Shared) {
    let inbox = Arc::new(Mutex::new(Inbox {
        script: script.into(),
        otherwise,
        log: Vec::new(),
    }));
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), inbox)
}

/// A URL nothing listens on: connections are refused.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}

fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-webhook-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(url: &str, dir: &Path) -> WebhookConfig {
    let mut config = WebhookConfig::new(url, Secret::new(SECRET).unwrap(), dir);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    config.timeout = Duration::from_secs(5);
    config
}

fn event(model: &str, rule: &str) -> AlertEvent {
    AlertEvent {
        kind: keel_monitor::event::DRIFT_DETECTED.into(),
        model: model.into(),
        version: 4,
        rule: rule.into(),
        metric: "psi".into(),
        value: 0.42,
        threshold: 0.25,
        window_start_ms: 1_000,
        window_end_ms: 2_000,
        rows: 800,
        top_features: vec![("amount".into(), 0.5), ("age".into(), 0.1)],
        files: Vec::new(),
        time_ms: 2_500,
        evidence: Default::default(),
    }
}

/// A counter or gauge from the registry's text exposition; 0 when absent.
fn metric(registry: &Registry, series: &str) -> f64 {
    let text = TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn outcome(registry: &Registry, outcome: &str) -> f64 {
    metric(
        registry,
        &format!("keel_webhook_deliveries_total{{outcome=\"{outcome}\"}}"),
    )
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn log(inbox: &Shared) -> Vec<Delivery> {
    inbox.lock().unwrap().log.clone()
}

fn pending_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count()
}

#[tokio::test]
async fn delivers_a_signed_cloudevent() {
    let (url, inbox) = receiver(vec![], 204).await;
    let dir = state_dir("delivers");
    let registry = Registry::new();
    let mut config = config(&url, &dir);
    config.source = "keel-test".into();
    let (webhook, sink) = Webhook::start(config, &registry).unwrap();
    sink(event("fraud", "psi_high"));
    wait_for("the delivery", Duration::from_secs(10), || {
        outcome(&registry, "delivered") == 1.0
    })
    .await;

    let got = log(&inbox);
    assert_eq!(got.len(), 1);
    let delivery = &got[0];
    assert!(delivery.signature_ok);
    assert_eq!(delivery.content_type, "application/cloudevents+json");
    let body = &delivery.body;
    assert_eq!(body["id"], delivery.id.as_str());
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["source"], "keel-test");
    assert_eq!(body["type"], "dev.keel.drift.detected");
    assert_eq!(body["subject"], "fraud/4");
    assert_eq!(body["time"], "1970-01-01T00:00:02.500Z");
    assert_eq!(body["datacontenttype"], "application/json");
    let data = &body["data"];
    assert_eq!(data["model"], "fraud");
    assert_eq!(data["rule"], "psi_high");
    assert_eq!(data["value"], 0.42);
    assert_eq!(data["threshold"], 0.25);
    assert_eq!(data["window_start"], "1970-01-01T00:00:01.000Z");
    assert_eq!(data["window_end_ms"], 2000);
    assert_eq!(data["rows"], 800);
    assert_eq!(data["top_features"][1]["feature"], "age");
    assert_eq!(data["files"], serde_json::json!([]));

    assert_eq!(pending_files(&dir), 0);
    assert_eq!(metric(&registry, "keel_webhook_pending_events"), 0.0);
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn retries_after_503_honouring_retry_after_with_the_same_id() {
    let (url, inbox) = receiver(vec![(503, Some(1)), (500, None)], 200).await;
    let dir = state_dir("retry");
    let registry = Registry::new();
    let (webhook, sink) = Webhook::start(config(&url, &dir), &registry).unwrap();
    sink(event("m", "r"));
    wait_for("the delivery", Duration::from_secs(10), || {
        outcome(&registry, "delivered") == 1.0
    })
    .await;

    let got = log(&inbox);
    assert_eq!(
        got.iter().map(|d| d.status).collect::<Vec<_>>(),
        [503, 500, 200]
    );
    assert!(
        got.iter().all(|d| d.id == got[0].id && d.signature_ok),
        "{got:?}"
    );
    assert!(got.iter().all(|d| d.body == got[0].body));
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {waited:?}"
    );
    assert_eq!(outcome(&registry, "retry"), 2.0);
    assert_eq!(pending_files(&dir), 0);
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn gone_stops_and_client_errors_fail_once_and_server_errors_expire() {
    let (url, inbox) = receiver(vec![(410, None), (400, None)], 500).await;
    let dir = state_dir("stops");
    let registry = Registry::new();
    let mut config = config(&url, &dir);
    config.max_attempts = 3;
    let (webhook, sink) = Webhook::start(config, &registry).unwrap();
    sink(event("m", "gone"));
    wait_for("gone", Duration::from_secs(10), || {
        outcome(&registry, "gone") == 1.0
    })
    .await;
    sink(event("m", "failed"));
    wait_for("failed", Duration::from_secs(10), || {
        outcome(&registry, "failed") == 1.0
    })
    .await;
    sink(event("m", "expired"));
    wait_for("expired", Duration::from_secs(10), || {
        outcome(&registry, "expired") == 1.0
    })
    .await;
    // Backoffs are 100 ms at most: anything still scheduled would have been tried by now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let got = log(&inbox);
    let attempts = |rule: &str| {
        got.iter()
            .filter(|d| d.body["data"]["rule"] == rule)
            .count()
    };
    assert_eq!(
        (attempts("gone"), attempts("failed"), attempts("expired")),
        (1, 1, 3)
    );
    assert_eq!(outcome(&registry, "retry"), 2.0);
    assert_eq!(outcome(&registry, "delivered"), 0.0);
    assert_eq!(pending_files(&dir), 0);
    assert_eq!(metric(&registry, "keel_webhook_pending_events"), 0.0);
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn events_stored_while_the_receiver_is_down_are_delivered_once_after_a_restart() {
    let dir = state_dir("restart");
    let registry = Registry::new();
    let (webhook, sink) = Webhook::start(config(&dead_url(), &dir), &registry).unwrap();
    for rule in ["a", "b", "c"] {
        sink(event("m", rule));
    }
    wait_for("failed attempts", Duration::from_secs(10), || {
        outcome(&registry, "retry") >= 3.0
    })
    .await;
    webhook.shutdown().await;
    assert_eq!(pending_files(&dir), 3);
    // The sender is gone, but the sink it handed out still keeps events, on disk.
    sink(event("m", "d"));
    assert_eq!(pending_files(&dir), 4);

    let (url, inbox) = receiver(vec![], 200).await;
    let registry = Registry::new();
    let (webhook, _sink) = Webhook::start(config(&url, &dir), &registry).unwrap();
    assert_eq!(metric(&registry, "keel_webhook_pending_events"), 4.0);
    wait_for("four deliveries", Duration::from_secs(10), || {
        outcome(&registry, "delivered") == 4.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let got = log(&inbox);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for delivery in &got {
        assert!(delivery.signature_ok);
        *per_id.entry(&delivery.id).or_default() += 1;
    }
    assert_eq!(per_id.len(), 4);
    assert!(per_id.values().all(|&n| n == 1), "{per_id:?}");
    let mut rules: Vec<&str> = got
        .iter()
        .map(|d| d.body["data"]["rule"].as_str().unwrap())
        .collect();
    rules.sort();
    assert_eq!(rules, ["a", "b", "c", "d"]);
    assert_eq!(pending_files(&dir), 0);
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_full_queue_stores_events_instead_of_dropping_them() {
    let (url, inbox) = receiver(vec![], 200).await;
    let dir = state_dir("full");
    let registry = Registry::new();
    let mut config = config(&url, &dir);
    config.queue_capacity = 1;
    let (webhook, sink) = Webhook::start(config, &registry).unwrap();
    // This test's runtime has one thread: the sender cannot run until the test awaits.
    for i in 0..20 {
        sink(event("m", &format!("rule{i}")));
    }
    assert_eq!(
        pending_files(&dir),
        19,
        "one queued, the rest stored by the sink"
    );
    wait_for("twenty deliveries", Duration::from_secs(10), || {
        outcome(&registry, "delivered") == 20.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = log(&inbox);
    let mut ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (20, 20));
    assert_eq!(outcome(&registry, "dropped"), 0.0);
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn events_list_the_prediction_log_files_of_their_window() {
    let log_dir = state_dir("files-log");
    let mut parquet = ParquetSink::new(ParquetConfig::new(&log_dir)).unwrap();
    // One file per row: only the middle one overlaps the event's window, 1000..=2000.
    for ts in [500, 1_500, 3_000] {
        let record = PredictionRecord {
            model: "m".into(),
            version: 4,
            request_id: "r".into(),
            row: 0,
            timestamp_ms: ts,
            inputs: vec![("x".into(), vec![FeatureValue::Number(1.0)])],
            outputs: Vec::new(),
        };
        parquet.write_records(&[record]).unwrap();
        parquet.flush().unwrap();
    }
    let (url, inbox) = receiver(vec![], 200).await;
    let dir = state_dir("files");
    let registry = Registry::new();
    let mut config = config(&url, &dir);
    config.log_dir = Some(log_dir.clone());
    let (webhook, sink) = Webhook::start(config, &registry).unwrap();
    sink(event("m", "r"));
    wait_for("the delivery", Duration::from_secs(10), || {
        outcome(&registry, "delivered") == 1.0
    })
    .await;
    let files = log(&inbox)[0].body["data"]["files"].clone();
    let expected = log_dir.join("m/predictions-0000000001500-0000000001500-0.parquet");
    assert_eq!(files, serde_json::json!([expected.display().to_string()]));
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(log_dir).unwrap();
}

fn start_error(config: WebhookConfig, registry: &Registry) -> WebhookError {
    match Webhook::start(config, registry) {
        Ok(_) => panic!("started"),
        Err(error) => error,
    }
}

#[test]
fn start_needs_a_runtime_an_http_or_https_url_and_fresh_metrics() {
    let dir = state_dir("start");
    let registry = Registry::new();
    let error = start_error(config("http://127.0.0.1:9/hook", &dir), &registry);
    assert!(matches!(error, WebhookError::NoRuntime), "{error}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for url in ["ftp://127.0.0.1/", "not a url", "https://"] {
            let error = start_error(config(url, &dir), &registry);
            assert!(matches!(error, WebhookError::Url { .. }), "{error}");
        }
        let (first, _sink) =
            Webhook::start(config("http://127.0.0.1:9/hook", &dir), &registry).unwrap();
        let error = start_error(config("http://127.0.0.1:9/hook", &dir), &registry);
        assert!(matches!(error, WebhookError::Metrics(_)), "{error}");
        first.shutdown().await;
    });
    let secret = format!("{:?}", config("http://127.0.0.1:9/hook", &dir));
    assert!(!secret.contains("MfKQ9r8"), "{secret}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn https_urls_start_and_a_bad_ca_bundle_is_a_start_error_naming_the_flag() {
    let dir = state_dir("tls");
    let registry = Registry::new();
    // https starts (the client has TLS); nothing is sent until there is an event.
    let (webhook, _sink) =
        Webhook::start(config("https://example.invalid/hook", &dir), &registry).unwrap();
    webhook.shutdown().await;

    let pem = dir.join("ca.pem");
    for (contents, expected) in [
        (None, "cannot read --ca-bundle"),
        (Some("not a certificate"), "--ca-bundle"),
    ] {
        if let Some(contents) = contents {
            std::fs::write(&pem, contents).unwrap();
        }
        let mut bad = config("https://127.0.0.1:9/hook", &dir);
        bad.tls.ca_bundle = Some(if contents.is_some() {
            pem.clone()
        } else {
            dir.join("missing.pem")
        });
        let error = start_error(bad, &Registry::new());
        assert!(matches!(error, WebhookError::Tls(_)), "{error}");
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn https_to_a_plain_http_receiver_fails_and_is_retried_not_delivered() {
    let (url, inbox) = receiver(Vec::new(), 204).await;
    let url = url.replacen("http://", "https://", 1);
    let dir = state_dir("tls-mismatch");
    let registry = Registry::new();
    let mut config = config(&url, &dir);
    config.initial_backoff = Duration::from_secs(30);
    config.max_backoff = Duration::from_secs(60);
    let (webhook, sink) = Webhook::start(config, &registry).unwrap();
    sink(event("m", "r"));
    wait_for("a failed attempt", Duration::from_secs(10), || {
        outcome(&registry, "retry") >= 1.0
    })
    .await;
    assert_eq!(outcome(&registry, "delivered"), 0.0);
    assert!(log(&inbox).is_empty());
    // Still pending, on disk, for a later attempt.
    assert_eq!(pending_files(&dir), 1);
    webhook.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_state_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    let root = state_dir("private");
    let dir = root.join("nested/state");
    let (webhook, _sink) =
        Webhook::start(config("http://127.0.0.1:9/hook", &dir), &Registry::new()).unwrap();
    webhook.shutdown().await;
    assert_eq!(mode(&dir), 0o700);

    // An existing folder of ours that others could write to is tightened.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (webhook, _sink) =
        Webhook::start(config("http://127.0.0.1:9/hook", &dir), &Registry::new()).unwrap();
    webhook.shutdown().await;
    assert_eq!(mode(&dir), 0o700);

    // Another user's folder is refused (only root can make one here).
    if keel_monitor::local_state::effective_uid().unwrap() == 0 {
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let error = start_error(config("http://127.0.0.1:9/hook", &dir), &Registry::new());
        let message = error.to_string();
        assert!(matches!(error, WebhookError::LocalState(_)), "{message}");
        assert!(
            message.contains("--state-dir") && message.contains("uid 65534"),
            "{message}"
        );
        assert!(message.contains(&dir.display().to_string()), "{message}");
    }
    std::fs::remove_dir_all(root).unwrap();
}

//! The `keel` binary as an operator runs it: start-up, ONNX Runtime fallback, SIGTERM, and draining.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, example_models, infer_body};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Starts `keel serve` on an ephemeral port and returns it with the address it logged.
async fn spawn_keel(args: &[&str]) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("NO_COLOR", "1")
        .env("KEEL_MODEL_REPOSITORY", example_models())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log is on stderr.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push(line.clone());
            if let Some(rest) = line.split("http_addr=").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        panic!("keel exited before serving: {log:?}");
    })
    .await
    .expect("keel starts within 60 s");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, log)
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let (mut child, addr, _) = spawn_keel(&[]).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/v2/models/breast-cancer/infer"))
        .json(&infer_body(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn without_onnxruntime_auto_models_run_on_tract() {
    let (mut child, addr, log) =
        spawn_keel(&["--ort-library", "/nonexistent/libonnxruntime.so"]).await;
    assert!(
        log.iter().any(|l| l.contains("ONNX Runtime unavailable")),
        "{log:?}"
    );
    let client = reqwest::Client::new();
    let config: serde_json::Value = client
        .get(format!("http://{addr}/v2/models/breast-cancer/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["runtime"], "tract");
    let r = client
        .post(format!("http://{addr}/v2/models/breast-cancer/infer"))
        .json(&infer_body(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The ONNX Runtime-only model reports why it is not served, and how to fix it.
    let r = client
        .post(format!("http://{addr}/v2/models/breast-cancer-gbt/infer"))
        .json(&infer_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let err: serde_json::Value = r.json().await.unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("--ort-library") && msg.contains("/nonexistent"),
        "{msg}"
    );
    child.start_kill().unwrap();
}

/// A request whose body is still arriving when shutdown starts completes normally.
#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let s = TestServer::start(&example_models()).await;
    let addr = s.server.http_addr();
    let body = serde_json::to_vec(&infer_body(64)).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let shutdown = tokio::spawn(s.server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the in-flight request"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown started"
    );

    stream.write_all(rest).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("\"model_name\":\"breast-cancer\""),
        "{reply}"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Every configuration value out of range is refused, naming its flag, never a panic.
#[test]
fn every_bad_setting_is_an_error_naming_its_flag() {
    use keel_server::ServeConfig;
    type Edit = fn(&mut ServeConfig);
    let cases: [(&str, Edit); 20] = [
        ("--repository-poll", |c| c.repository_poll = 1e300),
        ("--repository-poll", |c| c.repository_poll = f64::NAN),
        ("--repository-poll", |c| c.repository_poll = -1.0),
        ("--repository-poll", |c| c.repository_poll = f64::INFINITY),
        ("--tls-reload-interval", |c| {
            c.tls.tls_reload_interval = 1e20
        }),
        ("--monitor-window", |c| c.monitor_window = 0.0),
        ("--monitor-evaluate-every", |c| {
            c.monitor_evaluate_every = f64::NAN
        }),
        ("--prediction-log-rotate", |c| {
            c.prediction_log_rotate = -5.0
        }),
        ("--header-read-timeout", |c| {
            c.limits.header_read_timeout = 1e300
        }),
        ("--body-read-timeout", |c| {
            c.limits.body_read_timeout = f64::NAN
        }),
        ("--idle-timeout", |c| c.limits.idle_timeout = -1.0),
        ("--grpc-keepalive", |c| c.limits.grpc_keepalive = 86_401.0),
        ("--request-timeout", |c| c.limits.request_timeout = f64::MAX),
        ("--shutdown-timeout", |c| {
            c.limits.shutdown_timeout = f64::NEG_INFINITY
        }),
        ("--max-connections", |c| c.limits.max_connections = 0),
        ("--grpc-max-concurrent-streams", |c| {
            c.limits.grpc_max_concurrent_streams = 0
        }),
        ("--max-inflight-bytes", |c| c.limits.max_inflight_bytes = 0),
        ("--max-body-bytes", |c| c.max_body_bytes = 0),
        ("--prediction-log-capacity", |c| {
            c.prediction_log_capacity = 0
        }),
        ("--monitor-min-samples", |c| c.monitor_min_samples = 0),
    ];
    let fine = ServeConfig::local("models");
    fine.validate().expect("the defaults are valid");
    for (flag, edit) in cases {
        let mut config = fine.clone();
        edit(&mut config);
        let err = config.validate().expect_err(flag);
        assert!(err.contains(flag), "{flag}: {err}");
    }
    // 0 turns polling and the timeouts off.
    let mut off = fine.clone();
    off.repository_poll = 0.0;
    off.limits.header_read_timeout = 0.0;
    off.validate().unwrap();
}

/// A number of seconds clap cannot take stops `keel serve` with the flag's name, not a panic.
#[tokio::test]
async fn keel_refuses_an_out_of_range_flag_by_name() {
    for (flag, value) in [
        ("--repository-poll", "1e300"),
        ("--repository-poll", "NaN"),
        ("--monitor-window", "-1"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", &format!("{flag}={value}")])
            .env("KEEL_MODEL_REPOSITORY", example_models())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A model.toml value that would panic or allocate without bound fails that model's load with the
/// key's name; the server and its other models go on.
#[tokio::test]
async fn a_bad_model_toml_value_fails_only_its_model_naming_the_key() {
    let repo = common::TempRepo::new(
        "lifecycle-bad-toml",
        &[
            (
                "poll",
                &example_models().join("breast-cancer/1/model.onnx"),
                "[source.mlflow]\ntracking_uri = \"http://127.0.0.1:9\"\nname = \"x\"\npoll_interval = 1e300\n",
            ),
            (
                "queue",
                &example_models().join("breast-cancer/1/model.onnx"),
                "[dynamic_batching]\nmax_queue_size = 100000000000\n",
            ),
            (
                "good",
                &example_models().join("breast-cancer/1/model.onnx"),
                "",
            ),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    for (model, key) in [
        ("poll", "[source.mlflow] poll_interval"),
        ("queue", "[dynamic_batching] max_queue_size"),
    ] {
        let (status, body) = s
            .post_json(&format!("/v2/models/{model}/infer"), &infer_body(1))
            .await;
        assert_eq!(status, 503, "{model}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(key), "{model}: {error}");
    }
    let (status, _) = s.post_json("/v2/models/good/infer", &infer_body(1)).await;
    assert_eq!(status, 200);
    s.server.shutdown().await.unwrap();
}

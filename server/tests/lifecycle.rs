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
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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

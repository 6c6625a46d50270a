//! Hot reload from the filesystem repository: new versions, removed versions, changed configuration,
//! corrupt and half-copied files, signature changes, and the explicit load/unload API, all against a
//! real server polling a real directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TempRepo, TestServer, example_models, infer_body, workspace};
use keel_server::ServeConfig;

const POLL: f64 = 0.1;

fn model_file(version: u64) -> PathBuf {
    example_models().join(format!("breast-cancer/{version}/model.onnx"))
}

async fn start(repo: &TempRepo) -> TestServer {
    let mut config = ServeConfig::local(&repo.root);
    config.repository_poll = POLL;
    config.admin_token = Some("t".into());
    TestServer::start_with(config).await
}

/// Publishes a version the documented way: write it elsewhere, then rename it into place.
fn publish(root: &Path, model: &str, version: u64, bytes: &[u8]) {
    let staging = root.join(format!(".staging-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("model.onnx"), bytes).unwrap();
    std::fs::rename(&staging, root.join(model).join(version.to_string())).unwrap();
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn served_version(server: &TestServer) -> String {
    let (status, body) = server.post_json("/v2/models/m/infer", &infer_body(1)).await;
    assert_eq!(status, 200, "{body}");
    body["model_version"].as_str().unwrap().to_string()
}

async fn index(server: &TestServer) -> Vec<serde_json::Value> {
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

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.server.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_replace_old_ones_and_failures_never_take_serving_away() {
    let repo = TempRepo::new("reload-fs", &[("m", &model_file(1), "")]);
    let server = start(&repo).await;
    assert_eq!(served_version(&server).await, "1");

    publish(&repo.root, "m", 2, &std::fs::read(model_file(2)).unwrap());
    eventually("version 2 serves", async || {
        served_version(&server).await == "2"
    })
    .await;
    let (status, _) = server.get("/v2/models/m/versions/1/ready").await;
    assert_eq!(status, 404, "version 1 left the latest-1 policy");

    // A corrupt version 3: version 2 keeps serving, the index says why version 3 is not.
    publish(&repo.root, "m", 3, b"not an onnx model");
    eventually("the index shows version 3 failing", async || {
        index(&server).await.iter().any(|row| {
            row["version"] == "3"
                && row["state"] == "UNAVAILABLE"
                && row["reason"].as_str().unwrap().contains("ONNX")
        })
    })
    .await;
    for _ in 0..5 {
        assert_eq!(served_version(&server).await, "2");
    }
    // Ten polls later the failure has been retried at most once more (backoff), not once per poll.
    tokio::time::sleep(Duration::from_secs_f64(POLL * 10.0)).await;
    let text = metrics(&server).await;
    let failures: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"keel_model_loads_total{model="m",outcome="failure"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&failures), "{failures} failed attempts");
    assert!(
        text.contains(r#"keel_model_version_info{model="m",state="UNAVAILABLE",version="3"} 1"#)
    );
    assert!(text.contains(r#"keel_model_version_info{model="m",state="READY",version="2"} 1"#));
    assert!(text.contains(r#"keel_model_swaps_total{model="m"} 1"#));

    // The next good version loads: polling did not wedge on the failure.
    publish(&repo.root, "m", 4, &std::fs::read(model_file(1)).unwrap());
    eventually("version 4 serves", async || {
        served_version(&server).await == "4"
    })
    .await;
    assert!(index(&server).await.iter().all(|row| row["version"] != "2"));

    // A changed model.toml reloads the model with it.
    std::fs::write(repo.root.join("m/model.toml"), "max_batch_size = 7\n").unwrap();
    eventually("the new configuration applies", async || {
        server.get("/v2/models/m/config").await.1["max_batch_size"] == 7
    })
    .await;

    // Removing the model directory unloads the model.
    std::fs::rename(repo.root.join("m"), repo.root.join(".m-removed")).unwrap();
    eventually("the model is gone", async || {
        server.get("/v2/models/m").await.0 == 404
    })
    .await;
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_copied_files_wait_until_complete() {
    let repo = TempRepo::new("reload-partial", &[("m", &model_file(1), "")]);
    let server = start(&repo).await;
    let full = std::fs::read(model_file(2)).unwrap();

    // Copied in place (not renamed), with a checksum that the first half cannot match.
    let dir = repo.root.join("m/2");
    std::fs::create_dir_all(&dir).unwrap();
    let sha = keel_server::repository::scan::sha256_hex(&model_file(2)).unwrap();
    std::fs::write(
        dir.join("model.onnx.sha256"),
        format!("{sha}  model.onnx\n"),
    )
    .unwrap();
    std::fs::write(dir.join("model.onnx"), &full[..full.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_secs_f64(POLL * 10.0)).await;
    assert_eq!(served_version(&server).await, "1");
    let rows = index(&server).await;
    assert!(
        rows.iter()
            .any(|r| r["version"] == "2" && r["reason"].as_str().unwrap().contains("sha256")),
        "{rows:?}"
    );
    std::fs::write(dir.join("model.onnx"), &full).unwrap();
    eventually("version 2 serves", async || {
        served_version(&server).await == "2"
    })
    .await;

    // Without a checksum: a file still growing at every look is not taken.
    let dir = repo.root.join("m/3");
    std::fs::create_dir_all(&dir).unwrap();
    let mut written = 0;
    while written < full.len() {
        written = (written + 64).min(full.len());
        std::fs::write(dir.join("model.onnx"), &full[..written]).unwrap();
        tokio::time::sleep(Duration::from_secs_f64(POLL / 2.0)).await;
        if written < full.len() {
            assert_eq!(served_version(&server).await, "2");
        }
    }
    eventually("version 3 serves", async || {
        served_version(&server).await == "3"
    })
    .await;
    let text = metrics(&server).await;
    assert!(
        !text.contains(r#"outcome="failure""#),
        "incomplete files are never attempted:\n{text}"
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_signature_is_refused_unless_allowed() {
    let repo = TempRepo::new("reload-signature", &[("m", &model_file(1), "")]);
    let server = start(&repo).await;
    let other = workspace().join("tests/models/datatypes/1/model.onnx");
    publish(&repo.root, "m", 2, &std::fs::read(&other).unwrap());
    eventually("version 2 is refused", async || {
        index(&server).await.iter().any(|r| {
            r["version"] == "2" && r["reason"].as_str().unwrap().contains("signature differs")
        })
    })
    .await;
    assert_eq!(served_version(&server).await, "1");

    std::fs::write(
        repo.root.join("m/model.toml"),
        "[reload]\nallow_signature_change = true\n",
    )
    .unwrap();
    eventually("version 2 serves", async || {
        server.get("/v2/models/m").await.1["versions"] == serde_json::json!(["2"])
    })
    .await;
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloaded_models_stay_unloaded_until_loaded_again() {
    let repo = TempRepo::new("reload-parked", &[("m", &model_file(1), "")]);
    let server = start(&repo).await;
    let control = |action: &'static str| {
        server
            .client
            .post(server.url(&format!("/v2/repository/models/m/{action}")))
            .bearer_auth("t")
            .send()
    };
    assert_eq!(control("unload").await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs_f64(POLL * 5.0)).await;
    assert_eq!(server.get("/v2/models/m/ready").await.0, 404);
    publish(&repo.root, "m", 2, &std::fs::read(model_file(2)).unwrap());
    tokio::time::sleep(Duration::from_secs_f64(POLL * 5.0)).await;
    assert_eq!(server.get("/v2/models/m/ready").await.0, 404);
    assert_eq!(control("load").await.unwrap().status(), 200);
    assert_eq!(served_version(&server).await, "2");

    // An explicit load of a broken model fails, names the cause, and leaves the serving version alone.
    publish(&repo.root, "m", 3, b"broken");
    let response = control("load").await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("version 3"),
        "{body}"
    );
    assert_eq!(served_version(&server).await, "2");
    server.server.shutdown().await.unwrap();
}

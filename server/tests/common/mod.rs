//! Helpers shared by the integration tests: real servers on ephemeral 127.0.0.1 ports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use keel_server::{ServeConfig, Server};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn example_models() -> PathBuf {
    workspace().join("models")
}

/// A scratch repository built from existing model files: `(name, source model.onnx, model.toml text)`.
pub struct TempRepo {
    pub root: PathBuf,
}

impl TempRepo {
    pub fn new(tag: &str, models: &[(&str, &Path, &str)]) -> Self {
        let root = std::env::temp_dir().join(format!("keel-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, source, toml) in models {
            let dir = root.join(name).join("1");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(source, dir.join("model.onnx")).unwrap();
            if !toml.is_empty() {
                std::fs::write(root.join(name).join("model.toml"), toml).unwrap();
            }
        }
        TempRepo { root }
    }
}

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start(repository: &Path) -> Self {
        Self::start_with(ServeConfig::local(repository)).await
    }

    pub async fn start_with(config: ServeConfig) -> Self {
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.http_addr());
        TestServer {
            server,
            base,
            // No test waits forever on a server that stopped answering.
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, String)],
    ) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
        let mut req = self.client.post(self.url(path)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.bytes().await.unwrap(),
        )
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let (status, _, bytes) = self
            .post_raw(path, serde_json::to_vec(body).unwrap(), &[])
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// The first `rows` rows of scikit-learn's breast-cancer features, as the model generator saved them.
pub fn breast_cancer_rows(rows: usize) -> Vec<f32> {
    let bytes = std::fs::read(workspace().join("tests/data/breast_cancer.npy")).unwrap();
    // .npy v1: magic(6) + version(2) + header_len(u16 LE) + header, then little-endian f32 data.
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data = &bytes[10 + header_len..];
    data.chunks_exact(4)
        .take(rows * 30)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn infer_body(rows: usize) -> serde_json::Value {
    serde_json::json!({
        "inputs": [{ "name": "input", "shape": [rows, 30], "datatype": "FP32", "data": breast_cancer_rows(rows) }]
    })
}

/// A binary-extension response: its JSON head and the raw output bytes after it.
pub fn split_binary<'a>(
    headers: &reqwest::header::HeaderMap,
    body: &'a [u8],
) -> (serde_json::Value, &'a [u8]) {
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&body[..json_len]).unwrap(),
        &body[json_len..],
    )
}

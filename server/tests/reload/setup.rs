//! A repository of the example model's versions, the server polling it, and versions published into it
//! the documented way.

use std::path::{Path, PathBuf};

use keel_server::ServeConfig;

use crate::common::{TempRepo, TestServer, example_models};

pub(crate) const POLL: f64 = 0.1;

pub(crate) fn model_file(version: u64) -> PathBuf {
    example_models().join(format!("breast-cancer/{version}/model.onnx"))
}

pub(crate) async fn start(repo: &TempRepo) -> TestServer {
    let mut config = ServeConfig::local(&repo.root);
    config.repository_poll = POLL;
    config.admin_token = Some("t".into());
    TestServer::start_with(config).await
}

/// Publishes a version the documented way: write it elsewhere, then rename it into place.
pub(crate) fn publish(root: &Path, model: &str, version: u64, bytes: &[u8]) {
    let staging = root.join(format!(".staging-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("model.onnx"), bytes).unwrap();
    std::fs::rename(&staging, root.join(model).join(version.to_string())).unwrap();
}

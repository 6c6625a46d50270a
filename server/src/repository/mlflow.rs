//! MLflow Model Registry as a version source: resolve an alias to a version, download that version's
//! artifacts through the tracking server's artifact proxy into a local cache, serve them from there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_monitor::outbound::{redact_url, warn_if_credentials_exposed};
use serde::Deserialize;

use super::{CONFIG_FILE, MODEL_FILE, blocking};
use crate::model_toml::MlflowSource;

/// Artifacts copied next to the model when the registered version has them.
const OPTIONAL_ARTIFACTS: [&str; 3] = ["baseline.json", CONFIG_FILE, "config.pbtxt"];
/// Marks a cache directory whose download finished.
const COMPLETE_MARKER: &str = ".complete";
/// Refuse artifacts beyond this size rather than fill the disk.
const MAX_ARTIFACT_BYTES: u64 = 4 << 30;
/// Longest wait for a registry answer other than a download (alias, download URI, listing): a hung
/// tracking server delays only its own model, and not for the downloads' longer limit.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Downloaded chunks in flight between the network and the file writer.
const WRITE_QUEUE: usize = 16;

pub struct MlflowClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

enum Auth {
    None,
    Bearer(String),
    Basic(String, String),
}

#[derive(Deserialize)]
struct AliasResponse {
    model_version: ModelVersion,
}

#[derive(Deserialize)]
struct ModelVersion {
    version: String,
}

#[derive(Deserialize)]
struct DownloadUri {
    artifact_uri: String,
}

#[derive(Deserialize, Default)]
struct Listing {
    #[serde(default)]
    files: Vec<ListedFile>,
}

#[derive(Deserialize)]
struct ListedFile {
    path: String,
    #[serde(default)]
    is_dir: bool,
}

impl MlflowClient {
    /// A client for `source.tracking_uri`; credentials come from the standard MLflow variables.
    pub fn new(source: &MlflowSource, http: &reqwest::Client) -> Result<Self, String> {
        let base = source.tracking_uri.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!(
                "[source.mlflow] tracking_uri '{}' must be an http:// or https:// URL of an MLflow tracking server",
                redact_url(&base)
            ));
        }
        let auth = match (
            std::env::var("MLFLOW_TRACKING_TOKEN"),
            std::env::var("MLFLOW_TRACKING_USERNAME"),
            std::env::var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Ok(token), _, _) if !token.is_empty() => Auth::Bearer(token),
            (_, Ok(user), Ok(password)) => Auth::Basic(user, password),
            _ => Auth::None,
        };
        let in_url = reqwest::Url::parse(&base)
            .map(|u| !u.username().is_empty() || u.password().is_some())
            .unwrap_or(false);
        if !matches!(auth, Auth::None) || in_url {
            warn_if_credentials_exposed(&base, "MLflow credentials");
        }
        Ok(MlflowClient {
            http: http.clone(),
            base,
            auth,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, String> {
        let request = self.get(path).query(query).timeout(METADATA_TIMEOUT);
        let response = request.send().await.map_err(|e| {
            format!(
                "MLflow at {} unreachable: {}",
                redact_url(&self.base),
                e.without_url()
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "MLflow {path} answered {status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        response
            .json()
            .await
            .map_err(|e| format!("MLflow {path}: unexpected response: {e}"))
    }

    /// The version number `alias` points at.
    pub async fn resolve_alias(&self, name: &str, alias: &str) -> Result<u64, String> {
        let found: AliasResponse = self
            .get_json(
                "/api/2.0/mlflow/registered-models/alias",
                &[("name", name), ("alias", alias)],
            )
            .await?;
        found
            .model_version
            .version
            .parse()
            .map_err(|_| format!("MLflow returned a non-numeric version for {name}@{alias}"))
    }

    /// Downloads version `version` into `<cache>/<version>/` unless a complete copy is there. Files are
    /// written on the blocking pool, never on the async workers.
    pub async fn fetch_version(
        &self,
        name: &str,
        version: u64,
        cache: &Path,
    ) -> Result<PathBuf, String> {
        let target = cache.join(version.to_string());
        let marker = target.join(COMPLETE_MARKER);
        if blocking(move || marker.is_file()).await? {
            return Ok(target);
        }
        let v = version.to_string();
        let uri: DownloadUri = self
            .get_json(
                "/api/2.0/mlflow/model-versions/get-download-uri",
                &[("name", name), ("version", &v)],
            )
            .await?;
        let root = artifact_path(&uri.artifact_uri)?;
        let listing: Listing = self
            .get_json("/api/2.0/mlflow-artifacts/artifacts", &[("path", &root)])
            .await?;
        let has = |file: &str| {
            listing
                .files
                .iter()
                .any(|f| !f.is_dir && leaf(&f.path) == file)
        };
        if !has(MODEL_FILE) {
            return Err(format!(
                "MLflow {name} version {version} has no {MODEL_FILE} at its artifact root {}",
                redact_url(&uri.artifact_uri)
            ));
        }
        // Download beside the target and rename into place, so a half-finished download is never served.
        let staging = cache.join(format!(".download-{version}-{}", std::process::id()));
        let (dir, fresh) = (cache.to_path_buf(), staging.clone());
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| format!("cache {}: {e}", dir.display()))?;
            let _ = std::fs::remove_dir_all(&fresh);
            std::fs::create_dir_all(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))
        })
        .await??;
        let result = async {
            for file in std::iter::once(MODEL_FILE).chain(OPTIONAL_ARTIFACTS) {
                if has(file) {
                    self.download(&format!("{root}/{file}"), staging.join(file))
                        .await?;
                }
            }
            let (staging, target, artifact_uri) =
                (staging.clone(), target.clone(), uri.artifact_uri.clone());
            blocking(move || {
                std::fs::write(staging.join(COMPLETE_MARKER), artifact_uri)
                    .map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&target);
                std::fs::rename(&staging, &target)
                    .map_err(|e| format!("moving the download into {}: {e}", target.display()))
            })
            .await?
        }
        .await;
        if result.is_err() {
            let _ = blocking(move || std::fs::remove_dir_all(&staging)).await;
        }
        result.map(|()| target)
    }

    /// Streams one artifact into `dest`: the network on this task, the writes on the blocking pool.
    async fn download(&self, artifact: &str, dest: PathBuf) -> Result<(), String> {
        let mut response = self
            .get(&format!("/api/2.0/mlflow-artifacts/artifacts/{artifact}"))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "MLflow at {} unreachable: {}",
                    redact_url(&self.base),
                    e.without_url()
                )
            })?;
        if !response.status().is_success() {
            return Err(format!(
                "downloading {artifact} from MLflow: HTTP {}",
                response.status()
            ));
        }
        let (chunks, mut received) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let mut file =
                std::fs::File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            while let Some(chunk) = received.blocking_recv() {
                file.write_all(&chunk)
                    .map_err(|e| format!("{}: {e}", dest.display()))?;
            }
            file.sync_all()
                .map_err(|e| format!("{}: {e}", dest.display()))
        });
        let mut written = 0u64;
        let streamed = async {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("downloading {artifact}: {e}"))?
            {
                written += chunk.len() as u64;
                if written > MAX_ARTIFACT_BYTES {
                    return Err(format!(
                        "{artifact} is larger than {MAX_ARTIFACT_BYTES} bytes"
                    ));
                }
                if chunks.send(chunk).await.is_err() {
                    // The writer stopped on an error, which it reports below.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(chunks);
        let wrote = writer
            .await
            .map_err(|e| format!("writing {artifact}: {e}"))?;
        streamed.and(wrote)
    }
}

/// `mlflow-artifacts:/1/models/m-1/artifacts` (or with a host) to the proxy path `1/models/m-1/artifacts`.
fn artifact_path(uri: &str) -> Result<String, String> {
    let rest = uri.strip_prefix("mlflow-artifacts:").ok_or_else(|| {
        format!(
            "artifact URI '{uri}' is not served by the tracking server: start `mlflow server` with --serve-artifacts"
        )
    })?;
    // With a host (mlflow-artifacts://host:port/path) the path starts after the authority.
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    let path = path.trim_matches('/');
    if path.split('/').any(|part| part == "..") {
        return Err(format!("artifact URI '{uri}' leaves the artifact root"));
    }
    Ok(path.to_string())
}

fn leaf(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Where the version an alias last resolved to is remembered, beside the downloads: `None` for an alias
/// that cannot be a file name (MLflow's own are letters, digits, `-` and `_`).
fn alias_record(cache: &Path, alias: &str) -> Option<PathBuf> {
    (!alias.is_empty()
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then(|| cache.join(format!(".alias-{alias}")))
}

/// Remembers that `alias` resolved to `version`, downloaded whole. Blocking.
pub fn remember_alias(cache: &Path, alias: &str, version: u64) {
    let Some(record) = alias_record(cache, alias) else {
        return;
    };
    let staging = record.with_extension("tmp");
    let written = std::fs::write(&staging, version.to_string())
        .and_then(|()| std::fs::rename(&staging, &record));
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot remember the alias's version");
    }
}

/// The version `alias` last resolved to, when its download is complete in the cache. Blocking.
pub fn cached_alias(cache: &Path, alias: &str) -> Option<u64> {
    let text = std::fs::read_to_string(alias_record(cache, alias)?).ok()?;
    let version: u64 = text.trim().parse().ok()?;
    cache
        .join(version.to_string())
        .join(COMPLETE_MARKER)
        .is_file()
        .then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris() {
        assert_eq!(
            artifact_path("mlflow-artifacts:/1/models/m-abc/artifacts").unwrap(),
            "1/models/m-abc/artifacts"
        );
        assert_eq!(
            artifact_path("mlflow-artifacts://host:5000/1/m/artifacts").unwrap(),
            "1/m/artifacts"
        );
        assert!(
            artifact_path("s3://bucket/x")
                .unwrap_err()
                .contains("--serve-artifacts")
        );
        assert!(artifact_path("mlflow-artifacts:/1/../../etc").is_err());
    }
}

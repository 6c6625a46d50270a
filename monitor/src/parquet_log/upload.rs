//! Upload of finished files to S3-compatible object storage (`--prediction-log-upload-url
//! s3://bucket/prefix`), so retraining jobs read them from the bucket and the local folder only
//! buffers. Objects keep the local layout: `<prefix>/<model folder>/<file name>`. Credentials,
//! region and endpoint come from the standard `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a plain-http
//! endpoint such as MinIO or moto), read by the `object_store` crate.
//!
//! The writer hands each finished file to an [`UploadQueue`]; one task uploads them oldest first,
//! retrying failures with backoff (1 s doubling to 60 s). An uploaded file's name is appended to
//! `<model folder>/.uploaded`, so after a restart only the files not yet uploaded are sent (the
//! start-up scan queues every finished file not listed there). Retention keeps a file awaiting its
//! upload past `--prediction-log-max-age`, but the size limit deletes it (counted as lost).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, RetryConfig};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::naming::parse_name;

/// Per-folder list of uploaded file names. Hidden: readers skip names starting with `.`.
const UPLOADED: &str = ".uploaded";
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why uploading cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(
        "--prediction-log-upload-url {0:?}: expected s3://bucket or s3://bucket/prefix (credentials and endpoint from AWS_* variables)"
    )]
    Url(String),
    #[error("--prediction-log-upload-url: {0}")]
    Store(#[from] object_store::Error),
    #[error("prediction log upload metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Where files go: a bucket and a key prefix (no leading or trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadTarget {
    pub bucket: String,
    pub prefix: String,
}

impl UploadTarget {
    pub fn parse(url: &str) -> Result<Self, UploadError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| UploadError::Url(url.into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || prefix.split('/').any(|part| part == "..") {
            return Err(UploadError::Url(url.into()));
        }
        Ok(Self {
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
        })
    }

    fn key(&self, folder: &str, name: &str) -> object_store::path::Path {
        let key = if self.prefix.is_empty() {
            format!("{folder}/{name}")
        } else {
            format!("{}/{folder}/{name}", self.prefix)
        };
        object_store::path::Path::from(key)
    }
}

#[derive(Clone)]
struct Metrics {
    uploads: IntCounterVec,
    bytes: IntCounter,
    pending: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let uploads = IntCounterVec::new(
            Opts::new(
                "keel_prediction_log_uploads_total",
                "Prediction-log files handled by the uploader: ok (uploaded), error (an attempt failed; retried), lost (deleted before its upload: retention's size limit).",
            ),
            &["outcome"],
        )?;
        for outcome in ["ok", "error", "lost"] {
            uploads.with_label_values(&[outcome]);
        }
        let bytes = IntCounter::new(
            "keel_prediction_log_uploaded_bytes_total",
            "Bytes of prediction-log files uploaded.",
        )?;
        let pending = IntGauge::new(
            "keel_prediction_log_upload_pending_files",
            "Finished prediction-log files waiting for their upload.",
        )?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        Ok(Self {
            uploads,
            bytes,
            pending,
        })
    }
}

struct Shared {
    pending: Mutex<BTreeSet<PathBuf>>,
    wake: Notify,
    /// Set at shutdown: upload what is pending until then, then stop.
    stop: watch::Sender<Option<Instant>>,
    metrics: Metrics,
}

/// The writer's handle: files to upload, and whether one still waits.
#[derive(Clone)]
pub struct UploadQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UploadQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadQueue")
            .field("pending", &self.len())
            .finish()
    }
}

impl UploadQueue {
    /// Queues a finished file.
    pub fn push(&self, path: PathBuf) {
        let mut pending = self.lock();
        pending.insert(path);
        self.shared.metrics.pending.set(pending.len() as i64);
        drop(pending);
        self.shared.wake.notify_one();
    }

    pub fn is_pending(&self, path: &Path) -> bool {
        self.lock().contains(path)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the uploader to finish: it keeps uploading what is pending until `deadline` or its
    /// first failure, then ends. Files left are uploaded after the next start.
    pub fn close(&self, deadline: std::time::Instant) {
        self.shared
            .stop
            .send_replace(Some(Instant::from_std(deadline)));
        self.shared.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn first(&self) -> Option<PathBuf> {
        self.lock().first().cloned()
    }

    fn done(&self, path: &Path) {
        let mut pending = self.lock();
        pending.remove(path);
        self.shared.metrics.pending.set(pending.len() as i64);
    }
}

/// The upload task; [`Uploader::run`] it on the runtime.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    target: UploadTarget,
    queue: UploadQueue,
    stop: watch::Receiver<Option<Instant>>,
}

/// Builds the S3 client for `url` (no request is made yet) and queues every finished file under
/// `dir` not yet listed as uploaded: call it after the writer recovered the files of a crash.
pub fn start(
    url: &str,
    dir: &Path,
    registry: &Registry,
) -> Result<(UploadQueue, Uploader), UploadError> {
    let target = UploadTarget::parse(url)?;
    // Few quick retries inside one attempt: the task's own backoff handles an outage, and a
    // shutdown must not wait minutes on a dead endpoint.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..RetryConfig::default()
    };
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&target.bucket)
        .with_retry(retry)
        .build()?;
    let metrics = Metrics::new(registry)?;
    let (stop, stop_rx) = watch::channel(None);
    let queue = UploadQueue {
        shared: Arc::new(Shared {
            pending: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            stop,
            metrics,
        }),
    };
    for path in not_uploaded(dir) {
        queue.push(path);
    }
    let uploader = Uploader {
        store: Arc::new(store),
        target,
        queue: queue.clone(),
        stop: stop_rx,
    };
    Ok((queue, uploader))
}

impl Uploader {
    pub async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        let mut warned: Option<Instant> = None;
        loop {
            let deadline = *self.stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let Some(path) = self.queue.first() else {
                if deadline.is_some() {
                    break;
                }
                tokio::select! {
                    () = self.queue.shared.wake.notified() => {}
                    _ = self.stop.changed() => {}
                }
                continue;
            };
            let metrics = &self.queue.shared.metrics;
            match self.upload(&path).await {
                Ok(Some(bytes)) => {
                    metrics.uploads.with_label_values(&["ok"]).inc();
                    metrics.bytes.inc_by(bytes);
                    self.queue.done(&path);
                    backoff = FIRST_BACKOFF;
                }
                Ok(None) => {
                    metrics.uploads.with_label_values(&["lost"]).inc();
                    tracing::warn!(path = %path.display(), "prediction log: a file was deleted before its upload");
                    self.queue.done(&path);
                }
                Err(error) => {
                    metrics.uploads.with_label_values(&["error"]).inc();
                    if deadline.is_some() {
                        // Shutting down with the store away: the next start sends the rest.
                        tracing::warn!(path = %path.display(), %error, "prediction log: upload failed at shutdown");
                        break;
                    }
                    // One warning a minute: a bucket down for hours must not flood the log.
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        warned = Some(Instant::now());
                        tracing::warn!(path = %path.display(), %error, retry_in_s = backoff.as_secs(), "prediction log: upload failed; retrying");
                    }
                    let until = Instant::now() + backoff;
                    let until = deadline.map_or(until, |d| until.min(d));
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        _ = self.stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let left = self.queue.len();
        if left > 0 {
            tracing::warn!(
                files = left,
                "prediction log: files not uploaded at shutdown; they are uploaded after the next start"
            );
        }
    }

    /// Uploads one file and lists it as uploaded: `Some(bytes)`, or `None` when the file is gone.
    async fn upload(&self, path: &Path) -> Result<Option<u64>, String> {
        let (Some(folder), Some(name)) = (
            path.parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str()),
            path.file_name().and_then(|n| n.to_str()),
        ) else {
            return Ok(None);
        };
        let data = match tokio::fs::read(path).await {
            Ok(data) => data,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.to_string()),
        };
        let bytes = data.len() as u64;
        self.store
            .put(&self.target.key(folder, name), data.into())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(parent) = path.parent() {
            mark_uploaded(parent, name).map_err(|e| e.to_string())?;
        }
        Ok(Some(bytes))
    }
}

fn mark_uploaded(folder: &Path, name: &str) -> std::io::Result<()> {
    let mut list = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(folder.join(UPLOADED))?;
    list.write_all(format!("{name}\n").as_bytes())
}

/// Finished files under `dir` not listed as uploaded, and each folder's list pruned to the files
/// still there (retention deletes uploaded files; their names need not be kept).
fn not_uploaded(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(folders) = fs::read_dir(dir) else {
        return out;
    };
    for folder in folders
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
    {
        let listed: HashSet<String> = fs::read_to_string(folder.join(UPLOADED))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        let mut still_there = Vec::new();
        for name in entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| parse_name(n).is_some())
        {
            if listed.contains(&name) {
                still_there.push(name);
            } else {
                out.push(folder.join(name));
            }
        }
        if still_there.len() < listed.len() {
            still_there.sort();
            let text: String = still_there.iter().map(|n| format!("{n}\n")).collect();
            let _ = fs::write(folder.join(UPLOADED), text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_a_bucket_and_a_prefix() {
        let t = UploadTarget::parse("s3://logs/keel/prod/").unwrap();
        assert_eq!(
            (t.bucket.as_str(), t.prefix.as_str()),
            ("logs", "keel/prod")
        );
        assert_eq!(
            t.key("m", "predictions-1-2-0.parquet").as_ref(),
            "keel/prod/m/predictions-1-2-0.parquet"
        );
        let t = UploadTarget::parse("s3://logs").unwrap();
        assert_eq!(t.key("m", "f.parquet").as_ref(), "m/f.parquet");
        for bad in ["logs", "gs://x/y", "s3://", "s3:///x", "s3://b/../x"] {
            assert!(UploadTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_start_up_scan_queues_files_not_listed_and_prunes_the_list() {
        let dir = std::env::temp_dir().join(format!("keel-upload-scan-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let folder = dir.join("m");
        fs::create_dir_all(&folder).unwrap();
        for name in [
            "predictions-0000000000001-0000000000002-0.parquet",
            "feedback-0000000000001-0000000000002-0.parquet",
            ".tmp-predictions-1-0.parquet.partial",
        ] {
            fs::write(folder.join(name), b"x").unwrap();
        }
        fs::write(
            folder.join(UPLOADED),
            "predictions-0000000000001-0000000000002-0.parquet\ngone.parquet\n",
        )
        .unwrap();
        assert_eq!(
            not_uploaded(&dir),
            vec![folder.join("feedback-0000000000001-0000000000002-0.parquet")]
        );
        assert_eq!(
            fs::read_to_string(folder.join(UPLOADED)).unwrap(),
            "predictions-0000000000001-0000000000002-0.parquet\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

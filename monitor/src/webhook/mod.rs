//! The alert webhook: delivers [`AlertEvent`]s as CloudEvents 1.0 structured JSON
//! (`application/cloudevents+json`, body described in [`cloudevent`]), signed per Standard
//! Webhooks (`webhook-id`, stable across retries; `webhook-timestamp`, unix seconds of the attempt;
//! `webhook-signature: v1,<base64 HMAC-SHA256>`).
//!
//! Every event is stored in `state_dir` before its first attempt and deleted once it is delivered
//! (2xx), gone (410), refused (other 4xx but 408/429) or expired (`max_age` or `max_attempts`), so
//! events survive restarts and are delivered at least once; receivers dedupe on `webhook-id`.
//! Retries back off exponentially with jitter, or wait the receiver's `Retry-After` seconds.
//! Outcomes are counted in `keel_webhook_deliveries_total{outcome}`; the backlog is
//! `keel_webhook_pending_events`.
//!
//! `https://` receivers are verified against the system's roots plus `--ca-bundle`; `state_dir` is
//! private to Keel's user (see [`crate::local_state`]), so nobody else can plant an event to be signed.

mod cloudevent;
mod delivery;
mod metrics;
mod secret;
mod signing;
mod store;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use reqwest::Url;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

pub use cloudevent::rfc3339;
pub use secret::{Secret, SecretSource};
pub use signing::signature;

use crate::event::{AlertEvent, AlertSink};
use crate::local_state::{LocalStateError, private_dir};
use crate::outbound::{OutboundError, OutboundTlsArgs, redact_url, warn_if_credentials_exposed};
use crate::parquet_log::files_covering;
use metrics::Metrics;
use store::{Store, StoredEvent};
use worker::{Worker, WorkerParts, now_ms};

/// Where and how alerts are delivered.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The receiver, `https://...` or `http://...`. A `user:password@` in it is sent as HTTP Basic
    /// authentication and never logged.
    pub url: String,
    /// Extra roots for an `https://` receiver (`--ca-bundle`), besides the system's.
    pub tls: OutboundTlsArgs,
    pub secret: Secret,
    /// CloudEvents `source` (default "keel").
    pub source: String,
    /// Per-attempt timeout (default 15 s).
    pub timeout: Duration,
    /// Folder of undelivered events.
    pub state_dir: PathBuf,
    /// An event is abandoned this long after it was raised (default 24 h).
    pub max_age: Duration,
    /// An event is abandoned after this many attempts (default 30, so `max_age` binds first).
    pub max_attempts: u32,
    /// First retry delay, doubling per attempt (default 5 s).
    pub initial_backoff: Duration,
    /// Longest retry delay (default 2 h).
    pub max_backoff: Duration,
    /// Events queued for the sender task; beyond it the sink stores them itself (default 1024).
    pub queue_capacity: usize,
    /// The prediction log (see [`crate::parquet_log`]); when set, each event lists its files
    /// covering the event's window in `data.files`, after the writer finished the files holding
    /// the window's newest rows.
    pub log_dir: Option<PathBuf>,
}

impl WebhookConfig {
    /// The defaults above for `url`, `secret` and `state_dir`.
    pub fn new(url: impl Into<String>, secret: Secret, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            tls: OutboundTlsArgs::default(),
            secret,
            source: "keel".into(),
            timeout: Duration::from_secs(15),
            state_dir: state_dir.into(),
            max_age: Duration::from_secs(24 * 3600),
            max_attempts: 30,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2 * 3600),
            queue_capacity: 1024,
            log_dir: None,
        }
    }
}

/// Why the webhook sender cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook secret: {0}")]
    Secret(String),
    /// `url` is redacted: it never holds a password.
    #[error("webhook URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("webhook state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhook state dir (--state-dir): {0}")]
    LocalState(#[from] LocalStateError),
    #[error("webhook: {0}")]
    Tls(#[from] OutboundError),
    #[error("webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the webhook sender must be started inside a tokio runtime")]
    NoRuntime,
}

/// The running sender. [`Webhook::shutdown`] or drop stops it; undelivered events stay on disk.
#[derive(Debug)]
pub struct Webhook {
    /// Dropping it tells the task to stop.
    stop: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Webhook {
    /// Loads the events a previous run left in `state_dir`, registers the metrics and spawns the
    /// sender task on the current tokio runtime. The returned sink never blocks on the network.
    pub fn start(
        config: WebhookConfig,
        registry: &Registry,
    ) -> Result<(Webhook, AlertSink), WebhookError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let url = parse_url(&config.url)?;
        if !url.username().is_empty() || url.password().is_some() {
            warn_if_credentials_exposed(
                &config.url,
                "webhook credentials (user:password in the URL)",
            );
        }
        let client = config
            .tls
            .client_builder()?
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keel-webhook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let state_error = |source| WebhookError::StateDir {
            path: config.state_dir.clone(),
            source,
        };
        private_dir(&config.state_dir)?;
        let store = Store::open(&config.state_dir).map_err(state_error)?;
        let (loaded, corrupt) = store.load_all().map_err(state_error)?;
        // Last fallible step, so a failed start leaves nothing registered.
        let metrics = Metrics::register(registry)?;

        let (queue_tx, queue) = mpsc::channel(config.queue_capacity.max(1));
        let (stop, shutdown) = watch::channel(());
        let stored_aside = Arc::new(Notify::new());
        let parts = WorkerParts {
            client,
            url,
            store: store.clone(),
            metrics: metrics.clone(),
            queue,
            stored_aside: stored_aside.clone(),
            shutdown,
        };
        let worker = Worker::new(&config, parts);
        worker.count_corrupt(&corrupt);
        metrics
            .pending
            .set(i64::try_from(loaded.len()).unwrap_or(i64::MAX));
        let task = runtime.spawn(worker.run(loaded));

        let enqueue = Enqueue {
            queue: queue_tx,
            store,
            source: config.source,
            log_dir: config.log_dir,
            metrics,
            stored_aside,
        };
        let sink: AlertSink = Arc::new(move |event| enqueue.send(event));
        Ok((
            Webhook {
                stop: Some(stop),
                task: Some(task),
            },
            sink,
        ))
    }

    /// Stops the sender and waits for it: an attempt in flight is abandoned (the event is sent
    /// again by the next start) and queued events are stored.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "webhook sender task ended abnormally");
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.take();
    }
}

fn parse_url(text: &str) -> Result<Url, WebhookError> {
    let error = |reason: String| WebhookError::Url {
        url: redact_url(text),
        reason,
    };
    let url = Url::parse(text).map_err(|e| error(e.to_string()))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        "http" | "https" => Err(error("no host".into())),
        other => Err(error(format!(
            "unsupported scheme {other:?}: use https:// or http://"
        ))),
    }
}

/// Longest an event waits for the prediction-log writer to finish the files holding its window's
/// newest rows: the writer looks every 250 ms; a writer that is not running never answers.
const SEAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The sink's side: turns an event into its body and id, and queues it, or stores it directly
/// when the queue is full or the sender stopped, so no event is lost without being counted.
struct Enqueue {
    queue: mpsc::Sender<StoredEvent>,
    store: Store,
    source: String,
    log_dir: Option<PathBuf>,
    metrics: Metrics,
    stored_aside: Arc<Notify>,
}

impl Enqueue {
    fn send(&self, mut event: AlertEvent) {
        if let Some(dir) = &self.log_dir {
            // The newest rows of the window are in the model's open file: have the writer finish
            // it first, so the event lists every row of its window (see parquet_log::seal).
            crate::parquet_log::seal(dir, &event.model, SEAL_TIMEOUT);
            for file in files_covering(
                dir,
                &event.model,
                event.window_start_ms,
                event.window_end_ms,
            ) {
                let file = file.display().to_string();
                if !event.files.contains(&file) {
                    event.files.push(file);
                }
            }
        }
        let created_ms = now_ms();
        let id = cloudevent::new_event_id(created_ms);
        let body = match cloudevent::body(&event, &id, &self.source) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "webhook: cannot encode an alert event; dropped");
                self.metrics.dropped.inc();
                return;
            }
        };
        let stored = StoredEvent {
            id,
            body,
            attempts: 0,
            created_ms,
        };
        let (Err(TrySendError::Full(stored)) | Err(TrySendError::Closed(stored))) =
            self.queue.try_send(stored)
        else {
            return;
        };
        match self.store.save(&self.store.path_for(&stored.id), &stored) {
            Ok(()) => {
                tracing::warn!(id = %stored.id, "webhook: queue full or sender stopped; event stored for later");
                self.stored_aside.notify_one();
            }
            Err(error) => {
                tracing::error!(id = %stored.id, %error, "webhook: queue full and event not storable; dropped");
                self.metrics.dropped.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_https_and_http_only_and_errors_redacted() {
        assert_eq!(
            parse_url("https://hooks.example/keel").unwrap().scheme(),
            "https"
        );
        assert!(parse_url("http://127.0.0.1:9/hook").is_ok());
        for bad in [
            "ftp://user:hunter2@hooks.example/x",
            "hooks.example/x",
            "https://",
        ] {
            let message = parse_url(bad).unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{message}");
        }
        let message = parse_url("ftp://user:hunter2@hooks.example/x")
            .unwrap_err()
            .to_string();
        assert!(message.contains("ftp://hooks.example/x"), "{message}");
    }
}

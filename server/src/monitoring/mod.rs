//! Keel watching its own models, server side: the prediction log on the request path, the drain thread
//! that feeds the sinks (embedded monitor, sidecar, Parquet files), version specs for the monitor as
//! versions come and go, and ground-truth feedback.

pub mod baseline_cmd;
mod drain;
pub mod feedback;
mod log;
mod rows;
mod sidecar_client;

use std::sync::{Arc, Mutex};

use keel_monitor::auth::ClientToken;
use keel_monitor::parquet_log::{ParquetConfig, ParquetSink};
use keel_monitor::webhook::Webhook;
use keel_monitor::{Baseline, FeedbackRecord, FeedbackSummary, ModelSpec, Monitor};
use prometheus::Registry;

use crate::config::{MonitorMode, ServeConfig};
use crate::repository::{ServedVersion, VersionObserver};
pub use log::{PredictionLog, VersionLog, now_ms};
pub use rows::Captured;

use drain::{Control, Sinks};
use sidecar_client::SidecarHandle;

/// The file next to `model.onnx` that holds a version's training distribution.
pub const BASELINE_FILE: &str = "baseline.json";

#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error("monitor metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("monitor: {0}")]
    Monitor(#[from] keel_monitor::MonitorError),
    #[error("prediction-log files: {0}")]
    Parquet(#[from] keel_monitor::parquet_log::ParquetError),
    #[error("webhook: {0}")]
    Webhook(#[from] keel_monitor::webhook::WebhookError),
    #[error("cannot start the prediction-log thread: {0}")]
    Thread(std::io::Error),
}

/// What became of a feedback post.
#[derive(Debug, serde::Serialize)]
pub struct FeedbackReply {
    pub received: usize,
    /// Joined with a logged prediction (embedded monitor only; a sidecar joins on its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<u64>,
}

pub struct Monitoring {
    log: PredictionLog,
    control: crossbeam_channel::Sender<Control>,
    embedded: Option<Arc<Monitor>>,
    background: Mutex<Background>,
}

#[derive(Default)]
struct Background {
    drain: Option<std::thread::JoinHandle<()>>,
    evaluator: Option<tokio::task::JoinHandle<()>>,
    webhook: Option<Webhook>,
}

impl Monitoring {
    /// Starts the log, its drain thread and the configured sinks. `None` when monitoring is off and no
    /// file sink is configured: then nothing is logged at all.
    pub fn start(
        config: &ServeConfig,
        registry: &Registry,
    ) -> Result<Option<Arc<Self>>, MonitoringError> {
        let embedded_mode =
            config.monitor_endpoint.is_none() && config.monitor == MonitorMode::Embedded;
        if !embedded_mode
            && config.monitor_endpoint.is_none()
            && config.prediction_log_dir.is_none()
        {
            return Ok(None);
        }
        let (log, items, queued) = PredictionLog::new(config.prediction_log_capacity, registry)?;
        let mut background = Background::default();
        let embedded = if embedded_mode {
            let alerts = match keel_monitor::sidecar::start_alerts(
                &config.webhook,
                &config.outbound_tls,
                config.prediction_log_dir.as_deref(),
                registry,
            )? {
                Some((webhook, sink)) => {
                    background.webhook = Some(webhook);
                    Some(sink)
                }
                None => None,
            };
            let monitor = Monitor::new(config.monitor_config(), registry, alerts)?;
            background.evaluator = Some(tokio::spawn(monitor.clone().run()));
            Some(monitor)
        } else {
            None
        };
        let parquet = match &config.prediction_log_dir {
            Some(dir) => Some(ParquetSink::new(ParquetConfig {
                max_file_age: std::time::Duration::from_secs_f64(
                    config.prediction_log_rotate.max(0.1),
                ),
                ..ParquetConfig::new(dir)
            })?),
            None => None,
        };
        let token = ClientToken {
            token: config.monitor_token.clone(),
            file: config.monitor_token_file.clone(),
        };
        let sidecar = config
            .monitor_endpoint
            .clone()
            .map(|endpoint| SidecarHandle::start(endpoint, token, log.dropped().clone()));
        let (control, control_rx) = crossbeam_channel::unbounded();
        let sinks = Sinks {
            monitor: embedded.clone(),
            parquet,
            sidecar,
            dropped: log.dropped().clone(),
        };
        background.drain =
            Some(drain::spawn(items, control_rx, queued, sinks).map_err(MonitoringError::Thread)?);
        Ok(Some(Arc::new(Monitoring {
            log,
            control,
            embedded,
            background: Mutex::new(background),
        })))
    }

    pub fn log(&self) -> &PredictionLog {
        &self.log
    }

    /// The embedded monitor, when it runs in this process.
    pub fn monitor(&self) -> Option<&Arc<Monitor>> {
        self.embedded.as_ref()
    }

    /// Joins feedback with logged predictions (embedded) and queues it for the sidecar and the files.
    pub fn feedback(&self, items: Vec<FeedbackRecord>) -> FeedbackReply {
        let received = items.len();
        let summary: Option<FeedbackSummary> = self.embedded.as_ref().map(|m| m.feedback(&items));
        self.log.push_feedback(items);
        FeedbackReply {
            received,
            matched: summary.as_ref().map(|s| s.matched),
            unmatched: summary.as_ref().map(|s| s.unmatched),
        }
    }

    /// Flushes what is queued, closes the files, stops the webhook.
    pub async fn shutdown(&self) {
        let mut background =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = self.control.send(Control::Shutdown);
        if let Some(drain) = background.drain.take() {
            let _ = tokio::task::spawn_blocking(move || drain.join()).await;
        }
        if let Some(evaluator) = background.evaluator.take() {
            evaluator.abort();
        }
        if let Some(webhook) = background.webhook.take() {
            webhook.shutdown().await;
        }
    }
}

impl VersionObserver for Monitoring {
    fn serving(&self, version: &ServedVersion) {
        let settings = version.config.monitor.clone().unwrap_or_default();
        let path = version.dir.join(BASELINE_FILE);
        let baseline = match path.is_file() {
            false => None,
            true => match Baseline::load(&path) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::error!(model = %version.model, version = version.version, file = %path.display(), error = %e, "baseline unreadable; drift is not measured for this version");
                    None
                }
            },
        };
        let spec = ModelSpec {
            model: version.model.clone(),
            version: version.version,
            baseline,
            settings,
        };
        let _ = self.control.send(Control::Version(Box::new(spec)));
    }

    fn retired(&self, model: &str, version: u64) {
        let _ = self.control.send(Control::Retire {
            model: model.to_string(),
            version,
        });
    }
}

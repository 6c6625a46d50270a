//! Keel watching its own models, server side: the drain thread that feeds what the prediction log
//! ([`crate::prediction_log`]) queued to the sinks (embedded monitor, sidecar, Parquet files), version
//! specs for the monitor as versions come and go (it is the repository's [`VersionObserver`]), and
//! ground-truth feedback.

pub mod baseline_cmd;
mod drain;
pub mod feedback;
mod scratch;
mod sidecar_client;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_monitor::auth::ClientToken;
use keel_monitor::parquet_log::{self, ParquetConfig, ParquetSink, Retention, UploadQueue};
use keel_monitor::webhook::Webhook;
use keel_monitor::{Baseline, FeedbackRecord, FeedbackSummary, ModelSpec, Monitor};
use prometheus::Registry;

use crate::config::{MonitorMode, ServeConfig};
use crate::prediction_log::{LogLimits, PredictionLog};
use crate::repository::{ServedVersion, VersionObserver};

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
    #[error("{0}")]
    Upload(#[from] keel_monitor::parquet_log::UploadError),
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
    sidecar: Option<tokio::task::JoinHandle<()>>,
    uploads: Option<UploadQueue>,
    uploader: Option<tokio::task::JoinHandle<()>>,
}

/// How long [`Monitoring::shutdown`] may take when no deadline is given.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

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
        let limits = LogLimits {
            rows: config.prediction_log_capacity,
            bytes: config.prediction_log_capacity_bytes,
            max_elements: config.prediction_log_max_elements,
        };
        let (log, items, _budget) = PredictionLog::new(limits, registry)?;
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
            Some(dir) => {
                let retention = Retention {
                    max_age: (config.prediction_log_max_age > 0.0)
                        .then(|| Duration::from_secs_f64(config.prediction_log_max_age)),
                    max_bytes: (config.prediction_log_max_bytes > 0)
                        .then_some(config.prediction_log_max_bytes),
                };
                let mut sink = ParquetSink::new(ParquetConfig {
                    max_file_age: Duration::from_secs_f64(config.prediction_log_rotate.max(0.1)),
                    max_tensor_columns: config.prediction_log_max_elements.max(1),
                    retention,
                    ..ParquetConfig::new(dir)
                })?;
                sink.register(registry)?;
                // After the sink: the files it recovered from a crash are uploaded too.
                if let Some(url) = &config.prediction_log_upload_url {
                    let (queue, uploader) = parquet_log::start_upload(url, dir, registry)?;
                    sink.set_uploads(queue.clone());
                    background.uploads = Some(queue);
                    background.uploader = Some(tokio::spawn(uploader.run()));
                }
                Some(sink)
            }
            None => None,
        };
        let token = ClientToken {
            token: config.monitor_token.clone(),
            file: config.monitor_token_file.clone(),
        };
        let sidecar = match config.monitor_endpoint.clone() {
            Some(endpoint) => {
                let (handle, task) = SidecarHandle::start(endpoint, token, log.dropped().clone());
                background.sidecar = Some(task);
                Some(handle)
            }
            None => None,
        };
        let (control, control_rx) = crossbeam_channel::unbounded();
        let sinks = Sinks {
            monitor: embedded.clone(),
            parquet,
            sidecar,
            dropped: log.dropped().clone(),
        };
        background.drain = Some(
            drain::spawn(items, control_rx, log.clone(), sinks).map_err(MonitoringError::Thread)?,
        );
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

    /// [`Self::shutdown_by`] with a deadline [`DEFAULT_SHUTDOWN_TIMEOUT`] from now.
    pub async fn shutdown(&self) {
        self.shutdown_by(Instant::now() + DEFAULT_SHUTDOWN_TIMEOUT)
            .await;
    }

    /// Flushes what is queued, finishes the Parquet files (complete, readable files: never
    /// removed), lets the sidecar stream send what it holds, stops the evaluator and the webhook;
    /// returns by `deadline` at the latest. Rows still queued when delivery must stop (the drain
    /// keeps a reserve of up to 1 s before `deadline` to finish the files) are counted as dropped
    /// (`reason="shutdown"`), as are rows pushed afterwards (late requests): call it once the
    /// listeners have drained, so that it sees every served row. Idempotent: a second call returns
    /// at once.
    pub async fn shutdown_by(&self, deadline: Instant) {
        let mut background =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()));
        let now = Instant::now();
        // Keep a reserve to finish the files (encode the buffered rows, write the footers).
        let reserve = (deadline.saturating_duration_since(now) / 4).min(Duration::from_secs(1));
        let _ = self.control.send(Control::Shutdown {
            deadline: deadline.checked_sub(reserve).unwrap_or(now),
        });
        let until = tokio::time::Instant::from_std(deadline);
        if let Some(drain) = background.drain.take() {
            let joined = tokio::task::spawn_blocking(move || drain.join());
            if tokio::time::timeout_at(until, joined).await.is_err() {
                tracing::warn!(
                    "prediction log: the drain thread did not finish by the shutdown deadline; unfinished files are recovered on the next start"
                );
            }
        }
        if let Some(evaluator) = background.evaluator.take() {
            evaluator.abort();
        }
        // The files just finished are uploaded until the deadline; the rest after the next start.
        if let Some(queue) = background.uploads.take() {
            queue.close(deadline);
        }
        if let Some(mut uploader) = background.uploader.take()
            && tokio::time::timeout_at(until, &mut uploader).await.is_err()
        {
            uploader.abort();
        }
        // The drain thread dropped the sidecar handle: the stream sends what is queued and ends.
        if let Some(mut sidecar) = background.sidecar.take()
            && tokio::time::timeout_at(until, &mut sidecar).await.is_err()
        {
            // Stopping it counts what it still held as dropped (reason "shutdown").
            sidecar.abort();
            let _ = sidecar.await;
        }
        if let Some(webhook) = background.webhook.take()
            && tokio::time::timeout_at(until, webhook.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("monitor webhook: not stopped by the shutdown deadline");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{Signature, TensorSpec};
    use crate::tensor::{DataType, Tensor, TensorData};

    fn signature() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 4],
            }],
            outputs: Vec::new(),
            max_batch_size: 64,
        }
    }

    fn counted(registry: &Registry, name: &str, reason: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "reason" && l.value() == reason)
                    || reason.is_empty()
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_finishes_the_file_by_its_deadline_and_counts_later_rows() {
        let dir = std::env::temp_dir().join(format!("keel-shutdown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = ServeConfig::local("unused");
        config.prediction_log_dir = Some(dir.clone());
        config.monitor = MonitorMode::Off;
        let registry = Registry::new();
        let monitoring = Monitoring::start(&config, &registry).unwrap().unwrap();
        let version = monitoring.log().for_version("m", &signature(), 1.0);
        let inputs = [Tensor {
            name: "x".into(),
            shape: vec![10, 4],
            data: TensorData::Fp32(vec![1.5; 40]),
        }];
        for i in 0..100 {
            let captured = version
                .capture(Some(&format!("r{i}")), inputs.to_vec(), 10)
                .unwrap();
            version.push(captured, 1, &[]);
        }
        let started = Instant::now();
        monitoring
            .shutdown_by(started + Duration::from_secs(3))
            .await;
        assert!(started.elapsed() < Duration::from_secs(3));
        let folder = keel_monitor::parquet_log::model_dir(&dir, "m");
        let names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(
            names[0].starts_with("predictions-"),
            "a finished file: {names:?}"
        );
        let bytes = std::fs::read(folder.join(&names[0])).unwrap();
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
        assert_eq!(
            counted(&registry, "keel_prediction_log_dropped_total", ""),
            0
        );
        // A late request, after the log shut down: counted, not copied nor queued.
        assert!(version.capture(Some("late"), inputs.to_vec(), 10).is_none());
        assert_eq!(
            counted(&registry, "keel_prediction_log_dropped_total", "shutdown"),
            10
        );
        // A second shutdown returns at once.
        let again = Instant::now();
        monitoring.shutdown().await;
        assert!(again.elapsed() < Duration::from_millis(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

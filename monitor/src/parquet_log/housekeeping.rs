//! The sink's housekeeping around its files: retention sweeps (see `retention`), the folder's
//! metrics, the upload queue's hand-off and seal requests (see `seal`).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use super::{
    LogKind, ParquetError, ParquetSink, UploadQueue, keep_first, model_dir, retention, seal,
};

/// How often retention looks at the folder: soon after a file is finished, and at least this often
/// (files age without anything being written).
const SWEEP_AFTER_FINISH: Duration = Duration::from_secs(1);
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The folder's Prometheus metrics (the rows' own are counted by the caller).
#[derive(Clone)]
pub(super) struct FileMetrics {
    deleted: IntCounterVec,
    disk_bytes: IntGauge,
}

impl ParquetSink {
    /// Exports `keel_prediction_log_files_deleted_total{reason="age"|"size"}` and
    /// `keel_prediction_log_disk_bytes` on `registry`.
    pub fn register(&mut self, registry: &Registry) -> Result<(), prometheus::Error> {
        let deleted = IntCounterVec::new(
            Opts::new(
                "keel_prediction_log_files_deleted_total",
                "Finished prediction-log files deleted by retention: age (--prediction-log-max-age) or size (--prediction-log-max-bytes).",
            ),
            &["reason"],
        )?;
        for reason in ["age", "size"] {
            deleted.with_label_values(&[reason]);
        }
        let disk_bytes = IntGauge::new(
            "keel_prediction_log_disk_bytes",
            "Bytes of the prediction-log folder (finished and unfinished files), measured at most a minute ago.",
        )?;
        registry.register(Box::new(deleted.clone()))?;
        registry.register(Box::new(disk_bytes.clone()))?;
        self.metrics = Some(FileMetrics {
            deleted,
            disk_bytes,
        });
        Ok(())
    }

    /// Hands every file finished from now on to `queue` for its upload.
    pub fn set_uploads(&mut self, queue: UploadQueue) {
        self.uploads = Some(queue);
    }

    /// Finishes the open files of every model whose folder holds a seal request (see [`seal`]).
    pub(super) fn serve_seals(&mut self) -> Result<(), ParquetError> {
        let mut models: Vec<String> = self
            .known
            .keys()
            .chain(self.predictions.keys())
            .chain(self.feedback.keys())
            .cloned()
            .collect();
        models.sort();
        models.dedup();
        let mut first_error = None;
        for model in models {
            let folder = model_dir(&self.dir, &model);
            if seal::requested(&folder) {
                keep_first(&mut first_error, self.finish(LogKind::Predictions, &model));
                keep_first(&mut first_error, self.finish(LogKind::Feedback, &model));
                seal::served(&folder);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Applies retention and measures the folder, soon after a file was finished and at least
    /// every minute.
    pub(super) fn sweep_if_due(&mut self, now: Instant) {
        let due = match self.last_sweep {
            None => true,
            Some(at) => {
                let since = now.saturating_duration_since(at);
                since >= SWEEP_EVERY
                    || (self.finished_since_sweep && since >= SWEEP_AFTER_FINISH)
                    || self.next_expiry_ms.is_some_and(|at| unix_ms() >= at)
            }
        };
        if due {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        self.finished_since_sweep = false;
        let now_ms = unix_ms();
        let uploads = self.uploads.clone();
        let pending = |path: &Path| uploads.as_ref().is_some_and(|q| q.is_pending(path));
        let swept = retention::sweep(&self.dir, &self.retention, now_ms, &pending);
        self.stats.files_deleted_age += swept.deleted_age;
        self.stats.files_deleted_size += swept.deleted_size;
        self.stats.disk_bytes = swept.bytes;
        self.next_expiry_ms = swept.next_expiry_ms;
        if swept.deleted_before_upload > 0 {
            tracing::warn!(
                files = swept.deleted_before_upload,
                "prediction log: --prediction-log-max-bytes deleted files that were not uploaded yet"
            );
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .deleted
                .with_label_values(&["age"])
                .inc_by(swept.deleted_age);
            metrics
                .deleted
                .with_label_values(&["size"])
                .inc_by(swept.deleted_size);
            metrics
                .disk_bytes
                .set(i64::try_from(swept.bytes).unwrap_or(i64::MAX));
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

//! The prediction log's hot-path side: a bounded lock-free queue that request handlers push sampled
//! rows into. Pushing never blocks; a full queue drops the rows and counts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use keel_monitor::FeedbackRecord;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::rows::{Captured, LogNames, LoggedRequest};
use crate::signature::Signature;
use crate::tensor::Tensor;

/// What the drain thread receives.
pub enum LogItem {
    Request(Box<LoggedRequest>),
    Feedback(Vec<FeedbackRecord>),
}

#[derive(Clone)]
pub struct PredictionLog {
    tx: Sender<LogItem>,
    /// Rows queued and not yet drained: the bound is on rows, since one request may carry many.
    queued_rows: Arc<AtomicUsize>,
    capacity_rows: usize,
    records: IntCounterVec,
    dropped: IntCounterVec,
}

impl PredictionLog {
    pub fn new(
        capacity_rows: usize,
        registry: &Registry,
    ) -> prometheus::Result<(Self, Receiver<LogItem>, Arc<AtomicUsize>)> {
        let records = IntCounterVec::new(
            Opts::new(
                "keel_prediction_log_records_total",
                "Rows queued for the prediction log (after sampling).",
            ),
            &["model"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "keel_prediction_log_dropped_total",
                "Rows the prediction log could not deliver: queue_full (on the request path), \
                 sidecar_unavailable, file_error.",
            ),
            &["model", "reason"],
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        // Items are at least one row each, so this never limits below the row bound.
        let (tx, rx) = crossbeam_channel::bounded(capacity_rows.clamp(1, 1 << 16));
        let queued_rows = Arc::new(AtomicUsize::new(0));
        Ok((
            PredictionLog {
                tx,
                queued_rows: queued_rows.clone(),
                capacity_rows: capacity_rows.max(1),
                records,
                dropped,
            },
            rx,
            queued_rows,
        ))
    }

    /// Rows dropped, by model and reason; the sinks count into it too.
    pub fn dropped(&self) -> &IntCounterVec {
        &self.dropped
    }

    /// The handle one model version uses.
    pub fn for_version(&self, model: &str, signature: &Signature, sample_rate: f64) -> VersionLog {
        VersionLog {
            names: LogNames::new(model, signature),
            log: self.clone(),
            sample_rate: sample_rate.clamp(0.0, 1.0),
            records: self.records.with_label_values(&[model]),
            dropped: self.dropped.with_label_values(&[model, "queue_full"]),
        }
    }

    /// Feedback shares the queue (and its bound) so the file sink sees it in order with predictions.
    pub fn push_feedback(&self, items: Vec<FeedbackRecord>) -> bool {
        let model = items.first().map(|f| f.model.clone()).unwrap_or_default();
        let n = items.len();
        let dropped = self.dropped.with_label_values(&[&model, "queue_full"]);
        self.push(LogItem::Feedback(items), n, &dropped)
    }

    fn push(&self, item: LogItem, rows: usize, dropped: &IntCounter) -> bool {
        let queued = self.queued_rows.fetch_add(rows, Ordering::AcqRel);
        if queued + rows > self.capacity_rows {
            self.queued_rows.fetch_sub(rows, Ordering::AcqRel);
            dropped.inc_by(rows as u64);
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued_rows.fetch_sub(rows, Ordering::AcqRel);
                dropped.inc_by(rows as u64);
                false
            }
        }
    }
}

/// One model version's logging: its sampling rate and counters.
pub struct VersionLog {
    names: Arc<LogNames>,
    log: PredictionLog,
    sample_rate: f64,
    records: IntCounter,
    dropped: IntCounter,
}

impl VersionLog {
    /// Captures the sampled rows of a request about to run; `None` when no row is sampled.
    pub fn capture(
        &self,
        request_id: Option<&str>,
        inputs: &[Tensor],
        rows: usize,
    ) -> Option<Captured> {
        if self.sample_rate <= 0.0 {
            return None;
        }
        let rate = self.sample_rate;
        let sampled = (0..rows).filter(|_| rate >= 1.0 || fastrand::f64() < rate);
        // The front ends always pass one; a random one covers direct callers.
        let id = match request_id {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => crate::request_id::random(),
        };
        let captured = Captured::new(id, now_ms(), inputs, rows, sampled);
        (!captured.is_empty()).then_some(captured)
    }

    /// Queues a captured request with the outputs that answered it.
    pub fn push(&self, captured: Captured, version: u64, outputs: &[Tensor]) {
        let request = captured.finish(&self.names, version, outputs);
        let n = request.rows();
        if self
            .log
            .push(LogItem::Request(Box::new(request)), n, &self.dropped)
        {
            self.records.inc_by(n as u64);
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn signature() -> Signature {
        Signature {
            inputs: vec![crate::signature::TensorSpec {
                name: "x".into(),
                datatype: crate::tensor::DataType::Fp32,
                shape: vec![-1, 1],
            }],
            outputs: Vec::new(),
            max_batch_size: 8,
        }
    }

    fn request(rows: usize) -> Vec<Tensor> {
        vec![Tensor {
            name: "x".into(),
            shape: vec![rows, 1],
            data: TensorData::Fp32(vec![1.0; rows]),
        }]
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let registry = Registry::new();
        let (log, rx, queued) = PredictionLog::new(10, &registry).unwrap();
        let version = log.for_version("m", &signature(), 1.0);
        for _ in 0..2 {
            let captured = version.capture(None, &request(8), 8).unwrap();
            version.push(captured, 1, &[]);
        }
        assert_eq!(version.records.get(), 8);
        assert_eq!(version.dropped.get(), 8, "the second request did not fit");
        assert_eq!(queued.load(Ordering::Acquire), 8);
        let Ok(LogItem::Request(logged)) = rx.try_recv() else {
            panic!("one item queued")
        };
        let records: Vec<_> = logged.records().collect();
        assert_eq!(records.len(), 8);
        assert!(records[0].request_id.len() == 32, "a random id is assigned");
        assert_ne!(records[0].request_id, {
            let c = version.capture(None, &request(1), 1).unwrap();
            c.finish(&version.names, 1, &[])
                .records()
                .next()
                .unwrap()
                .request_id
        });
    }

    #[test]
    fn sampling_keeps_about_the_rate() {
        let registry = Registry::new();
        let (log, _rx, _) = PredictionLog::new(100_000, &registry).unwrap();
        assert!(
            log.for_version("m", &signature(), 0.0)
                .capture(Some("r"), &request(100), 100)
                .is_none()
        );
        let kept = log
            .for_version("m", &signature(), 0.25)
            .capture(Some("r"), &request(10_000), 10_000)
            .map_or(0, |c| c.len());
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }
}

//! The prediction log's hot-path side: a bounded lock-free queue that request handlers push sampled
//! rows into. Pushing never blocks. The bound counts rows (`--prediction-log-capacity`) and bytes
//! of copied tensor data (`--prediction-log-capacity-bytes`), both held from the moment a request's
//! sampled rows are copied (before the model runs) until the drain thread has expanded them; a
//! request that does not fit is not copied at all, its rows dropped and counted:
//! `keel_prediction_log_dropped_total{reason="queue_full"}` (rows) or `{reason="queue_bytes"}`.
//! Rows pushed once the log is shut down, or still queued at the shutdown deadline, are counted
//! under `reason="shutdown"`: an item not delivered counts itself when dropped, so no path loses
//! rows uncounted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use keel_monitor::FeedbackRecord;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::rows::{Captured, LogId, LogNames, LoggedRequest};
use crate::signature::Signature;
use crate::tensor::Tensor;

/// Drop reasons of `keel_prediction_log_dropped_total`.
pub mod reason {
    /// The queue holds `--prediction-log-capacity` rows.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The queue holds `--prediction-log-capacity-bytes` of tensor data.
    pub const QUEUE_BYTES: &str = "queue_bytes";
    /// Pushed after shutdown, or still queued when the shutdown deadline came.
    pub const SHUTDOWN: &str = "shutdown";
    /// The sidecar was away or too slow (its queue full).
    pub const SIDECAR_UNAVAILABLE: &str = "sidecar_unavailable";
    /// One row larger than the sidecar's message limit even alone.
    pub const TOO_LARGE: &str = "too_large";
    /// Writing the Parquet file failed; the row is in no file.
    pub const FILE_ERROR: &str = "file_error";
}

/// What bounds the log.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    /// Rows queued (and being copied) at most.
    pub rows: usize,
    /// Bytes of copied tensor data queued (and being copied) at most.
    pub bytes: usize,
    /// Elements of one tensor a logged row keeps.
    pub max_elements: usize,
}

/// Rows and bytes the queue holds, against its limits.
#[derive(Debug)]
pub struct Budget {
    rows: AtomicUsize,
    bytes: AtomicUsize,
    max_rows: usize,
    max_bytes: usize,
}

impl Budget {
    fn new(limits: &LogLimits) -> Self {
        Budget {
            rows: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_rows: limits.rows.max(1),
            max_bytes: limits.bytes.max(1),
        }
    }

    /// Takes `rows` and `bytes`, or nothing and the reason they do not fit.
    fn take(self: &Arc<Self>, rows: usize, bytes: usize) -> Result<Held, &'static str> {
        let queued = self.rows.fetch_add(rows, Ordering::AcqRel);
        if queued.saturating_add(rows) > self.max_rows {
            self.rows.fetch_sub(rows, Ordering::AcqRel);
            return Err(reason::QUEUE_FULL);
        }
        let held = Held {
            budget: self.clone(),
            rows,
            bytes: 0,
        };
        let mut held = held;
        held.grow(bytes)?;
        Ok(held)
    }

    /// Rows and bytes held now.
    pub fn held(&self) -> (usize, usize) {
        (
            self.rows.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// A share of the log's bound, given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    rows: usize,
    bytes: usize,
}

impl Held {
    /// Takes `bytes` more, or nothing (the share stays as it was).
    fn grow(&mut self, bytes: usize) -> Result<(), &'static str> {
        let queued = self.budget.bytes.fetch_add(bytes, Ordering::AcqRel);
        if queued.saturating_add(bytes) > self.budget.max_bytes {
            self.budget.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(reason::QUEUE_BYTES);
        }
        self.bytes += bytes;
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
impl Held {
    /// A share of an unbounded budget, for tests of what holds one.
    pub(super) fn unbounded() -> Held {
        let budget = Arc::new(Budget::new(&LogLimits {
            rows: usize::MAX,
            bytes: usize::MAX,
            max_elements: usize::MAX,
        }));
        Held {
            budget,
            rows: 0,
            bytes: 0,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.rows.fetch_sub(self.rows, Ordering::AcqRel);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What the drain thread receives.
pub enum ItemKind {
    Request(Box<LoggedRequest>),
    Feedback(Vec<FeedbackRecord>),
}

/// A queued item. Until the drain thread takes its content ([`LogItem::take`]) it counts its rows
/// as dropped (`reason="shutdown"`) if it is dropped: whatever path loses it, the rows are counted.
pub struct LogItem {
    kind: Option<ItemKind>,
    rows: u64,
    /// Where its rows count when it is dropped undelivered.
    lost: IntCounter,
    /// The feedback's share of the bound (a request's is in its capture).
    _held: Option<Held>,
}

impl LogItem {
    pub fn rows(&self) -> usize {
        self.rows as usize
    }

    /// Bytes of the log's bound it holds.
    pub fn bytes(&self) -> usize {
        match (&self.kind, &self._held) {
            (Some(ItemKind::Request(r)), _) => r.bytes(),
            (_, Some(held)) => held.bytes(),
            _ => 0,
        }
    }

    /// Its content, now delivered: dropping it no longer counts anything.
    pub fn take(mut self) -> ItemKind {
        self.rows = 0;
        self.kind.take().unwrap_or(ItemKind::Feedback(Vec::new()))
    }

    /// Counts its rows under another reason than `shutdown`, and nothing more when dropped.
    fn count_as(mut self, counter: &IntCounter) {
        counter.inc_by(self.rows);
        self.rows = 0;
    }
}

impl Drop for LogItem {
    fn drop(&mut self) {
        if self.rows > 0 {
            self.lost.inc_by(self.rows);
        }
    }
}

#[derive(Clone)]
pub struct PredictionLog {
    tx: Sender<LogItem>,
    /// Kept to empty the queue (counting its rows) if an item arrives after the shutdown.
    rx: Receiver<LogItem>,
    closed: Arc<AtomicBool>,
    budget: Arc<Budget>,
    max_elements: usize,
    records: IntCounterVec,
    dropped: IntCounterVec,
    truncated: IntCounterVec,
}

impl PredictionLog {
    pub fn new(
        limits: LogLimits,
        registry: &Registry,
    ) -> prometheus::Result<(Self, Receiver<LogItem>, Arc<Budget>)> {
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
                "Sampled rows the prediction log did not deliver, by reason: queue_full and \
                 queue_bytes (the queue's row or byte bound, on the request path), shutdown \
                 (pushed after it, or queued at its deadline), sidecar_unavailable, too_large \
                 (one row over the sidecar's message limit), file_error.",
            ),
            &["model", "reason"],
        )?;
        let truncated = IntCounterVec::new(
            Opts::new(
                "keel_prediction_log_truncated_total",
                "Rows logged with at least one tensor cut to --prediction-log-max-elements \
                 elements (the row is logged, its further elements are not).",
            ),
            &["model"],
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(truncated.clone()))?;
        // Items are at least one row each, so this never limits below the row bound.
        let (tx, rx) = crossbeam_channel::bounded(limits.rows.clamp(1, 1 << 16));
        let budget = Arc::new(Budget::new(&limits));
        Ok((
            PredictionLog {
                tx,
                rx: rx.clone(),
                closed: Arc::new(AtomicBool::new(false)),
                budget: budget.clone(),
                max_elements: limits.max_elements.max(1),
                records,
                dropped,
                truncated,
            },
            rx,
            budget,
        ))
    }

    /// The log's bound in rows (`--prediction-log-capacity`).
    pub(crate) fn capacity_rows(&self) -> usize {
        self.budget.max_rows
    }

    /// Rows dropped, by model and reason; the sinks count into it too.
    pub fn dropped(&self) -> &IntCounterVec {
        &self.dropped
    }

    /// The handle one model version uses.
    pub fn for_version(&self, model: &str, signature: &Signature, sample_rate: f64) -> VersionLog {
        let dropped = |reason: &str| self.dropped.with_label_values(&[model, reason]);
        VersionLog {
            names: LogNames::new(model, signature),
            log: self.clone(),
            sample_rate: sample_rate.clamp(0.0, 1.0),
            records: self.records.with_label_values(&[model]),
            truncated: self.truncated.with_label_values(&[model]),
            queue_full: dropped(reason::QUEUE_FULL),
            queue_bytes: dropped(reason::QUEUE_BYTES),
            shutdown: dropped(reason::SHUTDOWN),
        }
    }

    /// Feedback shares the queue (and its bound) so the file sink sees it in order with predictions.
    pub fn push_feedback(&self, items: Vec<FeedbackRecord>) -> bool {
        let model = items.first().map(|f| f.model.clone()).unwrap_or_default();
        let rows = items.len();
        let dropped = |reason: &str| self.dropped.with_label_values(&[model.as_str(), reason]);
        let bytes = items
            .iter()
            .map(|f| {
                std::mem::size_of::<FeedbackRecord>()
                    + f.request_id.len()
                    + match &f.truth {
                        keel_monitor::FeatureValue::Category(s) => s.len(),
                        keel_monitor::FeatureValue::Number(_) => 0,
                    }
            })
            .sum();
        let held = match self.budget.take(rows, bytes) {
            Ok(held) => held,
            Err(why) => {
                dropped(why).inc_by(rows as u64);
                return false;
            }
        };
        let item = LogItem {
            kind: Some(ItemKind::Feedback(items)),
            rows: rows as u64,
            lost: dropped(reason::SHUTDOWN),
            _held: Some(held),
        };
        self.send(item, &dropped(reason::QUEUE_FULL))
    }

    /// Queues `item`; when it cannot be, counts its rows (`full` for a full channel).
    fn send(&self, item: LogItem, full: &IntCounter) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            // Dropping it counts it as `shutdown`.
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                if self.closed.load(Ordering::SeqCst) {
                    // The drain may have finished before this item arrived: nobody else will
                    // take it out, so empty the queue here; dropped items count themselves.
                    while self.rx.try_recv().is_ok() {}
                    return false;
                }
                true
            }
            Err(TrySendError::Full(item)) => {
                item.count_as(full);
                false
            }
            // Not while this handle holds a receiver; dropping counts it as `shutdown`.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// After the drain's last look at the queue: from now on pushes are counted, not queued.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        while self.rx.try_recv().is_ok() {}
    }
}

/// One model version's logging: its sampling rate and counters.
pub struct VersionLog {
    names: Arc<LogNames>,
    log: PredictionLog,
    sample_rate: f64,
    records: IntCounter,
    truncated: IntCounter,
    queue_full: IntCounter,
    queue_bytes: IntCounter,
    shutdown: IntCounter,
}

impl VersionLog {
    fn dropped(&self, reason: &str) -> &IntCounter {
        match reason {
            reason::QUEUE_BYTES => &self.queue_bytes,
            reason::SHUTDOWN => &self.shutdown,
            _ => &self.queue_full,
        }
    }

    /// Captures the sampled rows of a request about to run; `None` when no row is sampled, or
    /// when they do not fit in the log's bound (then they are counted as dropped and nothing is
    /// copied). Only the sampled rows are copied, each tensor's rows cut to
    /// `--prediction-log-max-elements` elements.
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
        let sampled = if rate >= 1.0 {
            super::rows::all_rows(rows)
        } else {
            (0..rows)
                .filter(|_| fastrand::f64() < rate)
                .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
                .collect::<Vec<u32>>()
                .into()
        };
        if sampled.is_empty() {
            return None;
        }
        if self.log.closed.load(Ordering::Relaxed) {
            // After shutdown nothing is queued: no copy either.
            self.shutdown.inc_by(sampled.len() as u64);
            return None;
        }
        let max_elements = self.log.max_elements;
        let id_len = request_id.map_or(32, str::len);
        let bytes = Captured::input_bytes("", inputs, rows, &sampled, max_elements) + id_len;
        let held = match self.log.budget.take(sampled.len(), bytes) {
            Ok(held) => held,
            Err(why) => {
                self.dropped(why).inc_by(sampled.len() as u64);
                return None;
            }
        };
        // The front ends always pass one; a random one covers direct callers.
        let id = match request_id {
            Some(id) if !id.is_empty() => LogId::new(id),
            _ => LogId::Heap(crate::request_id::random()),
        };
        Some(Captured::new(
            id,
            now_ms(),
            inputs,
            self.names.outputs(),
            rows,
            sampled,
            max_elements,
            held,
        ))
    }

    /// Queues a captured request with the sampled rows of the outputs that answered it, if they
    /// fit in the log's byte bound (else its rows are counted as dropped).
    pub fn push(&self, mut captured: Captured, version: u64, outputs: &[Tensor]) {
        let n = captured.len() as u64;
        let output_bytes = captured.output_bytes(outputs);
        if let Err(why) = captured.held.grow(output_bytes) {
            self.dropped(why).inc_by(n);
            return;
        }
        let request = captured.finish(&self.names, version, outputs);
        let truncated = request.truncated();
        let item = LogItem {
            kind: Some(ItemKind::Request(Box::new(request))),
            rows: n,
            lost: self.shutdown.clone(),
            _held: None,
        };
        if self.log.send(item, &self.queue_full) {
            self.records.inc_by(n);
            if truncated {
                self.truncated.inc_by(n);
            }
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

    fn signature(width: i64) -> Signature {
        Signature {
            inputs: vec![crate::signature::TensorSpec {
                name: "x".into(),
                datatype: crate::tensor::DataType::Fp32,
                shape: vec![-1, width],
            }],
            outputs: vec![crate::signature::TensorSpec {
                name: "y".into(),
                datatype: crate::tensor::DataType::Fp32,
                shape: vec![-1, 1],
            }],
            max_batch_size: 8,
        }
    }

    fn tensor(name: &str, rows: usize, width: usize) -> Tensor {
        Tensor {
            name: name.into(),
            shape: vec![rows, width],
            data: TensorData::Fp32((0..rows * width).map(|i| i as f32).collect()),
        }
    }

    fn request(rows: usize) -> Vec<Tensor> {
        vec![tensor("x", rows, 1)]
    }

    fn limits(rows: usize, bytes: usize, max_elements: usize) -> LogLimits {
        LogLimits {
            rows,
            bytes,
            max_elements,
        }
    }

    fn count(log: &PredictionLog, reason: &str) -> u64 {
        log.dropped().with_label_values(&["m", reason]).get()
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let registry = Registry::new();
        let (log, rx, budget) = PredictionLog::new(limits(10, 1 << 20, 1024), &registry).unwrap();
        let version = log.for_version("m", &signature(1), 1.0);
        let captured = version.capture(None, &request(8), 8).unwrap();
        version.push(captured, 1, &[]);
        // The second capture already does not fit: nothing of it is copied.
        assert!(version.capture(None, &request(8), 8).is_none());
        assert_eq!(version.records.get(), 8);
        assert_eq!(count(&log, "queue_full"), 8);
        assert_eq!(budget.held().0, 8);
        let item = rx.try_recv().unwrap();
        let ItemKind::Request(logged) = item.take() else {
            panic!("a request")
        };
        let records = logged.records();
        assert_eq!(records.len(), 8);
        assert!(records[0].request_id.len() == 32, "a random id is assigned");
        drop(logged);
        assert_eq!(
            budget.held(),
            (0, 0),
            "the drained request gave its share back"
        );
    }

    #[test]
    fn sampling_keeps_about_the_rate() {
        let registry = Registry::new();
        let (log, _rx, _) = PredictionLog::new(limits(100_000, 1 << 30, 1024), &registry).unwrap();
        assert!(
            log.for_version("m", &signature(1), 0.0)
                .capture(Some("r"), &request(100), 100)
                .is_none()
        );
        let kept = log
            .for_version("m", &signature(1), 0.25)
            .capture(Some("r"), &request(10_000), 10_000)
            .map_or(0, |c| c.len());
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }

    #[test]
    fn the_byte_bound_drops_and_counts_and_is_given_back() {
        let registry = Registry::new();
        // Room for one request of 8 rows x 100 floats (3,200 bytes) and its outputs, not two.
        let (log, rx, budget) = PredictionLog::new(limits(1000, 5000, 1024), &registry).unwrap();
        let version = log.for_version("m", &signature(100), 1.0);
        let inputs = [tensor("x", 8, 100)];
        let outputs = [tensor("y", 8, 1)];
        let first = version.capture(Some("a"), &inputs, 8).unwrap();
        assert!(budget.held().1 >= 3200);
        assert!(version.capture(Some("b"), &inputs, 8).is_none());
        assert_eq!(count(&log, "queue_bytes"), 8);
        version.push(first, 1, &outputs);
        assert_eq!(version.records.get(), 8);
        let held = budget.held();
        assert!(held.1 >= 3200 + 32 && held.1 <= 5000, "{held:?}");
        // Outputs too large for what is left: the whole request is dropped, its share returned.
        let small = version
            .capture(Some("c"), &[tensor("x", 1, 100)], 1)
            .unwrap();
        version.push(small, 1, &[tensor("y", 1, 1000)]);
        assert_eq!(count(&log, "queue_bytes"), 9);
        assert_eq!(budget.held(), held);
        drop(rx.try_recv().unwrap().take());
        assert_eq!(budget.held(), (0, 0));
        assert!(version.capture(Some("d"), &inputs, 8).is_some());
    }

    #[test]
    fn only_sampled_rows_are_copied_and_wide_rows_are_cut_and_counted() {
        let registry = Registry::new();
        let (log, rx, budget) = PredictionLog::new(limits(1000, 1 << 30, 10), &registry).unwrap();
        let version = log.for_version("m", &signature(1000), 0.5);
        // 200 rows of 1,000 floats: sampled rows only, each cut to 10 elements.
        let inputs = [tensor("x", 200, 1000)];
        let captured = version.capture(Some("r"), &inputs, 200).unwrap();
        let sampled = captured.len();
        assert!((50..150).contains(&sampled), "{sampled}");
        let (_, bytes) = budget.held();
        assert_eq!(bytes, 1 + sampled * 4 + sampled * 10 * 4, "{bytes}");
        version.push(captured, 1, &[tensor("y", 200, 1)]);
        assert_eq!(version.truncated.get(), sampled as u64);
        let ItemKind::Request(logged) = rx.try_recv().unwrap().take() else {
            panic!("a request")
        };
        for record in logged.records() {
            let row = record.row as usize;
            let x = &record.inputs[0].1;
            assert_eq!(x.len(), 10);
            assert_eq!(
                x[3],
                keel_monitor::FeatureValue::Number((row * 1000 + 3) as f64)
            );
            assert_eq!(
                record.outputs[0].1,
                [keel_monitor::FeatureValue::Number(row as f64)]
            );
        }
        // Nothing sampled: nothing copied, nothing held.
        drop(logged);
        let none = log.for_version("m", &signature(1000), 1e-9);
        assert!(none.capture(Some("r"), &inputs, 200).is_none());
        assert_eq!(budget.held(), (0, 0));
    }

    #[test]
    fn rows_after_shutdown_or_left_in_the_queue_are_counted() {
        let registry = Registry::new();
        let (log, rx, _) = PredictionLog::new(limits(1000, 1 << 20, 1024), &registry).unwrap();
        let version = log.for_version("m", &signature(1), 1.0);
        let captured = version.capture(Some("a"), &request(3), 3).unwrap();
        version.push(captured, 1, &[]);
        // Queued, never delivered: dropping the queue counts it.
        drop(rx);
        log.close();
        assert_eq!(count(&log, "shutdown"), 3);
        assert!(version.capture(Some("b"), &request(2), 2).is_none());
        assert_eq!(count(&log, "shutdown"), 5);
        assert!(!log.push_feedback(vec![FeedbackRecord {
            model: "m".into(),
            request_id: "a".into(),
            row: 0,
            truth: keel_monitor::FeatureValue::Number(1.0),
            timestamp_ms: 0,
        }]));
        assert_eq!(count(&log, "shutdown"), 6);
        assert_eq!(version.records.get(), 3);
    }
}

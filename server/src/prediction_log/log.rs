//! The prediction log's hot-path side: a bounded lock-free queue that request handlers push sampled
//! rows into. Pushing never blocks. The bound counts rows (`--prediction-log-capacity`) and bytes
//! of copied tensor data (`--prediction-log-capacity-bytes`), both held from the moment a request's
//! sampled rows are copied (before the model runs) until the drain thread has expanded them; a
//! request that does not fit is not copied at all, its rows dropped and counted:
//! `keel_prediction_log_dropped_total{reason="queue_full"}` (rows) or `{reason="queue_bytes"}`.
//! Rows pushed once the log is shut down, or still queued at the shutdown deadline, are counted
//! under `reason="shutdown"`: an item not delivered counts itself when dropped, so no path loses
//! rows uncounted.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Receiver;
use keel_monitor::FeedbackRecord;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::chunk::Chunk;
use super::queue::{Queue, Sent};
use super::rows::{Captured, LogCounters, LogId, LogNames};
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
    pub(super) fn new(limits: &LogLimits) -> Self {
        Budget {
            rows: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_rows: limits.rows.max(1),
            max_bytes: limits.bytes.max(1),
        }
    }

    /// Takes `rows` and `bytes` of `budget`, or nothing and the reason they do not fit.
    pub(super) fn take<B: Deref<Target = Budget>>(
        budget: B,
        rows: usize,
        bytes: usize,
    ) -> Result<Held<B>, &'static str> {
        let queued = budget.rows.fetch_add(rows, Ordering::AcqRel);
        if queued.saturating_add(rows) > budget.max_rows {
            budget.rows.fetch_sub(rows, Ordering::AcqRel);
            return Err(reason::QUEUE_FULL);
        }
        let mut held = Held {
            budget,
            rows,
            bytes: 0,
        };
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

/// A share of the log's bound, given back when dropped. A request's capture borrows the budget (no
/// shared count per request); a chunk or a feedback item owns a reference.
#[derive(Debug)]
pub struct Held<B: Deref<Target = Budget> = Arc<Budget>> {
    budget: B,
    rows: usize,
    bytes: usize,
}

impl<B: Deref<Target = Budget>> Held<B> {
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

    /// Gives `bytes` of the share back.
    fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.budget.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.bytes -= bytes;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Held {
    /// An empty share of `budget`.
    pub(super) fn none(budget: &Arc<Budget>) -> Held {
        Held {
            budget: budget.clone(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Takes over `other`'s share (of the same bound).
    pub(super) fn absorb<B: Deref<Target = Budget>>(&mut self, mut other: Held<B>) {
        debug_assert!(std::ptr::eq(&*self.budget, &*other.budget));
        self.rows += std::mem::take(&mut other.rows);
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl<B: Deref<Target = Budget>> Drop for Held<B> {
    fn drop(&mut self) {
        if self.rows > 0 {
            self.budget.rows.fetch_sub(self.rows, Ordering::AcqRel);
        }
        if self.bytes > 0 {
            self.budget.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// What the drain thread receives.
pub enum ItemKind {
    Requests(Box<Chunk>),
    Feedback(Vec<FeedbackRecord>),
}

/// A queued item. Until the drain thread takes its content ([`LogItem::take`]) it counts its rows
/// as dropped (`reason="shutdown"`) if it is dropped: whatever path loses it, the rows are counted
/// (a chunk counts its own, per version).
pub struct LogItem {
    kind: Option<ItemKind>,
    /// Feedback: where its rows count when it is dropped undelivered.
    lost: Option<IntCounter>,
    /// The feedback's share of the bound (a chunk holds its requests').
    _held: Option<Held>,
}

impl LogItem {
    pub(super) fn requests(chunk: Box<Chunk>) -> Self {
        LogItem {
            kind: Some(ItemKind::Requests(chunk)),
            lost: None,
            _held: None,
        }
    }

    pub fn rows(&self) -> usize {
        match &self.kind {
            Some(ItemKind::Requests(c)) => c.rows(),
            Some(ItemKind::Feedback(f)) => f.len(),
            None => 0,
        }
    }

    /// Bytes of the log's bound it holds.
    pub fn bytes(&self) -> usize {
        match (&self.kind, &self._held) {
            (Some(ItemKind::Requests(c)), _) => c.bytes(),
            (_, Some(held)) => held.bytes(),
            _ => 0,
        }
    }

    /// Its content, now delivered: dropping it no longer counts anything.
    pub fn take(mut self) -> ItemKind {
        self.lost = None;
        match self.kind.take() {
            Some(ItemKind::Requests(mut chunk)) => {
                chunk.delivered();
                ItemKind::Requests(chunk)
            }
            Some(kind) => kind,
            None => ItemKind::Feedback(Vec::new()),
        }
    }
}

impl Drop for LogItem {
    fn drop(&mut self) {
        if let (Some(lost), Some(ItemKind::Feedback(f))) = (&self.lost, &self.kind) {
            lost.inc_by(f.len() as u64);
        }
    }
}

#[derive(Clone)]
pub struct PredictionLog {
    queue: Arc<Queue>,
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
        let (queue, rx) = Queue::new(limits.rows.clamp(1, 1 << 16));
        let budget = Arc::new(Budget::new(&limits));
        Ok((
            PredictionLog {
                queue,
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
        let counters = LogCounters {
            records: self.records.with_label_values(&[model]),
            truncated: self.truncated.with_label_values(&[model]),
            queue_full: dropped(reason::QUEUE_FULL),
            queue_bytes: dropped(reason::QUEUE_BYTES),
            shutdown: dropped(reason::SHUTDOWN),
        };
        VersionLog {
            names: LogNames::new(model, signature, counters),
            log: self.clone(),
            sample_rate: sample_rate.clamp(0.0, 1.0),
            output_row_bytes: output_row_bytes(signature, self.max_elements),
        }
    }

    /// Feedback shares the queue (and its bound) so the file sink sees it in order with predictions
    /// (the chunks in the making are queued first).
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
        let held = match Budget::take(self.budget.clone(), rows, bytes) {
            Ok(held) => held,
            Err(why) => {
                dropped(why).inc_by(rows as u64);
                return false;
            }
        };
        let item = LogItem {
            kind: Some(ItemKind::Feedback(items)),
            lost: Some(dropped(reason::SHUTDOWN)),
            _held: Some(held),
        };
        self.queue.flush();
        match self.queue.send(item) {
            Sent::Queued => true,
            Sent::Full(item) => {
                dropped(reason::QUEUE_FULL).inc_by(rows as u64);
                drop(item.take());
                false
            }
            Sent::Closed => false,
        }
    }

    /// Queues the requests logged so far that wait in partly filled chunks.
    pub(crate) fn flush(&self) {
        self.queue.flush();
    }

    /// Takes back a chunk the drain has delivered (and gives its share of the bound back).
    pub(crate) fn recycle(&self, chunk: Box<Chunk>) {
        self.queue.recycle(chunk);
    }

    /// After the drain's last look at the queue: from now on pushes are counted, not queued.
    pub(crate) fn close(&self) {
        self.queue.close();
    }
}

/// One model version's logging: its sampling rate, names and counters.
pub struct VersionLog {
    names: Arc<LogNames>,
    log: PredictionLog,
    sample_rate: f64,
    /// Bytes the logged outputs of one row take, when the signature fixes them: taken from the
    /// bound with the inputs', so that the push after the model ran needs no second take.
    output_row_bytes: Option<usize>,
}

/// Bytes one logged row of `signature`'s outputs takes (each cut to `max_elements`), when every
/// output has a fixed element size and shape past the batch dimension.
fn output_row_bytes(signature: &Signature, max_elements: usize) -> Option<usize> {
    let skip = usize::from(signature.max_batch_size > 0);
    signature.outputs.iter().try_fold(0usize, |sum, spec| {
        let size = spec.datatype.size()?;
        let elements = spec
            .shape
            .iter()
            .skip(skip)
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
        sum.checked_add(elements.min(max_elements).checked_mul(size)?)
    })
}

impl VersionLog {
    /// Captures the sampled rows of a request after its run, from its own inputs (backends borrow
    /// them); `None` when no row is sampled, or when they do not fit in the log's bound (then they are
    /// counted as dropped and nothing is kept). Only the sampled rows are copied, each tensor's rows
    /// cut to `--prediction-log-max-elements` elements, and a large tensor logged whole is kept as it
    /// is (a 256 x 30 FP32 request: 30 KiB the request path no longer writes, nor reads again).
    pub fn capture(
        &self,
        request_id: Option<&str>,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> Option<Captured<'_>> {
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
        if self.log.queue.is_closed() {
            // After shutdown nothing is queued: no copy either.
            self.names.shutdown.inc_by(sampled.len() as u64);
            return None;
        }
        let max_elements = self.log.max_elements;
        let id_len = request_id.map_or(32, str::len);
        let outputs = self
            .output_row_bytes
            .map_or(0, |b| b.saturating_mul(sampled.len()));
        let bytes = Captured::input_bytes("", &inputs, rows, &sampled, max_elements)
            .saturating_add(id_len)
            .saturating_add(outputs);
        let held = match Budget::take(&*self.log.budget, sampled.len(), bytes) {
            Ok(held) => held,
            Err(why) => {
                self.names.dropped(why).inc_by(sampled.len() as u64);
                return None;
            }
        };
        // The front ends always pass one; a random one covers direct callers.
        let id = match request_id {
            Some(id) if !id.is_empty() => LogId::new(id),
            _ => LogId::Heap(crate::request_id::random()),
        };
        let mut captured = Captured::new(
            id,
            // A row's time in milliseconds, the coarse clock's (see clock.rs).
            crate::clock::unix_ms(),
            inputs,
            rows,
            sampled,
            max_elements,
            held,
            Some(&self.log.queue.buffers),
        );
        captured.outputs_held = outputs;
        Some(captured)
    }

    /// Adds a captured request with the sampled rows of the outputs that answered it to this
    /// thread's chunk, if they fit in the log's byte bound (else its rows are counted as dropped).
    pub fn push(&self, mut captured: Captured<'_>, version: u64, outputs: &[Tensor]) {
        // Usually exactly what the capture took for them already.
        let output_bytes = captured.output_bytes(outputs);
        let held = std::mem::take(&mut captured.outputs_held);
        if output_bytes < held {
            captured.held.shrink(held - output_bytes);
        } else if let Err(why) = captured.held.grow(output_bytes - held) {
            self.names.dropped(why).inc_by(captured.len() as u64);
            return;
        }
        self.log
            .queue
            .add(|chunk| chunk.add(captured, &self.names, version, outputs, &self.log.budget));
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;

//! The drain thread: takes what the request path queued and hands it, in batches, to each sink (the
//! embedded monitor, the sidecar stream, the Parquet files). It runs on its own OS thread so a slow sink
//! never touches the request path; at worst the queue fills and rows are dropped and counted.
//!
//! Batches are bounded in items and in bytes of queued tensor data, so the records they expand to
//! stay a bounded multiple of [`BATCH_BYTES`]. Every [`TICK`] the Parquet sink writes the rows it
//! has buffered for its flush interval (1 s) as a row group: a `kill -9` loses at most the rows of
//! about the last 1.5 s (queue, buffer and tick), plus what the queue held if the drain had fallen
//! behind. On shutdown it delivers what is queued until its deadline, counts the rest as dropped
//! (`reason="shutdown"`) and finishes every Parquet file.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use keel_monitor::parquet_log::ParquetSink;
use keel_monitor::{ModelSpec, Monitor, PredictionRecord};
use prometheus::IntCounterVec;

use super::scratch::Scratch;
use super::sidecar_client::SidecarHandle;
use crate::prediction_log::{Chunk, ItemKind, LogItem, PredictionLog, reason};

/// Items (requests, feedback posts) handed to the sinks at once.
const BATCH_ITEMS: usize = 4096;
/// Bytes of queued tensor data handed to the sinks at once (a batch's first item always goes).
pub const BATCH_BYTES: usize = 8 << 20;
/// Pause between looks at an empty (or partly filled) queue: rows reach the monitor within this.
const POLL: Duration = Duration::from_millis(20);
/// The shortest pause, when rows arrive fast (see [`pause`]).
const MIN_POLL: Duration = Duration::from_millis(1);
/// Rows the embedded monitor bins per lock taken; the requests of each chunk give their share of
/// the log's bound back as soon as it is done, not at the end of the whole batch.
const CHUNK_ROWS: usize = 16_384;
/// How often files are rotated and buffered rows written as row groups when nothing arrives.
pub const TICK: Duration = Duration::from_millis(250);

pub enum Control {
    Version(Box<ModelSpec>),
    Retire {
        model: String,
        version: u64,
    },
    /// Drain what is queued until `deadline` (the rest is counted as dropped), finish the files,
    /// end the thread.
    Shutdown {
        deadline: Instant,
    },
}

pub struct Sinks {
    pub monitor: Option<Arc<Monitor>>,
    pub parquet: Option<ParquetSink>,
    pub sidecar: Option<SidecarHandle>,
    /// Rows a sink could not take, by model and reason.
    pub dropped: IntCounterVec,
}

/// How long the drain keeps delivering when its control channel is gone without a shutdown.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(5);

pub fn spawn(
    items: Receiver<LogItem>,
    control: Receiver<Control>,
    log: PredictionLog,
    sinks: Sinks,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("keel-prediction-log".into())
        .spawn(move || {
            Drain {
                sinks,
                log,
                behind: false,
                scratch: Scratch::default(),
            }
            .run(&items, &control)
        })
}

struct Drain {
    sinks: Sinks,
    /// Closed once the drain has taken its last item.
    log: PredictionLog,
    /// Delivering takes a large share of its time: the monitor may count with its second thread.
    behind: bool,
    scratch: Scratch,
}

/// Share of the time between two looks that delivering must take for the drain to count large runs
/// with the monitor's second thread, and the share under which it counts alone again. A drain that
/// keeps up alone gains nothing from a second thread, and on two cores that thread takes one from the
/// request being served. Measured with 256-row requests: 0.07-0.12 at c=1, 0.4-1.6 at the peak.
const BEHIND: f64 = 0.3;
const CAUGHT_UP: f64 = 0.15;

/// Whether the drain is behind after a delivery that took `spent`, `since` after the previous look.
fn behind(was: bool, spent: Duration, since: Duration) -> bool {
    let share = spent.as_secs_f64() / since.as_secs_f64().max(f64::MIN_POSITIVE);
    share >= if was { CAUGHT_UP } else { BEHIND }
}

/// How long to wait before the next look at the queue, given that `rows` arrived in `since` (the
/// time since the last look): [`POLL`], or less when [`POLL`]'s worth of rows at that rate would
/// fill more than a quarter of the log's bound of `capacity` rows. At 3.5M rows/s a fixed 20 ms
/// pause lets 70,000 rows arrive, more than the default bound of 65,536: the queue would overflow
/// (and drop) while the drain sleeps, however fast it ingests.
fn pause(rows: usize, since: Duration, capacity: usize) -> Duration {
    if rows == 0 {
        return POLL;
    }
    since
        .mul_f64((capacity / 4).max(1) as f64 / rows as f64)
        .clamp(MIN_POLL, POLL)
}

/// Takes up to [`BATCH_ITEMS`] items and [`BATCH_BYTES`] bytes from the queue; true when it
/// stopped at one of these bounds (more is likely waiting).
fn take_batch(items: &Receiver<LogItem>) -> (Vec<LogItem>, bool) {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < BATCH_ITEMS && bytes < BATCH_BYTES {
        match items.try_recv() {
            Ok(item) => {
                bytes += item.bytes();
                batch.push(item);
            }
            Err(_) => return (batch, false),
        }
    }
    (batch, true)
}

impl Drain {
    fn run(mut self, items: &Receiver<LogItem>, control: &Receiver<Control>) {
        let mut last_rotation = Instant::now();
        let mut last_look = Instant::now();
        let capacity = self.log.capacity_rows();
        loop {
            // Control first: a version's spec must reach the monitor before its first rows.
            loop {
                match control.try_recv() {
                    Ok(c) => {
                        if !self.control(c, items) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        return self.finish(items, Instant::now() + ORPHAN_DEADLINE);
                    }
                }
            }
            let since = last_look.elapsed();
            last_look = Instant::now();
            // The chunks the request path is still filling: rows wait at most one pause.
            self.log.flush();
            let (batch, full) = take_batch(items);
            let rows = batch.iter().map(LogItem::rows).sum();
            if !batch.is_empty() {
                let start = Instant::now();
                self.deliver(batch);
                self.behind = behind(self.behind, start.elapsed(), since);
            }
            if last_rotation.elapsed() >= TICK {
                last_rotation = Instant::now();
                if let Some(parquet) = &mut self.sinks.parquet {
                    if let Err(e) = parquet.rotate_due(Instant::now()) {
                        tracing::warn!(error = %e, "rotating prediction-log files failed");
                    }
                    count_lost(&self.sinks.dropped, parquet);
                }
            }
            // Polling, not blocking: a receiver parked on the queue would be woken (a futex call and
            // a context switch) by every request; this way one wake-up drains thousands of them.
            if !full {
                std::thread::sleep(pause(rows, since, capacity));
            }
        }
    }

    /// Returns false once the thread should end.
    fn control(&mut self, control: Control, items: &Receiver<LogItem>) -> bool {
        match control {
            Control::Version(spec) => {
                if let Some(sidecar) = &self.sinks.sidecar {
                    sidecar.version(&spec);
                }
                if let Some(monitor) = &self.sinks.monitor
                    && let Err(e) = monitor.set_version(*spec.clone())
                {
                    tracing::error!(model = %spec.model, version = spec.version, error = %e, "not monitored: invalid monitoring settings or baseline");
                }
            }
            Control::Retire { model, version } => {
                if let Some(sidecar) = &self.sinks.sidecar {
                    sidecar.retire(&model, version);
                }
                if let Some(monitor) = &self.sinks.monitor {
                    monitor.retire_version(&model, version);
                }
            }
            Control::Shutdown { deadline } => {
                self.finish(items, deadline);
                return false;
            }
        }
        true
    }

    /// Delivers what is queued until `deadline`, counts what is left as dropped, closes the log
    /// (later pushes are counted, not queued) and finishes the files.
    fn finish(&mut self, items: &Receiver<LogItem>, deadline: Instant) {
        self.log.flush();
        loop {
            let (batch, _) = take_batch(items);
            if batch.is_empty() {
                break;
            }
            self.deliver(batch);
            if Instant::now() >= deadline {
                let left = items.len();
                if left > 0 {
                    tracing::warn!(
                        requests = left,
                        "prediction log: shutdown deadline reached; rows still queued are dropped (counted as reason=\"shutdown\")"
                    );
                }
                break;
            }
        }
        // Undelivered items count themselves as `shutdown` when dropped.
        self.log.close();
        if let Some(parquet) = &mut self.sinks.parquet {
            if let Err(e) = parquet.flush() {
                tracing::error!(error = %e, "closing prediction-log files failed");
            }
            count_lost(&self.sinks.dropped, parquet);
        }
    }

    fn deliver(&mut self, batch: Vec<LogItem>) {
        let mut feedback = Vec::new();
        // Records only for the sinks that take them: the embedded monitor bins the tensors.
        let wants_records = self.sinks.sidecar.is_some() || self.sinks.parquet.is_some();
        let mut records: Vec<PredictionRecord> = Vec::new();
        let mut chunks: Vec<Box<Chunk>> = Vec::new();
        let mut chunk_rows = 0;
        for item in batch {
            match item.take() {
                ItemKind::Requests(c) => {
                    chunk_rows += c.rows();
                    chunks.push(c);
                    if chunk_rows >= CHUNK_ROWS {
                        self.ingest(&mut chunks, wants_records.then_some(&mut records));
                        chunk_rows = 0;
                    }
                }
                ItemKind::Feedback(f) => feedback.extend(f),
            }
        }
        self.ingest(&mut chunks, wants_records.then_some(&mut records));
        if !records.is_empty() {
            if let Some(sidecar) = &self.sinks.sidecar {
                sidecar.records(&records, &self.sinks.dropped);
            }
            if let Some(parquet) = &mut self.sinks.parquet
                && let Err(e) = parquet.write_records(&records)
            {
                tracing::warn!(error = %e, "writing prediction-log rows failed");
            }
        }
        if !feedback.is_empty() {
            if let Some(sidecar) = &self.sinks.sidecar {
                sidecar.feedback(&feedback, &self.sinks.dropped);
            }
            if let Some(parquet) = &mut self.sinks.parquet
                && let Err(e) = parquet.write_feedback(&feedback)
            {
                tracing::warn!(error = %e, "writing feedback rows failed");
            }
        }
        if let Some(parquet) = &mut self.sinks.parquet {
            count_lost(&self.sinks.dropped, parquet);
        }
    }

    /// Hands the requests of `chunks` to the embedded monitor as columnar batches and, when
    /// `records` is given, expands them into it; then drops them, giving their share of the log's
    /// bound back.
    // Boxed as they came through the queue, and go back to it for reuse.
    #[allow(clippy::vec_box)]
    fn ingest(
        &mut self,
        chunks: &mut Vec<Box<Chunk>>,
        records: Option<&mut Vec<PredictionRecord>>,
    ) {
        let monitor = self.sinks.monitor.as_ref();
        if !chunks.is_empty() && (monitor.is_some() || records.is_some()) {
            let behind = self.behind;
            self.scratch.with_batches(chunks, |batches| {
                match monitor {
                    Some(monitor) if behind => monitor.ingest_batches(batches),
                    Some(monitor) => monitor.ingest_batches_in_place(batches),
                    None => {}
                }
                if let Some(records) = records {
                    for batch in batches {
                        records.extend(batch.records());
                    }
                }
            });
        }
        for chunk in chunks.drain(..) {
            self.log.recycle(chunk);
        }
    }
}

/// Counts the rows the file sink lost to write errors (exactly those in no file: the complete row
/// groups of a failed file are kept) as `file_error`.
fn count_lost(dropped: &IntCounterVec, parquet: &mut ParquetSink) {
    for (model, rows) in parquet.take_lost() {
        dropped
            .with_label_values(&[model.as_str(), reason::FILE_ERROR])
            .inc_by(rows);
    }
}

/// Adds each item to `dropped{model, reason}`.
pub fn count_by_model<T>(
    dropped: &IntCounterVec,
    items: &[T],
    reason: &str,
    model: impl Fn(&T) -> &String,
) {
    for item in items {
        dropped
            .with_label_values(&[model(item).as_str(), reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_counting_thread_only_while_delivering_takes_much_of_the_time() {
        let ms = Duration::from_millis;
        // Keeping up: 2.5 ms of every 22 (c=1, 256-row requests).
        assert!(!behind(false, Duration::from_micros(2500), ms(22)));
        // Falling behind: at the peak it delivers about as long as it sleeps, or longer.
        assert!(behind(false, ms(8), ms(12)));
        // With the second thread it delivers faster, and keeps it until well caught up.
        assert!(behind(true, ms(2), ms(10)));
        assert!(!behind(true, ms(1), ms(10)));
        assert!(
            behind(false, ms(1), Duration::ZERO),
            "no time between looks"
        );
    }

    #[test]
    fn the_pause_shrinks_before_the_queue_could_fill_during_it() {
        let ms = Duration::from_millis;
        // Idle or slow: the full pause.
        assert_eq!(pause(0, ms(20), 65_536), POLL);
        assert_eq!(pause(1_000, ms(20), 65_536), POLL);
        // 3.5M rows/s (70,000 rows in 20 ms): a quarter of the bound (16,384 rows) in about 4.7 ms.
        let p = pause(70_000, ms(20), 65_536);
        assert!(p > ms(4) && p < ms(5), "{p:?}");
        // Faster than the shortest pause can follow: the shortest pause.
        assert_eq!(pause(1_000_000, ms(1), 65_536), MIN_POLL);
    }
}

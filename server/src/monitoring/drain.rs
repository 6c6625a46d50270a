//! The drain thread: takes what the request path queued and hands it, in batches, to each sink (the
//! embedded monitor, the sidecar stream, the Parquet files). It runs on its own OS thread so a slow sink
//! never touches the request path; at worst the queue fills and rows are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use keel_monitor::parquet_log::ParquetSink;
use keel_monitor::{ModelSpec, Monitor, PredictionRecord};
use prometheus::IntCounterVec;

use super::log::LogItem;
use super::sidecar_client::SidecarHandle;

/// Items (requests, feedback posts) handed to the sinks at once.
const BATCH_ITEMS: usize = 4096;
/// Pause between looks at an empty (or partly filled) queue: rows reach the monitor within this.
const POLL: Duration = Duration::from_millis(20);
/// How often files are rotated when nothing arrives.
const TICK: Duration = Duration::from_millis(500);

pub enum Control {
    Version(Box<ModelSpec>),
    Retire {
        model: String,
        version: u64,
    },
    /// Drain what is queued, close the files, end the thread.
    Shutdown,
}

pub struct Sinks {
    pub monitor: Option<Arc<Monitor>>,
    pub parquet: Option<ParquetSink>,
    pub sidecar: Option<SidecarHandle>,
    /// Rows a sink could not take, by model and reason.
    pub dropped: IntCounterVec,
}

pub fn spawn(
    items: Receiver<LogItem>,
    control: Receiver<Control>,
    queued_rows: Arc<AtomicUsize>,
    sinks: Sinks,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("keel-prediction-log".into())
        .spawn(move || Drain { sinks, queued_rows }.run(&items, &control))
}

struct Drain {
    sinks: Sinks,
    queued_rows: Arc<AtomicUsize>,
}

impl Drain {
    fn run(mut self, items: &Receiver<LogItem>, control: &Receiver<Control>) {
        let mut last_rotation = Instant::now();
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
                    Err(TryRecvError::Disconnected) => return self.finish(items),
                }
            }
            let batch: Vec<LogItem> = items.try_iter().take(BATCH_ITEMS).collect();
            let full = batch.len() == BATCH_ITEMS;
            if !batch.is_empty() {
                self.deliver(batch);
            }
            if last_rotation.elapsed() >= TICK {
                last_rotation = Instant::now();
                if let Some(parquet) = &mut self.sinks.parquet
                    && let Err(e) = parquet.rotate_due(Instant::now())
                {
                    tracing::warn!(error = %e, "rotating prediction-log files failed");
                }
            }
            // Polling, not blocking: a receiver parked on the queue would be woken (a futex call and
            // a context switch) by every request; this way one wake-up drains thousands of them.
            if !full {
                std::thread::sleep(POLL);
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
            Control::Shutdown => {
                self.finish(items);
                return false;
            }
        }
        true
    }

    fn finish(&mut self, items: &Receiver<LogItem>) {
        let rest: Vec<LogItem> = items.try_iter().collect();
        self.deliver(rest);
        if let Some(parquet) = &mut self.sinks.parquet
            && let Err(e) = parquet.flush()
        {
            tracing::error!(error = %e, "closing prediction-log files failed");
        }
    }

    fn deliver(&mut self, batch: Vec<LogItem>) {
        let mut records: Vec<PredictionRecord> = Vec::new();
        let mut feedback = Vec::new();
        for item in batch {
            match item {
                LogItem::Request(r) => records.extend(r.records()),
                LogItem::Feedback(f) => feedback.extend(f),
            }
        }
        self.queued_rows
            .fetch_sub(records.len() + feedback.len(), Ordering::AcqRel);
        if !records.is_empty() {
            if let Some(monitor) = &self.sinks.monitor {
                monitor.ingest(&records);
            }
            if let Some(sidecar) = &self.sinks.sidecar {
                sidecar.records(&records, &self.sinks.dropped);
            }
            if let Some(parquet) = &mut self.sinks.parquet
                && let Err(e) = parquet.write_records(&records)
            {
                tracing::warn!(error = %e, "writing prediction-log rows failed");
                count_by_model(&self.sinks.dropped, &records, "file_error", |r| &r.model);
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
                count_by_model(&self.sinks.dropped, &feedback, "file_error", |f| &f.model);
            }
        }
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

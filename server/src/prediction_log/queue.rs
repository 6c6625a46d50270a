//! The queue between the request path and the drain thread, and the chunks that fill it.
//!
//! Each thread adds the requests it logs to a chunk in its own slot ([`Queue::add`]); a full chunk
//! is queued at once, and the drain queues every partly filled one each time it looks at the queue
//! ([`Queue::flush`]), so a row waits no longer than before chunks: at most one pause of the drain.
//! A slot's lock is taken by its thread per request and by the drain once per look, so it is
//! nearly always free; threads beyond [`SLOTS`] share slots, which only costs waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::buffers::Buffers;
use super::chunk::{self, Chunk};
use super::log::{ItemKind, LogItem};

/// Chunks in the making at once, one per thread that logs (runtime workers, mostly).
const SLOTS: usize = 16;

/// Emptied chunks kept for reuse, at most this many and [`SPARE_BYTES`] of capacity. Chunks are
/// recycled only after the drain's next look, so what one look takes must come back: at 256-row
/// requests a chunk holds two of them and a look up to 64, and a new chunk's vectors were fresh
/// pages for the request path to fault in. A chunk of 64 single-row requests of 30 floats is about
/// 30 KiB in all; each keeps at most a few arenas of up to 128 KiB.
const SPARE: usize = 64;
const SPARE_BYTES: usize = 4 << 20;

/// A slot on its own cache line, so two threads' slots never share one.
#[repr(align(128))]
#[derive(Default)]
struct Slot(Mutex<Option<Box<Chunk>>>);

/// This thread's slot.
fn slot_index() -> usize {
    crate::per_thread::index(SLOTS)
}

/// What became of a queued item.
pub(super) enum Sent {
    Queued,
    /// The channel is full; the item comes back to be counted.
    Full(LogItem),
    /// The log is shut down; the item was dropped (and counted itself as `shutdown`).
    Closed,
}

pub(super) struct Queue {
    tx: Sender<LogItem>,
    /// Kept to empty the queue (counting its rows) if an item arrives after the shutdown.
    rx: Receiver<LogItem>,
    closed: AtomicBool,
    slots: [Slot; SLOTS],
    /// Chunks the drain has emptied: reused, so a chunk's vectors are allocated (and their pages
    /// faulted in) once, not per chunk.
    spare: Mutex<Spare>,
    /// Large captured tensors' vectors, back from delivered chunks for the next captures.
    pub(super) buffers: Buffers,
}

/// Emptied chunks and their capacity in bytes.
#[derive(Default)]
struct Spare {
    #[allow(clippy::vec_box)] // boxed as the queue carries them
    chunks: Vec<Box<Chunk>>,
    bytes: usize,
}

impl Queue {
    /// A queue of at most `items` items, and its receiving end.
    pub(super) fn new(items: usize) -> (Arc<Queue>, Receiver<LogItem>) {
        let (tx, rx) = crossbeam_channel::bounded(items.max(1));
        let queue = Queue {
            tx,
            rx: rx.clone(),
            closed: AtomicBool::new(false),
            slots: Default::default(),
            spare: Mutex::default(),
            buffers: Buffers::default(),
        };
        (Arc::new(queue), rx)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Queues `item`.
    pub(super) fn send(&self, item: LogItem) -> Sent {
        if self.closed.load(Ordering::SeqCst) {
            return Sent::Closed;
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                if self.closed.load(Ordering::SeqCst) {
                    // The drain may have finished before this item arrived: nobody else will
                    // take it out, so empty the queue here; dropped items count themselves.
                    while self.rx.try_recv().is_ok() {}
                    return Sent::Closed;
                }
                Sent::Queued
            }
            Err(TrySendError::Full(item)) => Sent::Full(item),
            // Not while this queue holds a receiver; dropping counts it as `shutdown`.
            Err(TrySendError::Disconnected(_)) => Sent::Closed,
        }
    }

    /// Queues a chunk, counting its rows as queued (`records`, `truncated`) or as `queue_full`.
    fn send_chunk(&self, chunk: Box<Chunk>) {
        if chunk.is_empty() {
            return;
        }
        // Counted once queued; the chunk may be delivered and gone by then, so tallied first.
        let tallies = chunk.tallies();
        match self.send(LogItem::requests(chunk)) {
            Sent::Queued => {
                for (names, rows, truncated) in tallies {
                    names.records.inc_by(rows);
                    if truncated > 0 {
                        names.truncated.inc_by(truncated);
                    }
                }
            }
            Sent::Full(item) => {
                if let ItemKind::Requests(mut chunk) = item.take() {
                    chunk.count(|names| &names.queue_full);
                    chunk.delivered();
                }
            }
            Sent::Closed => {}
        }
    }

    /// Adds a request to this thread's chunk (`build` adds it); queues the chunk once full.
    pub(super) fn add(&self, build: impl FnOnce(&mut Chunk)) {
        if self.is_closed() {
            // Counted as `shutdown` by the send.
            let mut chunk = Box::new(Chunk::with_capacity(1));
            build(&mut chunk);
            return self.send_chunk(chunk);
        }
        let slot = &self.slots[slot_index()].0;
        let full = {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let chunk = slot.get_or_insert_with(|| self.new_chunk());
            build(chunk);
            if chunk.is_full() { slot.take() } else { None }
        };
        if let Some(chunk) = full {
            self.send_chunk(chunk);
        } else if self.closed.load(Ordering::SeqCst) {
            // Closed while this request was added, maybe after `close` emptied this slot: nobody
            // else will, so send it here (counted as `shutdown`).
            let chunk = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(chunk) = chunk {
                self.send_chunk(chunk);
            }
        }
    }

    /// An empty chunk, reused when there is one.
    fn new_chunk(&self) -> Box<Chunk> {
        let spare = {
            let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
            let chunk = spare.chunks.pop();
            if let Some(chunk) = &chunk {
                spare.bytes -= chunk.capacity_bytes();
            }
            chunk
        };
        spare.unwrap_or_else(|| Box::new(Chunk::with_capacity(chunk::ENTRIES)))
    }

    /// Takes back a delivered chunk, emptied, for reuse.
    pub(super) fn recycle(&self, mut chunk: Box<Chunk>) {
        if !chunk.clear(&self.buffers) {
            return;
        }
        let bytes = chunk.capacity_bytes();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.chunks.len() < SPARE && spare.bytes + bytes <= SPARE_BYTES {
            spare.bytes += bytes;
            spare.chunks.push(chunk);
            return;
        }
        // Freed outside the lock.
        drop(spare);
    }

    /// Queues every partly filled chunk: the drain calls it before each look at the queue.
    pub(super) fn flush(&self) {
        for slot in &self.slots {
            let chunk = slot.0.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(chunk) = chunk {
                self.send_chunk(chunk);
            }
        }
    }

    /// From now on nothing is queued: what is in the slots and the queue is counted as `shutdown`.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.flush();
        while self.rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;
    use crate::prediction_log::log::{LogLimits, PredictionLog};
    use crate::signature::{Signature, TensorSpec};
    use crate::tensor::{DataType, Tensor, TensorData};

    fn log() -> (
        PredictionLog,
        Receiver<LogItem>,
        crate::prediction_log::VersionLog,
    ) {
        let limits = LogLimits {
            rows: 100_000,
            bytes: 1 << 30,
            max_elements: 1024,
        };
        let (log, rx, _) = PredictionLog::new(limits, &Registry::new()).unwrap();
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 1],
            }],
            outputs: vec![],
            max_batch_size: 8,
        };
        let version = log.for_version("m", &signature, 1.0);
        (log, rx, version)
    }

    fn push(version: &crate::prediction_log::VersionLog) {
        let x = Tensor {
            name: "x".into(),
            shape: vec![1, 1],
            data: TensorData::Fp32(vec![1.0]),
        };
        let captured = version.capture(Some("r"), vec![x], 1).unwrap();
        version.push(captured, 1, &[]);
    }

    fn requests(rx: &Receiver<LogItem>) -> Vec<usize> {
        rx.try_iter()
            .map(|item| match item.take() {
                ItemKind::Requests(chunk) => chunk.len(),
                ItemKind::Feedback(_) => 0,
            })
            .collect()
    }

    #[test]
    fn a_full_chunk_goes_at_once_and_a_partly_filled_one_when_the_drain_looks() {
        let (log, rx, version) = log();
        for _ in 0..chunk::ENTRIES - 1 {
            push(&version);
        }
        assert!(requests(&rx).is_empty(), "gathered, not queued yet");
        push(&version);
        assert_eq!(requests(&rx), [chunk::ENTRIES]);
        push(&version);
        push(&version);
        log.flush();
        assert_eq!(requests(&rx), [2]);
        log.flush();
        assert!(requests(&rx).is_empty());
    }

    #[test]
    fn each_thread_fills_its_own_chunk_and_one_flush_queues_them_all() {
        let (log, rx, version) = log();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..5 {
                        push(&version);
                    }
                });
            }
        });
        log.flush();
        let mut chunks = requests(&rx);
        chunks.sort();
        // Three threads take three of the 16 slots in turn: never the same one.
        assert_eq!(chunks, [5, 5, 5]);
    }

    #[test]
    fn delivered_chunks_are_kept_for_reuse_up_to_a_bound() {
        let (queue, _rx) = Queue::new(16);
        for _ in 0..SPARE + 10 {
            queue.recycle(Box::new(Chunk::with_capacity(chunk::ENTRIES)));
        }
        let (kept, bytes) = {
            let spare = queue.spare.lock().unwrap();
            let sum: usize = spare.chunks.iter().map(|c| c.capacity_bytes()).sum();
            (spare.chunks.len(), (spare.bytes, sum))
        };
        assert_eq!(kept, SPARE);
        assert_eq!(bytes.0, bytes.1, "the kept capacity is accounted exactly");
        assert!(bytes.0 <= SPARE_BYTES);
        for _ in 0..SPARE {
            drop(queue.new_chunk());
        }
        let spare = queue.spare.lock().unwrap();
        assert_eq!((spare.chunks.len(), spare.bytes), (0, 0));
    }

    #[test]
    fn feedback_is_queued_after_the_predictions_before_it() {
        let (log, rx, version) = log();
        push(&version);
        assert!(log.push_feedback(vec![keel_monitor::FeedbackRecord {
            model: "m".into(),
            request_id: "r".into(),
            row: 0,
            truth: keel_monitor::FeatureValue::Number(1.0),
            timestamp_ms: 0,
        }]));
        assert_eq!(
            requests(&rx),
            [1, 0],
            "the request's chunk first, then the feedback"
        );
    }
}

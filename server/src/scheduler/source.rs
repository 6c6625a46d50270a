//! The pulling side of a version's queue: what an instance thread, or a request relaying the queue,
//! takes from it, batch by batch.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Instant;

use crossbeam_channel::{RecvTimeoutError, Sender, TryRecvError};

use super::{ASLEEP, BatchPolicy, IDLE, Pending, Queue};
use crate::batch;
use crate::doorbell::Woken;
use crate::metrics::VersionMetrics;

/// The pulling side: each instance thread owns one, with the request it could not fit last time.
pub struct BatchSource {
    queue: Queue,
    /// A relay's own lane: it takes that lane's requests first, and another lane's only when no
    /// gatherer of that lane is coming. `None` for an instance thread, which takes any.
    own: Option<usize>,
    policy: BatchPolicy,
    carry: Option<Pending>,
    metrics: Arc<VersionMetrics>,
}

/// What a request relaying the queue found in it ([`BatchSource::next_batch_now`]).
pub enum Now {
    Batch(Vec<Pending>),
    /// Nothing left to claim.
    Empty,
    /// A request larger than the caller may compute, left queued for an instance thread.
    TooLarge,
}

impl BatchSource {
    pub fn new(queue: Queue, policy: BatchPolicy, metrics: Arc<VersionMetrics>) -> Self {
        BatchSource {
            queue,
            own: None,
            policy,
            carry: None,
            metrics,
        }
    }

    /// A relay's source of `lane`'s requests (see [`BatchSource::own`]).
    pub fn relaying(
        queue: Queue,
        lane: usize,
        policy: BatchPolicy,
        metrics: Arc<VersionMetrics>,
    ) -> Self {
        BatchSource {
            own: Some(lane),
            ..BatchSource::new(queue, policy, metrics)
        }
    }

    /// Whether nothing is queued or carried. Read after giving a session back: a request that found every
    /// session taken left its work to their holders, and each looks again (see [`crate::direct`]).
    pub fn is_empty(&self) -> bool {
        fence(Ordering::SeqCst);
        self.carry.is_none() && self.nothing_queued()
    }

    /// Whether this source has nothing queued to take.
    fn nothing_queued(&self) -> bool {
        self.queue.nothing_for(self.own)
    }

    /// The next queued request this source takes: its own lane's, the shared queue's, then another
    /// lane's. Disconnected only when the shared queue is and no lane holds one.
    fn try_next(&self) -> std::result::Result<Pending, TryRecvError> {
        let Some(lanes) = &self.queue.lanes else {
            return self.queue.pending.try_recv();
        };
        if let Some(p) = self.own.and_then(|own| lanes.take_own(own)) {
            return Ok(p);
        }
        let shared = match self.queue.pending.try_recv() {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        let other = match self.own {
            Some(own) => lanes.take_unattended(own),
            None => lanes.take_any(),
        };
        other.ok_or(shared)
    }

    /// Whether a request claimed for the next batch waits here.
    pub fn carrying(&self) -> bool {
        self.carry.is_some()
    }

    /// The next batch of what is queued now, without waiting, none of its requests above `max_rows` rows
    /// (a request relaying the queue computes on an async worker). A larger request goes back to the
    /// queue unclaimed, its timeout still running, for an instance thread.
    pub fn next_batch_now(&mut self, max_rows: usize, requeue: &Sender<Pending>) -> Now {
        let first = match self.carry.take() {
            Some(p) => p,
            None => loop {
                let p = match self.try_next() {
                    Ok(p) => self.take(p),
                    Err(_) => return Now::Empty,
                };
                let p = if p.rows > max_rows {
                    match self.set_aside(p, requeue) {
                        Some(p) => p,
                        None => return Now::TooLarge,
                    }
                } else {
                    p
                };
                if p.claim() {
                    break p;
                }
            },
        };
        Now::Batch(self.fill(first, max_rows, Some(requeue)))
    }

    /// Blocks for the next request, then gathers what else fits in its batch. `None` once the queue is
    /// closed and drained: the version was unloaded or the server stopped, and every queued request has
    /// been served.
    pub fn next_batch(&mut self) -> Option<Vec<Pending>> {
        // A carried request was claimed when it was taken: it runs first.
        let first = match self.carry.take() {
            Some(p) => p,
            None => loop {
                let p = self.wait()?;
                let p = self.take(p);
                if p.claim() {
                    break p;
                }
            },
        };
        let batch = self.fill(first, usize::MAX, None);
        // More than this batch is queued: a sleeping sibling takes it meanwhile, as a thread blocked on
        // the queue would have been woken for it.
        if let Some(bell) = &self.queue.bell
            && !self.nothing_queued()
        {
            bell.ring();
        }
        Some(batch)
    }

    /// The next queued request, waiting for one; `None` once the queue is closed and drained.
    fn wait(&self) -> Option<Pending> {
        let Some(bell) = &self.queue.bell else {
            return match self.queue.pending.recv_timeout(IDLE) {
                Ok(p) => Some(p),
                Err(RecvTimeoutError::Disconnected) => None,
                // Idle for a while: hand back what the last burst left in this thread's heap.
                Err(RecvTimeoutError::Timeout) => {
                    crate::alloc::idle();
                    self.queue.pending.recv().ok()
                }
            };
        };
        let mut closed = false;
        // Once idle (and its heap handed back), a thread sleeps until rung: nothing to do every second.
        let mut timeout = IDLE;
        loop {
            // A request that found this thread's session taken left its work to it: the fence makes
            // this look see it (the request fences between queueing and trying the sessions).
            fence(Ordering::SeqCst);
            match self.try_next() {
                Ok(p) => return Some(p),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if closed => return None,
                Err(TryRecvError::Empty) => {}
            }
            // The scheduler rings after queueing what no request computes, and closes the bell when it
            // goes: nothing can be queued after that, so what is queued then is the last.
            match bell.wait(timeout, || !self.nothing_queued()) {
                Woken::Work => {}
                Woken::Idle => {
                    crate::alloc::idle();
                    timeout = ASLEEP;
                }
                Woken::Closed => closed = true,
            }
        }
    }

    /// Puts a queued request, unclaimed, at the back of the queue for an instance thread; gives it back
    /// when the queue filled up meanwhile (computing it here then beats refusing it).
    fn set_aside(&mut self, p: Pending, requeue: &Sender<Pending>) -> Option<Pending> {
        match requeue.try_send(p) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                None
            }
            Err(e) => Some(e.into_inner()),
        }
    }

    /// Gathers what else fits in `first`'s batch, at most `max_rows` rows. A request relaying the queue
    /// (`requeue`) sets aside one larger than `max_rows` instead of carrying it to its next batch.
    fn fill(
        &mut self,
        first: Pending,
        max_rows: usize,
        requeue: Option<&Sender<Pending>>,
    ) -> Vec<Pending> {
        let max_rows = max_rows.min(self.policy.max_batch_size);
        let mut rows = first.rows;
        let mut batch = vec![first];
        if self.policy.max_batch_size == 0 {
            batch[0].slot.release();
            return batch;
        }
        let wait_until = batch[0].enqueued + self.policy.max_queue_delay;
        while rows < max_rows && !self.policy.preferred_batch_sizes.contains(&rows) {
            let next = match self.try_next() {
                Ok(p) => p,
                Err(TryRecvError::Disconnected) => break,
                // Not waiting at all is not a wait with a past deadline: crossbeam spins and yields
                // the thread before it looks at the deadline.
                Err(TryRecvError::Empty)
                    if self.policy.max_queue_delay.is_zero() || Instant::now() >= wait_until =>
                {
                    break;
                }
                Err(TryRecvError::Empty) => match self.queue.pending.recv_deadline(wait_until) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut next = self.take(next);
            if next.rows > max_rows
                && let Some(requeue) = requeue
            {
                match self.set_aside(next, requeue) {
                    Some(back) => next = back,
                    None => break,
                }
            }
            if !next.claim() {
                continue;
            }
            if rows + next.rows > max_rows || !batch::compatible(&batch[0].inputs, &next.inputs) {
                self.carry = Some(next);
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        // The batch executes now: its requests leave the queue; a carried one still waits.
        for p in &batch {
            p.slot.release();
        }
        batch
    }

    fn take(&self, p: Pending) -> Pending {
        self.metrics.queue_depth.dec();
        p
    }
}

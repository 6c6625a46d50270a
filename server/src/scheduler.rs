//! The per model version scheduler: one bounded queue that every instance of the version pulls batches
//! from. Submitting never blocks: a full queue is refused at once (429 / RESOURCE_EXHAUSTED), and a
//! request's timeout is enforced while it waits, so an expired request never reaches the backend.
//!
//! For a model that computes in microseconds the queue is relayed ([`crate::direct`]): the request that
//! finds an instance idle computes what is queued itself, and the instance threads wait on a doorbell
//! rung only when no request could take the work, instead of being woken by every request.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::direct::{Direct, LEAD_ROUNDS, Lead, RELAY_MAX_ROWS};
use crate::doorbell::Doorbell;
use crate::error::{Error, Result};
use crate::gather::{self, Gathering, Patience, RELAYING, RINGING};
use crate::metrics::VersionMetrics;
use crate::model_toml::DynamicBatching;
use crate::tensor::Tensor;

mod source;
pub use source::{BatchSource, Now};

/// A finished execution, as one request sees it: its outputs and where the time went.
pub struct Executed {
    pub outputs: Vec<Tensor>,
    /// The request's inputs, given back after the run (backends borrow them), so the prediction log
    /// keeps them without a copy.
    pub inputs: Vec<Tensor>,
    pub queue: Duration,
    /// When its batch started on the instance, and how long the batch ran (the instance's own clock
    /// readings, for the request's trace spans).
    pub started: Instant,
    pub compute: Duration,
    /// Rows and requests of the whole batch.
    pub batch_rows: usize,
    pub batch_requests: usize,
}

/// How long an instance waits for work before it counts as idle.
const IDLE: Duration = Duration::from_secs(1);
/// How long an idle instance thread of a relayed version sleeps between looks when nothing rings.
const ASLEEP: Duration = Duration::from_secs(3600);

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const EXPIRED: u8 = 2;

/// A request waiting for an instance.
pub struct Pending {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<Executed>>,
    /// A load-time warm-up run: computed like any request, but left out of statistics and metrics.
    pub warmup: bool,
    /// Its place among the requests `max_queue_size` counts, given back when its batch starts executing,
    /// when its client gives up, or when it is dropped; and its state, shared with its submitter.
    slot: Slot,
}

/// One of the `max_queue_size` places: every accepted request that is not executing yet holds one,
/// including those an instance holds while it forms a batch (as Triton counts its queue). Released once.
#[derive(Clone)]
struct Slot {
    waiting: Arc<AtomicUsize>,
    ticket: Arc<Ticket>,
}

/// What a queued request and its submitter share (one allocation per request).
struct Ticket {
    released: AtomicBool,
    /// QUEUED until either an instance claims it (RUNNING) or its waiting client gives up (EXPIRED):
    /// one atomic step decides, so a request is never both answered "timed out" and computed.
    state: AtomicU8,
}

impl Slot {
    /// A place, unless all `max` are taken.
    fn take(waiting: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            waiting: waiting.clone(),
            ticket: Arc::new(Ticket {
                released: AtomicBool::new(false),
                state: AtomicU8::new(QUEUED),
            }),
        })
    }

    fn release(&self) {
        if !self.ticket.released.swap(true, Ordering::AcqRel) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Whichever holder goes first gives the place back: the request dropped unanswered, or its submitter
/// done waiting (answered, timed out, or its client gone, in which case an instance will skip it).
impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

impl Pending {
    /// Takes the request for computation, unless its client left or its time in the queue ran out.
    fn claim(&self) -> bool {
        !self.reply.is_closed()
            // The clock is read only for a request with a deadline (none by default).
            && self.deadline.is_none_or(|d| Instant::now() < d)
            && self
                .slot
                .ticket
                .state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// How instances form batches.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    /// 0: every request runs alone.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub preferred_batch_sizes: Vec<usize>,
}

/// The receiving ends the instances share: the queue, and in a relayed version the doorbell the instance
/// threads wait on instead of the queue (a thread blocked on the queue would be woken by every request)
/// and the lanes its requests queue in, one per thread ([`crate::gather`]).
#[derive(Clone)]
pub struct Queue {
    pub pending: Receiver<Pending>,
    pub bell: Option<Arc<Doorbell>>,
    pub lanes: Option<Arc<Gathering>>,
}

impl Queue {
    /// Whether nothing is queued that a source would take: a relay of lane `own` (its lane, the shared
    /// queue, and lanes no gatherer of theirs will come for), or, for `None`, an instance thread (any).
    pub(crate) fn nothing_for(&self, own: Option<usize>) -> bool {
        self.pending.is_empty()
            && self.lanes.as_ref().is_none_or(|lanes| match own {
                Some(own) => lanes.none_for(own),
                None => lanes.is_empty(),
            })
    }
}

/// The submitting side, held by the served version.
pub struct Scheduler {
    queue: Sender<Pending>,
    /// Rung when queued work needs an instance thread (relayed versions only; see [`Queue`]).
    bell: Option<Arc<Doorbell>>,
    /// Accepted requests not executing yet (see [`Slot`]), at most `max_queue_size`.
    waiting: Arc<AtomicUsize>,
    max_queue_size: usize,
    default_timeout: Option<Duration>,
    metrics: Arc<VersionMetrics>,
    /// Set once the instances run, when lone requests may borrow an idle one (see [`crate::direct`]).
    direct: OnceLock<Direct>,
    /// Where relayed requests queue, and which of them relays (relayed versions).
    gathering: Arc<Gathering>,
}

impl Scheduler {
    /// The queue and the receiving ends the instances share.
    pub fn new(config: &DynamicBatching, metrics: Arc<VersionMetrics>) -> (Self, Queue) {
        let max_queue_size = config.max_queue_size.max(1);
        let (queue, rx) = crossbeam_channel::bounded(max_queue_size);
        let bell = crate::direct::relayed(config).then(Arc::<Doorbell>::default);
        let gathering = Arc::new(Gathering::default());
        let default_timeout = (config.default_timeout_us > 0)
            .then(|| Duration::from_micros(config.default_timeout_us));
        (
            Scheduler {
                queue,
                bell: bell.clone(),
                waiting: Arc::new(AtomicUsize::new(0)),
                max_queue_size,
                default_timeout,
                metrics,
                direct: OnceLock::new(),
                gathering: gathering.clone(),
            },
            Queue {
                pending: rx,
                lanes: bell.is_some().then_some(gathering),
                bell,
            },
        )
    }

    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        timeout: Option<Duration>,
    ) -> Result<Executed> {
        self.enqueue(inputs, rows, timeout, false).await
    }

    /// Relayed versions: computes `lane`'s queue here if an instance is idle and the model is cheap
    /// enough (`rows`: the caller's own request), else has an instance thread take it.
    async fn relay(&self, rows: usize, lane: usize) {
        let Some(direct) = self.direct.get() else {
            return self.ring();
        };
        for _ in 0..LEAD_ROUNDS {
            match direct.lead(rows, lane, &self.queue) {
                Lead::Done => return,
                Lead::Ring => return self.ring(),
                // Let this worker's other tasks run; one of them may take the lead meanwhile.
                Lead::Left => tokio::task::yield_now().await,
            }
        }
        if direct.pending(lane) {
            self.ring();
        }
    }

    /// A gatherer's wait before it relays: it yields so that its worker's other ready requests queue
    /// first and join the batch computed next, and yields again until rounds in a row bring none
    /// (each yield also lets the runtime read the sockets), never past a full relayed batch: two
    /// such rounds for a request that relays ([`RELAYING`]), one for a request an instance thread will
    /// take ([`RINGING`]). Under light load the first rounds bring none: it relays after two yields, or
    /// rings after one.
    async fn gather(&self, lane: usize, rows: usize) {
        let Patience {
            rounds,
            idle: patience,
        } = match self.direct.get() {
            Some(direct) if direct.relays(rows) => RELAYING,
            _ => RINGING,
        };
        let queued_now = || self.gathering.len(lane) + self.queue.len();
        let mut queued = queued_now();
        let mut idle = 0;
        for _ in 0..rounds {
            tokio::task::yield_now().await;
            let now = queued_now();
            if now >= RELAY_MAX_ROWS {
                break;
            }
            if now > queued {
                idle = 0;
            } else {
                idle += 1;
                if idle >= patience {
                    break;
                }
            }
            queued = now;
        }
    }

    /// Has an instance thread drain the queue (relayed versions; the others' threads wait on the queue).
    pub(crate) fn ring(&self) {
        if let Some(bell) = &self.bell {
            bell.ring();
        }
    }

    /// Lets lone requests run on idle instances from now on.
    pub fn enable_direct(&self, direct: Direct) {
        let _ = self.direct.set(direct);
    }

    /// Runs a warm-up inference before the version takes traffic.
    pub async fn warm_up(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Executed> {
        self.enqueue(inputs, rows, None, true).await
    }

    async fn enqueue(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        timeout: Option<Duration>,
        warmup: bool,
    ) -> Result<Executed> {
        let mut inputs = inputs;
        // The version's only request in flight: it would run alone on an idle instance anyway. With
        // company (now or as a rule lately) it takes the queue, where concurrent requests share one
        // backend call.
        if !warmup
            && let Some(direct) = self.direct.get()
            && direct.arrived(
                self.metrics.inflight.get() <= 1 && self.waiting.load(Ordering::Acquire) == 0,
            )
        {
            match direct.try_run(inputs, rows) {
                Ok(done) => {
                    // Requests that came meanwhile found the session taken and left the queue to it.
                    let lane = gather::lane();
                    if direct.pending(lane) {
                        self.relay(0, lane).await;
                    }
                    return done;
                }
                Err(back) => inputs = back,
            }
        }
        let timeout = timeout.or(self.default_timeout);
        let now = Instant::now();
        let full = || {
            Error::Overloaded(format!(
                "the queue of this model version is full ({} requests waiting); retry later",
                self.max_queue_size
            ))
        };
        let slot = Slot::take(&self.waiting, self.max_queue_size).ok_or_else(full)?;
        let (reply, answer) = oneshot::channel();
        let deadline = timeout.map(|t| now + t);
        let pending = Pending {
            inputs,
            rows,
            enqueued: now,
            deadline,
            reply,
            warmup,
            slot: slot.clone(),
        };
        let relayed = !warmup && self.direct.get().is_some();
        let lane = gather::lane();
        // A relayed request queues in its thread's lane, unless that is full.
        let shared = if relayed {
            self.gathering.queue(lane, pending).err()
        } else {
            Some(pending)
        };
        if let Some(pending) = shared {
            match self.queue.try_send(pending) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(full()),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(Error::Unavailable(
                        "the model version is shutting down".into(),
                    ));
                }
            }
        }
        self.metrics.queue_depth.inc();
        if !relayed {
            self.ring();
        } else if let Some(mut gatherer) = self.gathering.start(lane, self.bell.as_deref()) {
            self.gather(lane, rows).await;
            gatherer.stop();
            self.relay(rows, lane).await;
            gatherer.relayed();
        }
        // Else a gatherer on this thread relays the queue for this request too.
        let stopped = || Error::Unavailable("the model instance stopped during inference".into());
        let Some(limit) = timeout else {
            return answer.await.map_err(|_| stopped())?;
        };
        // The timeout bounds the time in the queue; once an instance has claimed the request it runs to the end.
        let mut answer = answer;
        match tokio::time::timeout(limit, &mut answer).await {
            Ok(result) => result.map_err(|_| stopped())?,
            Err(_)
                if slot
                    .ticket
                    .state
                    .compare_exchange(QUEUED, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                // Its entry stays in the channel until an instance skips it; its place is free now.
                slot.release();
                Err(Error::Timeout(format!(
                    "request timed out after {} µs waiting in the queue",
                    limit.as_micros()
                )))
            }
            Err(_) => answer.await.map_err(|_| stopped())?,
        }
    }
}

/// The instance threads of a relayed version sleep on the bell, not on the queue: closing it is how they
/// learn that the version is gone.
impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(bell) = &self.bell {
            bell.close();
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

//! The direct run: a lone request computed on the calling thread with an idle instance's session, instead
//! of a trip through the queue to the instance thread and back. For a model that computes in a few
//! microseconds those two thread hand-offs (a futex wake each way, two context switches) cost more than
//! the model.
//!
//! A request runs directly only when the result is the same as the scheduler's: it is the version's only
//! request in flight and nothing is queued (it would have been a batch of one), the version has no
//! `max_queue_delay` (it would not have waited for company), and its cost is known from earlier batches.
//! A run expected within `[dynamic_batching] direct_run_max_us` (default [`DEFAULT_MAX_US`]) computes on
//! the async worker as it is; one up to [`IN_PLACE_FACTOR`] times longer first hands the worker's other
//! tasks to another thread (`block_in_place`), so it stalls no connection either. Concurrent requests
//! take the queue, where the instances batch them: one backend call for many requests costs less than
//! one each.
//!
//! Being alone at one instant is not enough: under load, with each worker running its request to the
//! end, a request often finds the others just answered and would run directly too, and the version
//! would serve batches of one (measured: 12% fewer requests/s at 32 connections than with the queue).
//! So a request runs directly only while recent requests have mostly arrived alone ([`Crowd`]).
//!
//! Under load the same versions are relayed ([`Direct::lead`]): a request joins the queue, then, if an
//! instance is idle, computes the queued requests itself, in batches as an instance thread would form
//! them, and answers the others. Of the requests queued on one thread while one of them lets the others
//! queue, only that one relays ([`crate::gather`]). The instance threads wait on a doorbell rather than on the queue, so no
//! request wakes one; one is rung only when no request could take the work (a request too large to
//! compute on an async worker or above [`RELAY_MAX_ROWS`], a model not known to be cheap yet, or a
//! relaying request that has computed [`LEAD_ROUNDS`] rounds of [`LEAD_BATCHES`] batches for others,
//! yielding between rounds, and leaves the rest). A request that finds every session taken leaves its
//! work to their holders: each looks at the queue again after giving its session back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::instance::{self, InstanceSpec, Session};
use crate::scheduler::{BatchSource, Executed, Now, Pending, Queue};
use crate::tensor::Tensor;

/// The longest a direct run may be expected to take, by default: about what decoding a 16 KiB JSON body
/// costs on the same worker.
pub const DEFAULT_MAX_US: u64 = 50;
/// The most `direct_run_max_us` may allow: a second on an async worker is already far too long.
pub const LIMIT_MAX_US: u64 = 1_000_000;
/// A lone request expected to compute up to this many times `direct_run_max_us` (1 ms by default) still
/// runs directly, after handing its worker's other tasks over. Beyond that the queue's two wake-ups are
/// a small share of the compute, and a request computing in place cannot be cut off at its deadline
/// (it is answered late instead), so longer runs take the queue.
pub const IN_PLACE_FACTOR: u32 = 20;
/// How many batches a relaying request computes before it lets its worker's other tasks run
/// ([`Lead::Left`]).
pub const LEAD_BATCHES: usize = 4;
/// How many rounds of [`LEAD_BATCHES`] a relaying request computes, yielding to its worker's other tasks
/// between them, before it returns to its own connection and rings an instance thread for what is
/// still queued. Ringing costs a thread wake-up and its sleep again (about 40 µs of CPU on the 2-core
/// development VM); a yield lets another request take over the lead on the same worker.
pub const LEAD_ROUNDS: usize = 4;

/// What a relaying request left behind ([`Direct::lead`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Lead {
    /// Nothing queued that a session holder will not see.
    Done,
    /// Requests still queued after [`LEAD_BATCHES`] batches.
    Left,
    /// Work that only an instance thread may take.
    Ring,
}

/// The most rows a relayed batch holds, and so the largest request a request relays: larger ones go to
/// the instance threads, whose two hand-offs are small next to such a request's own decoding and
/// compute. Measured with 256-row gRPC requests at peak (h2load 4 x 8): relaying them served 12.7-12.9k
/// requests/s with 84-88% of rows reaching the monitor's drift window, handing them off 13.2-14.0k with
/// 88-90%.
pub const RELAY_MAX_ROWS: usize = 64;

/// Whether a version's queue is relayed by its requests: it runs direct runs and never waits to form
/// batches.
pub fn relayed(config: &crate::model_toml::DynamicBatching) -> bool {
    config.max_queue_delay_us == 0 && config.direct_run_max_us > 0
}

/// A version's compute cost per row, learnt from its executed batches. A first run is often slow (ONNX
/// Runtime sizes its buffers then), so warm-up runs teach nothing, and the estimate comes down fast (half
/// way to each cheaper sample) and goes up by an eighth of the difference: one slow run of an expensive
/// model already lifts it past the limit.
#[derive(Debug)]
pub struct Cost {
    nanos_per_row: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Default for Cost {
    fn default() -> Self {
        Cost {
            nanos_per_row: AtomicU64::new(UNKNOWN),
        }
    }
}

impl Cost {
    pub fn observe(&self, compute: Duration, rows: usize) {
        let sample = u64::try_from(compute.as_nanos() / rows.max(1) as u128).unwrap_or(UNKNOWN - 1);
        let old = self.nanos_per_row.load(Ordering::Relaxed);
        // Two instances may race here; either update is a fine estimate.
        let new = if old == UNKNOWN {
            sample
        } else if sample < old {
            old - (old - sample) / 2
        } else {
            old + (sample - old) / 8
        };
        self.nanos_per_row.store(new, Ordering::Relaxed);
    }

    /// The most rows expected to compute within `max`; 0 before the first batch.
    pub fn rows_within(&self, max: Duration) -> usize {
        match self.nanos_per_row.load(Ordering::Relaxed) {
            UNKNOWN => 0,
            per_row => {
                usize::try_from(max.as_nanos() / u128::from(per_row.max(1))).unwrap_or(usize::MAX)
            }
        }
    }

    /// The expected compute time of `rows` rows; `None` before the first batch.
    pub fn estimate(&self, rows: usize) -> Option<Duration> {
        let per_row = self.nanos_per_row.load(Ordering::Relaxed);
        (per_row != UNKNOWN).then(|| Duration::from_nanos(per_row.saturating_mul(rows as u64)))
    }
}

/// How often a version's recent requests arrived with company (another request in flight or queued): a
/// moving average over about the last eight arrivals, in 1/1024ths.
#[derive(Debug, Default)]
pub struct Crowd(AtomicU32);

const ONE: u32 = 1024;
/// Above this share of recent arrivals with company, lone requests take the queue too: one overlap now
/// and then (an eighth) keeps direct runs, a steady stream of them stops them.
const CROWDED: u32 = ONE / 4;

impl Crowd {
    /// Counts an arrival; true when it came alone and recent ones mostly did too.
    pub fn arrived(&self, alone: bool) -> bool {
        let old = self.0.load(Ordering::Relaxed);
        let sample = if alone { 0 } else { ONE };
        // Concurrent arrivals may race here; a lost update only delays the average.
        let new = old - old / 8 + sample / 8;
        self.0.store(new, Ordering::Relaxed);
        alone && new < CROWDED
    }
}

/// The sessions of a version's instances, lent to lone requests and to requests relaying the queue.
pub struct Direct {
    sessions: Vec<Session>,
    spec: Arc<InstanceSpec>,
    max: Duration,
    crowd: Crowd,
    queue: Queue,
}

impl Direct {
    /// `None` when the version waits to form batches (`max_queue_delay`), which a request must not skip,
    /// or when direct runs are off (`max_us` 0).
    pub fn new(
        sessions: Vec<Session>,
        spec: Arc<InstanceSpec>,
        max_us: u64,
        queue: Queue,
    ) -> Option<Direct> {
        (spec.policy.max_queue_delay.is_zero() && max_us > 0).then(|| Direct {
            sessions,
            spec,
            max: Duration::from_micros(max_us),
            crowd: Crowd::default(),
            queue,
        })
    }

    /// Whether requests are queued that a relay of `lane` would take (read after a session was given
    /// back; see [`Direct::lead`]).
    pub fn pending(&self, lane: usize) -> bool {
        fence(Ordering::SeqCst);
        !self.queue.nothing_for(Some(lane))
    }

    /// Computes queued requests on an idle instance's session, on this thread, `rows` being the caller's
    /// own request, already queued, at most [`LEAD_BATCHES`] batches. [`Lead::Done`] when nothing is
    /// left, or when every session was taken (each holder looks at the queue again after giving its
    /// session back); [`Lead::Left`] after its batches with work still queued; [`Lead::Ring`] when an
    /// instance thread must take over: the model is not known to be cheap enough, or a queued request
    /// is too large.
    pub fn lead(
        &self,
        rows: usize,
        lane: usize,
        requeue: &crossbeam_channel::Sender<Pending>,
    ) -> Lead {
        let max_rows = self.max_relayed_rows();
        if !Self::within(rows, max_rows) {
            return Lead::Ring;
        }
        let queue = Queue {
            bell: None,
            ..self.queue.clone()
        };
        let mut source = BatchSource::relaying(
            queue,
            lane,
            self.spec.policy.clone(),
            self.spec.metrics.clone(),
        );
        let mut batches = 0;
        loop {
            // Pairs with the holders' fence after they give a session back: either this sees the
            // session free, or the holder sees this request queued.
            fence(Ordering::SeqCst);
            let Some(mut guard) = self.sessions.iter().find_map(|s| s.try_lock().ok()) else {
                return Lead::Done;
            };
            let Some(backend) = guard.as_mut() else {
                return Lead::Ring;
            };
            loop {
                match source.next_batch_now(max_rows, requeue) {
                    Now::Batch(batch) => {
                        instance::compute(backend.as_mut(), batch, &self.spec);
                        batches += 1;
                    }
                    Now::Empty => break,
                    Now::TooLarge => return Lead::Ring,
                }
                if batches >= LEAD_BATCHES && !source.carrying() {
                    drop(guard);
                    return if source.is_empty() {
                        Lead::Done
                    } else {
                        Lead::Left
                    };
                }
            }
            drop(guard);
            if source.is_empty() {
                return Lead::Done;
            }
        }
    }

    /// The most rows a relayed batch may hold now: 0 while the model's cost is unknown.
    fn max_relayed_rows(&self) -> usize {
        self.spec.cost.rows_within(self.max).min(RELAY_MAX_ROWS)
    }

    /// Whether a request of `rows` rows fits a relayed batch of at most `max_rows` (0: none may relay).
    fn within(rows: usize, max_rows: usize) -> bool {
        max_rows != 0 && rows <= max_rows
    }

    /// Whether a request of `rows` rows would relay the queue itself, rather than leave it to an
    /// instance thread ([`Lead::Ring`]).
    pub fn relays(&self, rows: usize) -> bool {
        Self::within(rows, self.max_relayed_rows())
    }

    /// Counts a request's arrival (`alone`: the version's only one in flight, none queued); true when it
    /// should try a direct run.
    pub fn arrived(&self, alone: bool) -> bool {
        self.crowd.arrived(alone)
    }

    /// Runs `inputs` now on an idle session once the version's cost is known and within
    /// [`IN_PLACE_FACTOR`] times `direct_run_max_us`; gives them back otherwise. The caller has checked
    /// that no request is waiting. A run expected to take longer than `direct_run_max_us` first hands
    /// this async worker's other tasks to another thread (`block_in_place`), so it stalls no
    /// connection; the request itself is answered without a wake-up on its path, where the queue would
    /// cost two (about 80 µs on the 2-core VM). On a current-thread runtime, which cannot hand its tasks
    /// over, such a request takes the queue.
    pub fn try_run(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> std::result::Result<Result<Executed>, Vec<Tensor>> {
        let Some(expected) = self.spec.cost.estimate(rows) else {
            return Err(inputs);
        };
        let on_worker = expected <= self.max;
        if !on_worker && (expected > self.max * IN_PLACE_FACTOR || !can_hand_over()) {
            return Err(inputs);
        }
        // An instance thread holds its session only while it computes: a free one is idle.
        let Some(mut guard) = self.sessions.iter().find_map(|s| s.try_lock().ok()) else {
            return Err(inputs);
        };
        let Some(backend) = guard.as_mut() else {
            return Err(inputs);
        };
        let started = Instant::now();
        let inputs = [inputs];
        let mut run = || instance::execute(backend.as_mut(), &inputs, &[rows]);
        let result = if on_worker {
            run()
        } else {
            tokio::task::block_in_place(run)
        };
        drop(guard);
        let compute = started.elapsed();
        self.spec.record(compute, rows, false);
        let [inputs] = inputs;
        Ok(result.map(|(mut outputs, phases)| {
            self.spec.stats.record_compute(1, phases);
            Executed {
                outputs: outputs.pop().unwrap_or_default(),
                inputs,
                queue: Duration::ZERO,
                started,
                compute,
                batch_rows: rows,
                batch_requests: 1,
            }
        }))
    }
}

/// Whether `block_in_place` may be called here: on a multi-threaded runtime (a current-thread one
/// panics).
pub(crate) fn can_hand_over() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_requests_run_directly_until_company_is_the_rule() {
        let crowd = Crowd::default();
        assert!((0..100).all(|_| crowd.arrived(true)), "c=1: always direct");
        assert!(!crowd.arrived(false), "company: the queue");
        assert!(
            crowd.arrived(true),
            "one overlap now and then keeps direct runs"
        );
        // Under load about half the arrivals find company: the lone ones queue too.
        let lone = (0..100).filter(|i| crowd.arrived(i % 2 == 0)).count();
        assert!(lone <= 2, "{lone} direct runs under load");
        // When the load ends, direct runs come back within a few requests.
        let queued = (0..100).take_while(|_| !crowd.arrived(true)).count();
        assert!((1..=12).contains(&queued), "{queued}");
    }

    #[test]
    fn cost_is_unknown_until_a_batch_ran_then_follows_the_batches() {
        let cost = Cost::default();
        assert_eq!(
            cost.estimate(1),
            None,
            "no direct run before the first batch"
        );
        cost.observe(Duration::from_micros(640), 64);
        assert_eq!(cost.estimate(1), Some(Duration::from_micros(10)));
        assert_eq!(cost.estimate(256), Some(Duration::from_micros(2560)));
        // A cheaper batch halves the distance, a dearer one moves it by an eighth.
        cost.observe(Duration::from_micros(2), 1);
        assert_eq!(cost.estimate(1), Some(Duration::from_micros(6)));
        cost.observe(Duration::from_micros(14), 1);
        assert_eq!(cost.estimate(1), Some(Duration::from_micros(7)));
        // An empty batch counts as one row; huge values saturate instead of wrapping.
        cost.observe(Duration::from_secs(1), 0);
        assert!(cost.estimate(usize::MAX).unwrap() >= Duration::from_secs(1));
    }
}

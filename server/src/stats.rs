//! Per model version request statistics in Triton's shape (counts and cumulative nanoseconds), fed by the
//! serving core and read by both front ends (HTTP `.../stats`, gRPC ModelStatistics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::metrics::shards::{SHARDS, Writer};

#[derive(Default)]
struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    /// `n` requests that each took `d`.
    fn record_n(&self, n: u64, d: Duration) {
        let ns = d.as_nanos().saturating_mul(u128::from(n));
        self.count.fetch_add(n, Ordering::Relaxed);
        self.ns
            .fetch_add(ns.min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// One request that took `d`, in this thread's shard.
    fn record_by(&self, w: Writer, d: Duration) {
        w.add(&self.count, 1);
        w.add(&self.ns, d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    fn snapshot(&self) -> DurationSnapshot {
        DurationSnapshot {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// What each request records, per thread (see metrics/shards.rs), on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct RequestShard {
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    last_inference_ms: AtomicU64,
}

/// Time spent in each phase of one backend execution.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    /// Converting request tensors into the backend's values.
    pub input: Duration,
    pub infer: Duration,
    /// Converting the backend's values back into tensors.
    pub output: Duration,
}

pub struct Stats {
    requests: Box<[RequestShard]>,
    /// Recorded once per batch.
    compute_input: DurationStat,
    compute_infer: DurationStat,
    compute_output: DurationStat,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: (0..SHARDS).map(|_| RequestShard::default()).collect(),
            compute_input: DurationStat::default(),
            compute_infer: DurationStat::default(),
            compute_output: DurationStat::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// One backend execution of a batch of `rows` rows.
    pub fn record_execution(&self, rows: u64) {
        self.inference_count.fetch_add(rows, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
    }

    /// One request's time in the queue.
    pub fn record_queue(&self, queue: Duration) {
        let w = Writer::this_thread();
        self.requests[w.index].queue.record_by(w, queue);
    }

    /// The compute phases of one backend execution for the `requests` it answered: each request reports
    /// its batch's phases, as Triton does. Recorded once per batch rather than by each request, so a
    /// batch of many requests costs the shared counters one update each.
    pub fn record_compute(&self, requests: u64, phases: Phases) {
        self.compute_input.record_n(requests, phases.input);
        self.compute_infer.record_n(requests, phases.infer);
        self.compute_output.record_n(requests, phases.output);
    }

    pub fn record_request(&self, ok: bool, total: Duration) {
        let w = Writer::this_thread();
        let shard = &self.requests[w.index];
        if ok { &shard.success } else { &shard.fail }.record_by(w, total);
        // Milliseconds are all Triton reports: the coarse clock's (see clock.rs).
        w.max(&shard.last_inference_ms, crate::clock::unix_ms());
    }

    /// The per-request statistic `each` picks, over every thread's shard.
    fn requests(&self, each: impl Fn(&RequestShard) -> &DurationStat) -> DurationSnapshot {
        self.requests
            .iter()
            .map(|shard| each(shard).snapshot())
            .fold(DurationSnapshot::default(), |a, b| DurationSnapshot {
                count: a.count + b.count,
                ns: a.ns.saturating_add(b.ns),
            })
    }

    pub fn snapshot(&self, name: &str, version: u64) -> StatsSnapshot {
        StatsSnapshot {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self
                .requests
                .iter()
                .map(|s| s.last_inference_ms.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferenceStats {
                success: self.requests(|s| &s.success),
                fail: self.requests(|s| &s.fail),
                queue: self.requests(|s| &s.queue),
                compute_input: self.compute_input.snapshot(),
                compute_infer: self.compute_infer.snapshot(),
                compute_output: self.compute_output.snapshot(),
                cache_hit: DurationSnapshot::default(),
                cache_miss: DurationSnapshot::default(),
            },
            batch_stats: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DurationSnapshot {
    pub count: u64,
    pub ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InferenceStats {
    pub success: DurationSnapshot,
    pub fail: DurationSnapshot,
    pub queue: DurationSnapshot,
    pub compute_input: DurationSnapshot,
    pub compute_infer: DurationSnapshot,
    pub compute_output: DurationSnapshot,
    pub cache_hit: DurationSnapshot,
    pub cache_miss: DurationSnapshot,
}

/// One model version's statistics, serialized exactly as Triton's HTTP statistics extension does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub name: String,
    pub version: String,
    /// Unix milliseconds of the last request; 0 before the first.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    pub batch_stats: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Phases, Stats};

    /// A batch's phases count once for each request it answered, as if each had reported them.
    #[test]
    fn a_batch_reports_its_phases_for_each_of_its_requests() {
        let stats = Stats::default();
        let phases = Phases {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(200),
            output: Duration::from_nanos(30),
        };
        stats.record_compute(3, phases);
        stats.record_compute(1, phases);
        for _ in 0..4 {
            stats.record_queue(Duration::from_nanos(5));
        }
        let s = stats.snapshot("m", 1).inference_stats;
        assert_eq!((s.compute_input.count, s.compute_input.ns), (4, 40));
        assert_eq!((s.compute_infer.count, s.compute_infer.ns), (4, 800));
        assert_eq!((s.compute_output.count, s.compute_output.ns), (4, 120));
        assert_eq!((s.queue.count, s.queue.ns), (4, 20));
    }

    /// Each thread records in its own shard (more threads than shards: some share one); the snapshot
    /// adds them all up, and its last inference is the latest of any.
    #[test]
    fn every_threads_requests_are_counted() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..crate::metrics::shards::SHARDS + 3)
            .map(|i| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        stats.record_request(i % 2 == 0, Duration::from_nanos(7));
                        stats.record_queue(Duration::from_nanos(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let threads = (crate::metrics::shards::SHARDS + 3) as u64;
        let even = threads.div_ceil(2);
        let s = stats.snapshot("m", 1);
        let i = &s.inference_stats;
        assert_eq!((i.success.count, i.success.ns), (50 * even, 350 * even));
        assert_eq!(i.fail.count, 50 * (threads - even));
        assert_eq!((i.queue.count, i.queue.ns), (50 * threads, 150 * threads));
        assert!(s.last_inference >= crate::clock::unix_ms() - 60_000);
    }
}

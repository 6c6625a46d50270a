//! Per model version request statistics in Triton's shape (counts and cumulative nanoseconds), fed by the
//! serving core and read by both front ends (HTTP `.../stats`, gRPC ModelStatistics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Default)]
struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn record(&self, d: Duration) {
        self.record_n(1, d);
    }

    /// `n` requests that each took `d`.
    fn record_n(&self, n: u64, d: Duration) {
        let ns = d.as_nanos().saturating_mul(u128::from(n));
        self.count.fetch_add(n, Ordering::Relaxed);
        self.ns
            .fetch_add(ns.min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DurationSnapshot {
        DurationSnapshot {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
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

#[derive(Default)]
pub struct Stats {
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    compute_input: DurationStat,
    compute_infer: DurationStat,
    compute_output: DurationStat,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
}

impl Stats {
    /// One backend execution of a batch of `rows` rows.
    pub fn record_execution(&self, rows: u64) {
        self.inference_count.fetch_add(rows, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
    }

    /// One request's time in the queue.
    pub fn record_queue(&self, queue: Duration) {
        self.queue.record(queue);
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
        if ok { &self.success } else { &self.fail }.record(total);
        // Milliseconds are all Triton reports: the coarse clock's (see clock.rs).
        self.last_inference_ms
            .fetch_max(crate::clock::unix_ms(), Ordering::Relaxed);
    }

    pub fn snapshot(&self, name: &str, version: u64) -> StatsSnapshot {
        StatsSnapshot {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferenceStats {
                success: self.success.snapshot(),
                fail: self.fail.snapshot(),
                queue: self.queue.snapshot(),
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
}

//! What one run measured: outcomes and a latency histogram, mergeable across workers.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies up to one hour fit; anything longer saturates at the top bucket.
const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// Open loop only: arrivals not sent because too many requests were already in flight.
    pub dropped: u64,
    /// The earliest error, with when it happened so merged workers keep the true first one.
    pub first_error: Option<(Instant, String)>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            // Three significant digits: 0.1% resolution at any latency.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            ok: 0,
            errors: 0,
            dropped: 0,
            first_error: None,
        }
    }
}

impl Stats {
    pub fn record(&mut self, outcome: Result<(), String>, latency: Duration) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(us.max(1));
            }
            Err(message) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some((Instant::now(), message));
                }
            }
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.dropped += other.dropped;
        // Both histograms share the same bounds, so adding cannot fail; saturate if it ever did.
        if self.latency.add(&other.latency).is_err() {
            for v in other.latency.iter_recorded() {
                self.latency
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.first_error = match (self.first_error.take(), other.first_error) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_counts_and_earliest_error() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        b.record(Err("first".into()), Duration::ZERO);
        a.record(Ok(()), Duration::from_micros(100));
        a.record(Err("second".into()), Duration::ZERO);
        b.record(Ok(()), Duration::from_micros(300));
        a.merge(b);
        assert_eq!((a.ok, a.errors), (2, 2));
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.first_error.map(|e| e.1).as_deref(), Some("first"));
    }
}

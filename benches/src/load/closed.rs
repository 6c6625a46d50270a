//! Closed loop: a fixed number of workers, each sending its next request as soon as the last returns.

use std::time::{Duration, Instant};

use super::payload::DISTINCT_PAYLOADS;
use super::stats::Stats;
use super::target::Target;

/// Runs `concurrency` workers for `warmup + duration`; only requests sent after the warm-up count.
pub async fn run(
    target: Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
) -> Stats {
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| tokio::spawn(worker(target.clone(), w, measure_from, end, timeout)))
        .collect();
    let mut stats = Stats::default();
    for w in workers {
        match w.await {
            Ok(s) => stats.merge(s),
            // A worker only ends early by panicking; say so rather than hide it.
            Err(e) => stats.record(Err(format!("worker failed: {e}")), Duration::ZERO),
        }
    }
    stats
}

async fn worker(
    target: Target,
    id: usize,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
) -> Stats {
    let mut stats = Stats::default();
    // Workers start on different payloads so concurrent requests differ.
    let mut payload = id;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let outcome = target.send(id, payload % DISTINCT_PAYLOADS, timeout).await;
        if sent >= measure_from {
            stats.record(outcome, sent.elapsed());
        }
        payload += 1;
    }
    stats
}

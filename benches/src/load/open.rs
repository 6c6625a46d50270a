//! Open loop: Poisson arrivals at a fixed rate, each request its own task, so a slow answer never
//! delays the next arrival (no coordinated omission).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::payload::{DISTINCT_PAYLOADS, Rng};
use super::stats::Stats;
use super::target::Target;

pub struct OpenLoop {
    pub rate: f64,
    pub max_outstanding: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
}

impl OpenLoop {
    pub async fn run(&self, target: Target) -> Stats {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let permits = Arc::new(Semaphore::new(self.max_outstanding as usize));
        let mut rng = Rng::new(0x5EED);
        let start = Instant::now();
        let measure_from = start + self.warmup;
        let end = measure_from + self.duration;
        let mut dropped = 0;
        let mut arrival = start;
        let mut n = 0usize;
        // The clock check also bounds the loop if spawning cannot keep up with the schedule.
        while arrival < end && Instant::now() < end {
            if arrival > Instant::now() {
                tokio::time::sleep_until(arrival.into()).await;
            } else {
                // Behind schedule (timers tick in milliseconds): send the overdue arrivals at once,
                // but let other tasks run now and then.
                tokio::task::consume_budget().await;
            }
            let measured = arrival >= measure_from;
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (target, stats, timeout) = (target.clone(), stats.clone(), self.timeout);
                    // Latency counts from here, so time spent waiting for a runtime thread counts too.
                    let sent = Instant::now();
                    tokio::spawn(async move {
                        let outcome = target.send(n, n % DISTINCT_PAYLOADS, timeout).await;
                        if measured {
                            let elapsed = sent.elapsed();
                            let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
                            stats.record(outcome, elapsed);
                        }
                        drop(permit);
                    });
                }
                Err(_) if measured => dropped += 1,
                Err(_) => {}
            }
            n += 1;
            arrival += Duration::from_secs_f64(rng.next_exp(self.rate));
        }
        // Arrivals the loop had no time left to send (it fell behind the schedule) were dropped too.
        while arrival < end {
            if arrival >= measure_from {
                dropped += 1;
            }
            arrival += Duration::from_secs_f64(rng.next_exp(self.rate));
        }
        // Every request ends within its timeout, so this wait is bounded too.
        let _all_done = permits.acquire_many(self.max_outstanding).await;
        let mut stats = std::mem::take(&mut *stats.lock().unwrap_or_else(PoisonError::into_inner));
        stats.dropped = dropped;
        stats
    }
}

//! Per-thread cells for the metrics every request updates. A request used to add to a dozen counters,
//! gauges and histogram buckets shared by all threads, each a locked instruction on a cache line another
//! core had just written. Here each thread adds to its own shard, and a scrape adds the shards up.
//!
//! The first [`SHARDS`] - 1 threads to ask each own a shard: as its only writer a thread adds with a plain
//! load and store, no locked instruction at all. Later threads (a blocking pool's, tests') share the last
//! shard and add atomically. A reader may see one shard's update before another's; every cell it reads
//! is a whole value, and counters only grow.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Shards per cell set: tokio runs one worker per core, so up to 15 cores write without sharing.
pub const SHARDS: usize = 16;

/// The shard this thread writes, and whether it is that shard's only writer.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    pub index: usize,
    exclusive: bool,
}

impl Writer {
    pub fn this_thread() -> Writer {
        Writer::numbered(crate::per_thread::number())
    }

    fn numbered(n: usize) -> Writer {
        if n < SHARDS - 1 {
            Writer {
                index: n,
                exclusive: true,
            }
        } else {
            Writer {
                index: SHARDS - 1,
                exclusive: false,
            }
        }
    }

    pub fn add(self, cell: &AtomicU64, v: u64) {
        if self.exclusive {
            cell.store(cell.load(Relaxed).wrapping_add(v), Relaxed);
        } else {
            cell.fetch_add(v, Relaxed);
        }
    }

    pub fn add_signed(self, cell: &AtomicI64, v: i64) {
        if self.exclusive {
            cell.store(cell.load(Relaxed).wrapping_add(v), Relaxed);
        } else {
            cell.fetch_add(v, Relaxed);
        }
    }

    /// Raises `cell` to `v` if it is lower.
    pub fn max(self, cell: &AtomicU64, v: u64) {
        if self.exclusive {
            if cell.load(Relaxed) < v {
                cell.store(v, Relaxed);
            }
        } else {
            cell.fetch_max(v, Relaxed);
        }
    }

    /// Adds to an `f64` kept as its bits.
    pub fn add_f64(self, cell: &AtomicU64, v: f64) {
        let sum = |bits: u64| (f64::from_bits(bits) + v).to_bits();
        if self.exclusive {
            cell.store(sum(cell.load(Relaxed)), Relaxed);
        } else {
            let _ = cell.fetch_update(Relaxed, Relaxed, |bits| Some(sum(bits)));
        }
    }
}

/// One shard of a histogram with `N - 1` bucket bounds: a count per bucket (the last for values above
/// every bound, NaN included, as Prometheus's `+Inf`) and the sum of the values.
pub struct Hist<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Hist<N> {
    fn default() -> Self {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Hist<N> {
    /// `bounds`: the `N - 1` upper bounds, ascending (a value on a bound counts in its bucket).
    pub fn observe(&self, w: Writer, bounds: &[f64], v: f64) {
        debug_assert_eq!(bounds.len() + 1, N);
        let bucket = bounds.iter().position(|b| v <= *b).unwrap_or(N - 1);
        w.add(&self.buckets[bucket], 1);
        w.add_f64(&self.sum, v);
    }

    /// Adds this shard's counts (per bucket, not cumulative) and sum to `counts` and `sum`.
    pub fn add_to(&self, counts: &mut [u64; N], sum: &mut f64) {
        for (total, cell) in counts.iter_mut().zip(&self.buckets) {
            *total += cell.load(Relaxed);
        }
        *sum += f64::from_bits(self.sum.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_sharers_add_alike() {
        let owner = Writer::numbered(3);
        let sharer = Writer::numbered(SHARDS + 7);
        assert_eq!((owner.index, owner.exclusive), (3, true));
        assert_eq!((sharer.index, sharer.exclusive), (SHARDS - 1, false));
        assert_eq!(Writer::numbered(SHARDS - 1).index, SHARDS - 1);
        let cell = AtomicU64::new(0);
        owner.add(&cell, 2);
        sharer.add(&cell, 3);
        assert_eq!(cell.load(Relaxed), 5);
        let gauge = AtomicI64::new(0);
        owner.add_signed(&gauge, -4);
        sharer.add_signed(&gauge, 1);
        assert_eq!(gauge.load(Relaxed), -3);
        let top = AtomicU64::new(5);
        owner.max(&top, 3);
        sharer.max(&top, 4);
        assert_eq!(top.load(Relaxed), 5);
        owner.max(&top, 7);
        sharer.max(&top, 9);
        assert_eq!(top.load(Relaxed), 9);
        let sum = AtomicU64::new(0);
        owner.add_f64(&sum, 0.25);
        sharer.add_f64(&sum, 0.5);
        assert_eq!(f64::from_bits(sum.load(Relaxed)), 0.75);
    }

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_holds_them() {
        let bounds = [1.0, 2.0, 4.0];
        let h = Hist::<4>::default();
        let w = Writer::numbered(0);
        for v in [0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, f64::NAN, f64::INFINITY] {
            h.observe(w, &bounds, v);
        }
        let (mut counts, mut sum) = ([0; 4], 0.0);
        h.add_to(&mut counts, &mut sum);
        assert_eq!(counts, [2, 2, 2, 3]);
        assert!(sum.is_nan());
    }

    #[test]
    fn threads_beyond_the_owners_lose_no_update() {
        let cell = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        Writer::numbered(SHARDS + 1).add(&cell, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cell.load(Relaxed), 80_000);
    }
}

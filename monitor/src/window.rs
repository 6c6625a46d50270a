//! Time-based rolling windows made of sub-window buckets in a ring. Memory depends on the number
//! of buckets and bins, never on traffic; moving time forward empties the buckets that leave the
//! window (and subtracts them from the running totals).

use std::time::Duration;

/// A timestamp this far past the latest time seen is refused rather than trusted: one record
/// from a broken clock would otherwise move the window into the future and empty it for good.
pub(crate) const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// Why a timestamp has no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Older than the window.
    Late,
    /// More than [`MAX_AHEAD_MS`] past the latest time seen.
    Future,
}

/// Which ring slot a timestamp falls in, and which slots leave the window as time advances.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    width_ms: u64,
    len: u64,
    /// Absolute index (`time / width`) of the newest bucket.
    head: u64,
    /// Latest time seen, records or evaluations.
    now_ms: u64,
}

impl Clock {
    /// `buckets` must be at least 1 and `window` at least `buckets` milliseconds (checked by
    /// `MonitorConfig::validate`); smaller values are clamped rather than divided by zero.
    pub fn new(window: Duration, buckets: u32) -> Clock {
        let len = u64::from(buckets.max(1));
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Clock {
            width_ms: (window_ms / len).max(1),
            len,
            head: 0,
            now_ms: 0,
        }
    }

    pub fn buckets(&self) -> usize {
        self.len as usize
    }

    /// Moves the window forward to `time_ms` (never backwards), calling `evict` with each slot
    /// whose bucket leaves the window, before it is reused.
    pub fn advance(&mut self, time_ms: u64, mut evict: impl FnMut(usize)) {
        self.now_ms = self.now_ms.max(time_ms);
        let bucket = time_ms / self.width_ms;
        if bucket <= self.head {
            return;
        }
        // Only the last `len` new buckets matter: a longer gap empties the whole ring once.
        let first = (self.head + 1).max(bucket.saturating_add(1).saturating_sub(self.len));
        for b in first..=bucket {
            evict((b % self.len) as usize);
        }
        self.head = bucket;
    }

    /// The slot of `time_ms` after advancing to it.
    #[inline]
    pub fn place(&mut self, time_ms: u64, evict: impl FnMut(usize)) -> Result<usize, Refused> {
        if self.now_ms > 0 && time_ms > self.now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(Refused::Future);
        }
        self.advance(time_ms, evict);
        let bucket = time_ms / self.width_ms;
        if bucket.saturating_add(self.len) > self.head {
            Ok((bucket % self.len) as usize)
        } else {
            Err(Refused::Late)
        }
    }

    /// `(start, end)` in unix milliseconds: start of the oldest bucket, latest time seen.
    pub fn bounds(&self) -> (u64, u64) {
        let start = (self.head + 1).saturating_sub(self.len) * self.width_ms;
        (start, self.now_ms.max(start))
    }
}

/// Integer bin counts of every monitored column of one model version, per bucket.
pub(crate) struct DriftWindow {
    clock: Clock,
    /// Bins per bucket (all columns, laid out one after the other).
    stride: usize,
    /// The hot path increments only this: one count per value. Window totals are summed over the
    /// buckets when read (every evaluation), which costs buckets x stride additions there instead of
    /// a second increment per value here.
    counts: Vec<u64>,
    rows: Vec<u64>,
    /// Per bin, the counts of buckets already evicted: with the window's totals, every value ever
    /// counted, for the Prometheus bin counters.
    evicted: Vec<u64>,
    total_rows: u64,
    /// Floating-point sums per bucket (`sum_stride` each), e.g. distances of out-of-range
    /// values; totalled when read rather than kept running, so eviction never leaves rounding
    /// residue behind.
    sum_stride: usize,
    sums: Vec<f64>,
}

impl DriftWindow {
    pub fn new(window: Duration, buckets: u32, stride: usize, sum_stride: usize) -> DriftWindow {
        let clock = Clock::new(window, buckets);
        let n = clock.buckets();
        DriftWindow {
            clock,
            stride,
            counts: vec![0; n * stride],
            rows: vec![0; n],
            evicted: vec![0; stride],
            total_rows: 0,
            sum_stride,
            sums: vec![0.0; n * sum_stride],
        }
    }

    pub fn advance(&mut self, now_ms: u64) {
        let Self {
            clock,
            stride,
            counts,
            rows,
            evicted,
            total_rows,
            sum_stride,
            sums,
        } = self;
        clock.advance(now_ms, |slot| {
            evict(slot, *stride, counts, rows, evicted, total_rows);
            sums[slot * *sum_stride..(slot + 1) * *sum_stride].fill(0.0);
        });
    }

    /// Counts a row at `time_ms`; returns its slot for [`DriftWindow::add`].
    #[inline]
    pub fn add_row(&mut self, time_ms: u64) -> Result<usize, Refused> {
        self.add_rows(time_ms, 1)
    }

    /// Counts `n` rows at `time_ms`; returns their slot for [`DriftWindow::bucket_mut`].
    #[inline]
    pub fn add_rows(&mut self, time_ms: u64, n: u64) -> Result<usize, Refused> {
        let Self {
            clock,
            stride,
            counts,
            rows,
            evicted,
            total_rows,
            sum_stride,
            sums,
        } = self;
        let slot = clock.place(time_ms, |slot| {
            evict(slot, *stride, counts, rows, evicted, total_rows);
            sums[slot * *sum_stride..(slot + 1) * *sum_stride].fill(0.0);
        })?;
        rows[slot] += n;
        *total_rows += n;
        Ok(slot)
    }

    /// The lengths of a bucket's counts and sums (see [`DriftWindow::bucket_mut`]).
    pub fn bucket_len(&self) -> (usize, usize) {
        (self.stride, self.sum_stride)
    }

    /// The bin counts and sums of `slot`'s bucket, to count many values into without an index
    /// computation (and bounds check) per value.
    #[inline]
    pub fn bucket_mut(&mut self, slot: usize) -> (&mut [u64], &mut [f64]) {
        (
            &mut self.counts[slot * self.stride..(slot + 1) * self.stride],
            &mut self.sums[slot * self.sum_stride..(slot + 1) * self.sum_stride],
        )
    }

    /// Counts one value of the row placed in `slot` into bin `bin` (an index below `stride`).
    #[cfg(test)]
    pub fn add(&mut self, slot: usize, bin: usize) {
        self.counts[slot * self.stride + bin] += 1;
    }

    /// Adds `x` to sum `index` (below `sum_stride`) of the row placed in `slot`.
    #[cfg(test)]
    pub fn add_sum(&mut self, slot: usize, index: usize, x: f64) {
        self.sums[slot * self.sum_stride + index] += x;
    }

    /// Sum `index` over the whole window (bucket by bucket, oldest slot first).
    pub fn sum(&self, index: usize) -> f64 {
        self.sums
            .iter()
            .skip(index)
            .step_by(self.sum_stride.max(1))
            .sum()
    }

    /// Counts of every bin over the whole window.
    pub fn totals(&self) -> Vec<u64> {
        let mut totals = vec![0; self.stride];
        for bucket in self.counts.chunks_exact(self.stride.max(1)) {
            for (total, count) in totals.iter_mut().zip(bucket) {
                *total += count;
            }
        }
        totals
    }

    /// Counts of every bin since the window was made: those evicted plus the window's.
    pub fn counted(&self) -> Vec<u64> {
        let mut counted = self.totals();
        for (c, e) in counted.iter_mut().zip(&self.evicted) {
            *c += e;
        }
        counted
    }

    pub fn rows(&self) -> u64 {
        self.total_rows
    }

    pub fn bounds(&self) -> (u64, u64) {
        self.clock.bounds()
    }
}

fn evict(
    slot: usize,
    stride: usize,
    counts: &mut [u64],
    rows: &mut [u64],
    evicted: &mut [u64],
    total_rows: &mut u64,
) {
    let bucket = &mut counts[slot * stride..(slot + 1) * stride];
    for (gone, count) in evicted.iter_mut().zip(bucket.iter_mut()) {
        *gone += *count;
        *count = 0;
    }
    *total_rows -= rows[slot];
    rows[slot] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn window() -> DriftWindow {
        DriftWindow::new(Duration::from_secs(600), 10, 2, 1)
    }

    #[test]
    fn sliding_evicts_old_buckets() {
        let mut w = window();
        let t0 = 1_700_000_000_000 / MINUTE * MINUTE;
        for i in 0..10 {
            let slot = w.add_row(t0 + i * MINUTE).unwrap();
            w.add(slot, (i % 2) as usize);
            w.add_sum(slot, 0, 0.5);
        }
        assert_eq!(w.rows(), 10);
        assert_eq!(w.totals(), [5, 5]);
        assert_eq!(w.sum(0), 5.0);
        // One minute later the first bucket (bin 0) leaves.
        w.advance(t0 + 10 * MINUTE);
        assert_eq!(w.rows(), 9);
        assert_eq!(w.totals(), [4, 5]);
        assert_eq!(w.sum(0), 4.5);
        assert_eq!(w.bounds().0, t0 + MINUTE);
        // A long gap empties everything.
        w.advance(t0 + 1000 * MINUTE);
        assert_eq!(w.rows(), 0);
        assert_eq!(w.totals(), [0, 0]);
    }

    #[test]
    fn counted_keeps_what_eviction_took_from_the_window() {
        let mut w = window();
        let t0 = 1_700_000_000_000 / MINUTE * MINUTE;
        for i in 0..25 {
            let slot = w.add_row(t0 + i * MINUTE).unwrap();
            w.add(slot, (i % 2) as usize);
        }
        // Ten buckets of one minute: the window holds the last ten rows, counted holds all 25.
        assert_eq!(w.totals(), [5, 5]);
        assert_eq!(w.counted(), [13, 12]);
        w.advance(t0 + 1000 * MINUTE);
        assert_eq!(w.totals(), [0, 0]);
        assert_eq!(w.counted(), [13, 12]);
    }

    #[test]
    fn old_rows_are_refused_and_late_rows_in_window_accepted() {
        let mut w = window();
        let t0 = 100 * MINUTE;
        w.advance(t0);
        assert_eq!(w.add_row(t0 - 10 * MINUTE), Err(Refused::Late));
        let slot = w.add_row(t0 - 9 * MINUTE).unwrap();
        w.add(slot, 1);
        assert_eq!(w.totals(), [0, 1]);
        w.advance(t0 + MINUTE);
        assert_eq!(w.totals(), [0, 0]);
    }

    #[test]
    fn far_future_rows_are_refused() {
        let mut w = window();
        w.advance(100 * MINUTE);
        assert_eq!(
            w.add_row(100 * MINUTE + MAX_AHEAD_MS + 1),
            Err(Refused::Future)
        );
        assert!(w.add_row(100 * MINUTE + MAX_AHEAD_MS).is_ok());
        assert_eq!(w.add_row(u64::MAX), Err(Refused::Future));
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut w = window();
        let slot = w.add_row(50 * MINUTE).unwrap();
        w.add(slot, 0);
        w.advance(10 * MINUTE);
        assert_eq!(w.rows(), 1);
        assert_eq!(w.bounds(), (41 * MINUTE, 50 * MINUTE));
    }
}

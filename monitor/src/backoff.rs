//! Keel's one retry backoff: waits that double from a first delay up to a cap. Every path that retries
//! uses it with its own parameters: the server's repository (failed loads, unreachable registries),
//! its sidecar stream (reconnecting), and the webhook sender here (with [`jittered`] waits).

use std::time::Duration;

/// Waits that double from `initial` up to `max`. [`Backoff::delay`] is the pure rule, for callers that
/// count failures themselves; [`Backoff::next_delay`] and [`Backoff::reset`] count them here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// No failure counted yet; the first [`Backoff::next_delay`] is `initial` (at most `max`).
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The wait after `attempts` failures in a row (1 after the first; 0 counts as 1): `initial`
    /// doubled `attempts - 1` times, never more than `max`. Never overflows, whatever the values.
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// Counts one more failure and returns the wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures counted since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// `delay` times a random factor in `[1 - spread, 1 + spread)`, so that many clients that failed
/// together do not retry in step.
pub fn jittered(delay: Duration, spread: f64) -> Duration {
    delay.mul_f64((1.0 - spread) + fastrand::f64() * (2.0 * spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delay_doubles_from_the_first_up_to_the_cap() {
        let backoff = Backoff::new(MS(250), Duration::from_secs(5));
        assert_eq!(backoff.delay(0), MS(250), "0 counts as the first failure");
        assert_eq!(backoff.delay(1), MS(250));
        assert_eq!(backoff.delay(2), MS(500));
        assert_eq!(backoff.delay(3), MS(1000));
        assert_eq!(backoff.delay(5), MS(4000));
        assert_eq!(backoff.delay(6), Duration::from_secs(5));
        assert_eq!(backoff.delay(40), Duration::from_secs(5));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn delay_never_overflows_and_never_passes_the_cap() {
        let huge = Backoff::new(Duration::MAX, Duration::from_secs(300));
        assert_eq!(huge.delay(1), Duration::from_secs(300));
        assert_eq!(huge.delay(u32::MAX), Duration::from_secs(300));
        let uncapped = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert_eq!(uncapped.delay(32), Duration::from_secs(1 << 31));
        assert_eq!(uncapped.delay(u32::MAX), Duration::from_secs(1 << 31));
        let tiny = Backoff::new(Duration::from_nanos(1), Duration::from_secs(7200));
        assert_eq!(tiny.delay(31), Duration::from_nanos(1 << 30));
        let zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.delay(10), Duration::ZERO);
    }

    #[test]
    fn next_delay_counts_failures_and_reset_starts_over() {
        let mut backoff = Backoff::new(MS(250), Duration::from_secs(5));
        let waits: Vec<_> = (0..7).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 5000, 5000].map(MS).to_vec()
        );
        assert_eq!(backoff.failures(), 7);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.next_delay(), MS(250));
        assert_eq!(backoff.delay(3), MS(1000), "delay does not count");
        assert_eq!(backoff.failures(), 1);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let delay = Duration::from_secs(8);
        assert_eq!(jittered(delay, 0.0), delay);
        for _ in 0..1000 {
            let wait = jittered(delay, 0.25);
            assert!(
                wait >= Duration::from_secs(6) && wait < Duration::from_secs(10),
                "{wait:?}"
            );
        }
    }
}

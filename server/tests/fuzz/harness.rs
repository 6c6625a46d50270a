//! Harness: the runner of every target (`fuzz`), the heap measurement (`measured`) and its bound,
//! the triage switches, and how inputs of bytes are shown.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::{ALLOC, SERIAL, SLACK};

#[derive(Default)]
pub(crate) struct Stats {
    /// Calls of the property (generated cases, then shrinking steps); the first failing one.
    calls: AtomicU64,
    first_failure: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
    /// Largest peak/input ratio seen on inputs of at least 4 KiB, in thousandths.
    worst_milli: AtomicU64,
    worst_input: AtomicU64,
    worst_peak: AtomicU64,
}

impl Stats {
    pub(crate) fn outcome<T, E>(&self, r: &Result<T, E>) {
        match r {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.err.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Records the amplification and fails the case when `peak` is over `factor * input + SLACK`.
    pub(crate) fn bound(
        &self,
        what: &str,
        input: usize,
        peak: usize,
        factor: usize,
    ) -> Result<(), TestCaseError> {
        if input >= 4096 {
            let milli = (peak as u128 * 1000 / input as u128) as u64;
            if milli > self.worst_milli.fetch_max(milli, Ordering::Relaxed) {
                self.worst_input.store(input as u64, Ordering::Relaxed);
                self.worst_peak.store(peak as u64, Ordering::Relaxed);
            }
        }
        let limit = factor.saturating_mul(input).saturating_add(SLACK);
        if peak > limit && !bound_off() {
            return Err(TestCaseError::fail(format!(
                "{what}: allocated {peak} bytes at peak for {input} bytes of input, over the bound \
                 {factor} x input + {SLACK} = {limit} ({:.1}x)",
                peak as f64 / input.max(1) as f64
            )));
        }
        Ok(())
    }
}

/// `KEEL_FUZZ_BOUND=off` (triage only): report the amplification, do not fail on it, so a run can look
/// past a known over-allocation for other failures.
pub(crate) fn bound_off() -> bool {
    std::env::var("KEEL_FUZZ_BOUND").is_ok_and(|v| v == "off")
}

/// `KEEL_FUZZ_SKIP_KNOWN=1` (triage only): cases of a known, reported bug (a `fixed_*` test in main.rs) are
/// rejected instead of failing the target, so a long run goes on looking for other failures.
pub(crate) fn skip_known() -> bool {
    std::env::var("KEEL_FUZZ_SKIP_KNOWN").is_ok_and(|v| v == "1")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `f` and returns its result with the most heap it had live at once beyond what was live before.
pub(crate) fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let out = f();
    let peak = ALLOC.peak_usage().saturating_sub(base);
    (out, peak)
}

pub(crate) fn fuzz<S>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value, &Stats) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cases = env_u64("KEEL_FUZZ_CASES")
        .unwrap_or(256)
        .min(u32::MAX as u64) as u32;
    let seed = env_u64("KEEL_FUZZ_SEED").unwrap_or(0x6b65_656c);
    let mut seed_bytes = [0u8; 16];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    seed_bytes[8..].copy_from_slice(&(!seed).to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::XorShift, &seed_bytes);
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        max_global_rejects: 1 << 20,
        ..Config::default()
    };
    let stats = Stats::default();
    let mut runner = TestRunner::new_with_rng(config, rng);
    let start = Instant::now();
    let result = runner.run(&strategy, |case| {
        let call = stats.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let outcome = test(case, &stats);
        if matches!(outcome, Err(TestCaseError::Fail(_))) {
            let _ =
                stats
                    .first_failure
                    .compare_exchange(0, call, Ordering::Relaxed, Ordering::Relaxed);
        }
        outcome
    });
    let secs = start.elapsed().as_secs_f64();
    let worst = stats.worst_milli.load(Ordering::Relaxed) as f64 / 1000.0;
    let ran = match stats.first_failure.load(Ordering::Relaxed) {
        0 => format!("{cases} cases"),
        n => format!("failed at case {n} of {cases}"),
    };
    let calls = stats.calls.load(Ordering::Relaxed);
    eprintln!(
        "fuzz {name}: {ran} in {secs:.1} s ({:.0} cases/s), seed {seed}, {} accepted / {} refused, \
         worst amplification {worst:.2}x ({} B peak for {} B input)",
        calls as f64 / secs.max(1e-9),
        stats.ok.load(Ordering::Relaxed),
        stats.err.load(Ordering::Relaxed),
        stats.worst_peak.load(Ordering::Relaxed),
        stats.worst_input.load(Ordering::Relaxed),
    );
    if let Err(e) = result {
        panic!("fuzz target {name} failed (seed {seed}): {e}");
    }
}

/// Bytes shown exactly (as a Rust byte string), or only their length and origin when large.
#[derive(Clone)]
pub(crate) struct Bytes {
    pub(crate) bytes: Vec<u8>,
    pub(crate) origin: String,
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bytes;
        // A run of one short unit (what shrinking leaves of a bulk case) as `unit x count`.
        if let Some(p) = (1..=16).find(|&p| {
            b.len() > 64 && b.len().is_multiple_of(p) && b.chunks(p).all(|c| c == &b[..p])
        }) {
            return write!(f, "b\"{}\" x {}", b[..p].escape_ascii(), b.len() / p);
        }
        if self.bytes.len() <= 4096 {
            write!(f, "b\"{}\"", self.bytes.escape_ascii())
        } else {
            write!(f, "<{} bytes from {}>", self.bytes.len(), self.origin)
        }
    }
}

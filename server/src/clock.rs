//! Clock reads for times that need milliseconds, not nanoseconds: the prediction log's row times,
//! Triton's `last_inference`, and hyper's HTTP/2 keepalive bookkeeping. A precise read
//! (`Instant::now`, `SystemTime::now`) costs 20-25 ns on this virtual machine's TSC clock, and a request
//! took a dozen of them; these read the kernel's last tick instead (a few ns, at most one tick behind:
//! 4 ms at the usual `HZ=250`). Never ahead of the precise clock ([`unix_ms_precise`], a feedback's
//! time), so a prediction's time is never later than a feedback taken after it.

/// Milliseconds since the Unix epoch, as of the kernel's last tick.
pub fn unix_ms() -> u64 {
    let t = read(libc::CLOCK_REALTIME_COARSE);
    u64::try_from(t.tv_sec).map_or(0, |s| s * 1000 + nanos_ms(t.tv_nsec))
}

/// Milliseconds since the Unix epoch, read precisely: for times that [`unix_ms`]'s must never be after
/// (a feedback's, joined to predictions stamped by the coarse clock).
pub fn unix_ms_precise() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds on the monotonic clock (from an arbitrary start: only differences mean anything), as of
/// the kernel's last tick.
pub fn monotonic_ms() -> u64 {
    let t = read(libc::CLOCK_MONOTONIC_COARSE);
    u64::try_from(t.tv_sec).map_or(0, |s| s * 1000 + nanos_ms(t.tv_nsec))
}

/// An `Instant` at most a tick old: the last precise read on this thread, read again when the coarse
/// clock has moved on since. For bookkeeping that needs no better (HTTP/2 keepalive's time of the last
/// frame, read by hyper for every frame).
pub fn recent_instant() -> std::time::Instant {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<(u64, Instant)>> = const { Cell::new(None) };
    }
    let tick = monotonic_ms();
    LAST.with(|last| match last.get() {
        Some((at, instant)) if at == tick => instant,
        _ => {
            let now = Instant::now();
            last.set(Some((tick, now)));
            now
        }
    })
}

fn nanos_ms(nanos: libc::c_long) -> u64 {
    u64::try_from(nanos).map_or(0, |n| n / 1_000_000)
}

/// The only `unsafe` here: the C library's `clock_gettime` (FFI).
#[allow(unsafe_code)]
fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call; both coarse clocks exist on every Linux
    // since 2.6.32, and on failure `t` stays zero (read as the epoch, never a panic).
    unsafe {
        libc::clock_gettime(clock, &mut t);
    }
    t
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn coarse_clocks_follow_the_precise_ones_within_a_tick() {
        let before = super::unix_ms_precise();
        let coarse = super::unix_ms();
        let after = super::unix_ms_precise();
        // At most one tick (10 ms even at HZ=100) behind, never ahead.
        assert!(coarse <= after, "{coarse} > {after}");
        assert!(coarse + 10 >= before, "{coarse} << {before}");

        let start = super::monotonic_ms();
        let recent = super::recent_instant();
        std::thread::sleep(Duration::from_millis(50));
        // Upper bounds loose enough for a loaded test machine.
        let waited = super::monotonic_ms() - start;
        assert!((40..=500).contains(&waited), "{waited} ms");
        let later = super::recent_instant();
        assert!(later.duration_since(recent) >= Duration::from_millis(40));
        assert!(
            later.elapsed() <= Duration::from_millis(100),
            "{:?}",
            later.elapsed()
        );
    }
}

//! Giving memory back after a burst. mimalloc keeps each thread's freed pages for reuse, and pages freed
//! by another thread (a tensor decoded on a worker, dropped after the drain thread logged it) wait until
//! their owner next allocates. After an overload ends, most of that memory would stay resident until the
//! same threads see the same load again. So every thread that serves requests collects its heap when it
//! goes idle, at most once per [`EVERY`]: the cost (microseconds for a small heap) is paid off the hot path,
//! and an idle server's RSS returns close to its idle size.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections on one thread.
const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called when this thread has nothing to do (a runtime worker parking, an instance waiting for work).
pub fn idle() {
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|t| now.duration_since(t) >= EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// Frees this thread's empty pages, takes back the frees other threads left for it, and returns the
/// unused memory to the OS.
#[allow(unsafe_code)]
pub fn collect() {
    // SAFETY: mi_collect only walks the calling thread's own heap and the allocator's shared segments,
    // under mimalloc's own synchronization; it takes no pointers from us. Keel's global allocator is
    // mimalloc (main.rs), so this is the heap every Rust allocation on this thread comes from.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

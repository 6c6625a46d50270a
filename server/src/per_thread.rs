//! A number per thread, given out in turn on first use: state kept per thread in a fixed array
//! (the prediction log's chunk slots, the gathering flags) is indexed by it, so threads seldom share an
//! entry and none needs a map.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static NUMBER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's entry of an array of `len` (> 0): its number modulo `len`, so past `len` threads
/// some share one.
pub fn index(len: usize) -> usize {
    number() % len
}

/// This thread's number: 0 for the first thread that asks, then 1, 2, ...; never given twice.
pub fn number() -> usize {
    NUMBER.with(|number| {
        number.get().unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            number.set(Some(n));
            n
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_number_and_the_next_thread_gets_another() {
        let mine = index(usize::MAX);
        assert_eq!(index(usize::MAX), mine);
        let theirs = std::thread::spawn(|| index(usize::MAX)).join().unwrap();
        assert_ne!(theirs, mine);
        assert_eq!(index(4), mine % 4);
    }
}

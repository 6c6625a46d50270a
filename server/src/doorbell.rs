//! The doorbell the instance threads of a relayed version wait on (see [`crate::direct`]): rung only
//! when queued work needs a thread, where a thread blocked on the queue itself would be woken by every
//! request. Ringing costs a fence and a load while no thread sleeps.

use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Doorbell {
    state: Mutex<State>,
    wake: Condvar,
    /// Threads inside [`Doorbell::wait`]; a ring with none skips the lock.
    sleepers: AtomicUsize,
}

#[derive(Default)]
struct State {
    rung: bool,
    closed: bool,
}

/// Why [`Doorbell::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// Rung, or work was there already: look at the queue.
    Work,
    /// Nothing for `timeout`.
    Idle,
    /// The version is going away: drain the queue and stop.
    Closed,
}

impl Doorbell {
    /// Wakes one sleeping thread, after the caller queued work. A thread that is awake looks at the
    /// queue before it sleeps again (see [`Doorbell::wait`]), so with none asleep there is nothing to do.
    pub fn ring(&self) {
        // Pairs with the fence in `wait`: either this sees the sleeper counted, or it sees the work.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut state = self.lock();
        state.rung = true;
        self.wake.notify_one();
    }

    /// No more work will come: wakes every thread for good.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Sleeps until rung, closed, or `timeout`; returns at once when `ready` (the queue holds work).
    pub fn wait(&self, timeout: Duration, ready: impl Fn() -> bool) -> Woken {
        let mut state = self.lock();
        if state.closed {
            return Woken::Closed;
        }
        if std::mem::take(&mut state.rung) {
            return Woken::Work;
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let woken = if ready() {
            Woken::Work
        } else {
            // A ringer that saw this thread counted takes the lock, which this thread holds until the
            // wait below releases it: the notification cannot fall between the look and the sleep.
            let (next, result) = self
                .wake
                .wait_timeout_while(state, timeout, |s| !s.rung && !s.closed)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if state.closed {
                Woken::Closed
            } else if std::mem::take(&mut state.rung) {
                Woken::Work
            } else if result.timed_out() {
                Woken::Idle
            } else {
                Woken::Work
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        woken
    }

    /// Threads asleep (or about to sleep) in [`Doorbell::wait`].
    #[cfg(test)]
    pub(crate) fn sleepers(&self) -> usize {
        self.sleepers.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[test]
    fn work_already_there_needs_no_ring() {
        let bell = Doorbell::default();
        assert_eq!(bell.wait(Duration::from_secs(5), || true), Woken::Work);
        assert_eq!(bell.wait(Duration::from_millis(10), || false), Woken::Idle);
    }

    #[test]
    fn a_ring_wakes_a_sleeper_and_close_wakes_all() {
        let bell = Arc::new(Doorbell::default());
        let queued = Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (bell, queued) = (bell.clone(), queued.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let woken = bell.wait(Duration::from_secs(30), || queued.load(Ordering::SeqCst));
                (woken, start.elapsed())
            })
        };
        while bell.sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        queued.store(true, Ordering::SeqCst);
        bell.ring();
        let (woken, waited) = sleeper.join().unwrap();
        assert_eq!(woken, Woken::Work);
        assert!(waited < Duration::from_secs(30));

        // A bell of its own: the sleeper above may have seen the work before it slept, leaving the ring
        // for the next waiter, which would then return at once and never be counted as asleep.
        let bell = Arc::new(Doorbell::default());
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let bell = bell.clone();
                std::thread::spawn(move || bell.wait(Duration::from_secs(30), || false))
            })
            .collect();
        while bell.sleepers.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        bell.close();
        for s in sleepers {
            assert_eq!(s.join().unwrap(), Woken::Closed);
        }
        assert_eq!(bell.wait(Duration::from_secs(30), || true), Woken::Closed);
    }

    /// Many rings racing one sleeper that only sleeps while nothing is queued: every queued item is seen.
    #[test]
    fn no_work_is_left_sleeping() {
        let bell = Arc::new(Doorbell::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let taker = {
            let (bell, queued) = (bell.clone(), queued.clone());
            std::thread::spawn(move || {
                let mut taken = 0;
                while taken < 20_000 {
                    if queued.load(Ordering::SeqCst) > 0 {
                        queued.fetch_sub(1, Ordering::SeqCst);
                        taken += 1;
                        continue;
                    }
                    let woken = bell.wait(Duration::from_secs(30), || {
                        queued.load(Ordering::SeqCst) > 0
                    });
                    assert_eq!(woken, Woken::Work, "stranded after {taken}");
                }
            })
        };
        for _ in 0..20_000 {
            queued.fetch_add(1, Ordering::SeqCst);
            bell.ring();
        }
        taker.join().unwrap();
    }
}

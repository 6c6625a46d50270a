//! Which queued request relays a relayed version's queue (see [`crate::direct`]).
//!
//! A request of a relayed version queues, yields so that its worker's other ready requests queue
//! too (again while each round brings more, up to [`GATHER_ROUNDS`]), and then relays: computes what
//! is queued on an idle session. When every request did that, most of them, under load, found the
//! queue already taken by another and had paid a reschedule of their whole call for nothing, and the
//! requests that did relay each took the few that had queued on their own worker. Now the request
//! that queues while none on its thread is gathering becomes the gatherer: it yields and relays;
//! those queued meanwhile on the same thread only wait for their answers.
//! Measured at h2load 4 x 8 on the 2-core development VM: about 7 rows per backend call against 4, and
//! 10-17% less CPU per call (docs/performance.md).
//!
//! None is left behind. A request that sees a gatherer queued before it looked (a fence between), and
//! the gatherer clears its flag before its relay's fence and first look at the queue, so that look sees
//! the request, or a session holder's look after it does, as for any relayed request. A gatherer dropped
//! before its relay is done (its client went away) clears its flag and rings an instance thread for what
//! is queued.
//!
//! The flags are per thread (threads beyond [`FLAGS`] share them): a request waits on a gatherer of its
//! own worker, whose other tasks it waited behind anyway, never on a worker held up by a long task.

use std::sync::atomic::{AtomicBool, Ordering, fence};

use crate::doorbell::Doorbell;

/// The most rounds a gatherer yields for ([`crate::scheduler::Scheduler`]'s `gather`): it yields again
/// only while a round brought more requests. Measured on the 2-core development VM: at h2load 4 x 8,
/// 10.5 rows per backend call against 8 with one round and about 2% more calls/s; at wrk 32
/// connections 8.7 against 6.6, requests/s within the noise (docs/performance.md).
pub const GATHER_ROUNDS: usize = 4;

/// Threads with a flag of their own; the runtime has one worker per core by default.
const FLAGS: usize = 16;

/// A flag on its own cache line: each is written by its own thread's requests.
#[repr(align(128))]
#[derive(Default)]
struct Flag(AtomicBool);

/// A version's gathering flags, one per thread.
#[derive(Default)]
pub struct Gathering {
    flags: [Flag; FLAGS],
}

/// This thread's flag.
fn flag_index() -> usize {
    crate::per_thread::index(FLAGS)
}

impl Gathering {
    /// Called by a request after it queued: `Some` when it is to gather and relay, `None` when a
    /// gatherer of this thread will see it.
    pub fn start<'a>(&'a self, bell: Option<&'a Doorbell>) -> Option<Gatherer<'a>> {
        let flag = &self.flags[flag_index()].0;
        // Pairs with the fence after a gatherer clears its flag: either that gatherer's look at the
        // queue sees this request, or this sees the flag cleared and gathers itself.
        fence(Ordering::SeqCst);
        if flag.load(Ordering::SeqCst) || flag.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(Gatherer {
            flag,
            bell,
            holds_flag: true,
            relaying: true,
        })
    }
}

/// The gathering request's hold on its thread's flag, until its relay is done.
pub struct Gatherer<'a> {
    flag: &'a AtomicBool,
    bell: Option<&'a Doorbell>,
    holds_flag: bool,
    relaying: bool,
}

impl Gatherer<'_> {
    /// Gathering is over: requests queued from now on look after themselves. Called before the relay
    /// reads the queue.
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.holds_flag) {
            self.flag.store(false, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
    }

    /// The relay is done: what was queued before [`Gatherer::stop`] has been taken care of.
    pub fn relayed(mut self) {
        self.relaying = false;
    }
}

impl Drop for Gatherer<'_> {
    fn drop(&mut self) {
        if self.holds_flag {
            self.flag.store(false, Ordering::SeqCst);
        }
        if self.relaying
            && let Some(bell) = self.bell
        {
            bell.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doorbell::Woken;
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    #[test]
    fn one_gatherer_per_thread_until_it_stops() {
        let gathering = Gathering::default();
        let mut first = gathering.start(None).expect("the first request gathers");
        assert!(gathering.start(None).is_none(), "the next ones wait for it");
        // Another thread has a flag of its own, unless it shares this one (past `FLAGS` threads).
        let mine = flag_index();
        let (theirs, gathered) = std::thread::scope(|s| {
            s.spawn(|| (flag_index(), gathering.start(None).is_some()))
                .join()
                .unwrap()
        });
        assert_eq!(gathered, theirs != mine);
        first.stop();
        let second = gathering
            .start(None)
            .expect("after a stop, a request gathers again");
        assert!(gathering.start(None).is_none());
        first.relayed();
        second.relayed();
        assert!(
            gathering.start(None).is_some(),
            "a finished gatherer holds nothing"
        );
    }

    /// A thread asleep on `bell` for at most `timeout`.
    fn asleep(bell: &Arc<Doorbell>, timeout: Duration) -> JoinHandle<Woken> {
        let thread = {
            let bell = bell.clone();
            std::thread::spawn(move || bell.wait(timeout, || false))
        };
        while bell.sleepers() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        thread
    }

    /// A gatherer dropped before its relay finished (its client left) gives its flag back and rings an
    /// instance thread for the requests it would have computed; one that finished rings nobody.
    #[test]
    fn a_dropped_gatherer_rings_an_instance_thread() {
        let bell = Arc::new(Doorbell::default());
        let gathering = Gathering::default();
        let waiter = asleep(&bell, Duration::from_secs(30));
        drop(gathering.start(Some(&bell)).unwrap());
        assert_eq!(waiter.join().unwrap(), Woken::Work);

        let waiter = asleep(&bell, Duration::from_millis(200));
        let mut gatherer = gathering.start(Some(&bell)).expect("the flag came back");
        gatherer.stop();
        gatherer.relayed();
        assert_eq!(waiter.join().unwrap(), Woken::Idle, "nobody was rung");
    }
}

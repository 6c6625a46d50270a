//! Which queued request relays a relayed version's queue (see [`crate::direct`]), and where it queues.
//!
//! A request of a relayed version queues, yields so that its worker's other ready requests queue
//! too (again while rounds bring more: [`RELAYING`]), and then relays: computes what
//! is queued on an idle session. When every request did that, most of them, under load, found the
//! queue already taken by another and had paid a reschedule of their whole call for nothing, and the
//! requests that did relay each took the few that had queued on their own worker. Now the request
//! that queues while none on its thread is gathering becomes the gatherer: it yields and relays;
//! those queued meanwhile on the same thread only wait for their answers.
//! Measured at h2load 4 x 8 on the 2-core development VM: about 7 rows per backend call against 4, and
//! 10-17% less CPU per call (docs/performance.md).
//!
//! Each thread queues in a lane of its own, and a gatherer relays its own lane: with one queue for
//! all, a gatherer computed another thread's requests as well, and answering them woke their tasks
//! from across the cores. With each connection on one connection thread ([`crate::conn_threads`]), a
//! batch, its requests and their answers now stay on that thread. (On the shared multi-threaded
//! runtime, where tokio moves tasks between workers anyway, the lanes alone measured no change:
//! docs/performance.md.) Another lane's requests are taken only when no gatherer of theirs is coming
//! (its flag is clear): by a session holder after its run, or an instance thread.
//!
//! None is left behind. A request that sees a gatherer queued before it looked (a fence between), and
//! the gatherer clears its flag before its relay's fence and first look at its lane, so that look sees
//! the request, or a session holder's look after it does (the holder sees the flag clear, as for any
//! relayed request). A gatherer dropped before its relay is done (its client went away) clears its
//! flag and rings an instance thread for what is queued.
//!
//! The lanes are per thread (threads beyond [`LANES`] share them): a request waits on a gatherer of
//! its own worker, whose other tasks it waited behind anyway, never on a worker held up by a long task.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

use crossbeam_channel::{Receiver, Sender};

use crate::doorbell::Doorbell;
use crate::scheduler::Pending;

/// How long a gatherer waits ([`crate::scheduler::Scheduler`]'s `gather`): at most `rounds` yields,
/// stopping once `idle` rounds in a row brought no request.
pub struct Patience {
    pub rounds: usize,
    pub idle: usize,
}

/// A gatherer that relays the queue itself. Requests come in spurts (a client sends its next request
/// as each answer reaches it), so a round without a new one often comes just before the next few: it
/// waits for two such rounds. Measured on the 2-core development VM, wrk 32 connections on two
/// connection threads: 10.6-10.8 rows per backend call against 8.5 when the first such round ended the
/// wait, 5.4-5.5% more requests/s (medians of two runs of six alternated pairs); h2load 4 x 8 within
/// the noise (+1.6% and -2.3%). Three or four such rounds measured no better than two
/// (docs/performance.md).
pub const RELAYING: Patience = Patience { rounds: 8, idle: 2 };

/// A gatherer whose request an instance thread will take (too large to relay, or the model's cost
/// not known yet). It holds a queue place while it waits, and others are refused for it when the
/// queue is full, so it stops at the first round without a request. At h2load 4 x 8 (before the
/// connection threads) one round gave 10.5 rows per backend call against 8 without it.
pub const RINGING: Patience = Patience { rounds: 4, idle: 1 };

/// Threads with a lane of their own; the runtime has one worker per core by default.
pub const LANES: usize = 16;
const _: () = assert!(
    LANES <= u32::BITS as usize,
    "a bit of `Gathering::used` per lane"
);

/// The most requests a lane holds; more go to the version's shared queue, which every relay reads too.
/// Together the lanes hold no more than the default `max_queue_size` (1024), so requests that timed out
/// in a lane (they stay until a relay skips them) hold no more memory than in the shared queue.
const LANE_MAX: usize = 64;

/// One thread's lane: its gathering flag (on a cache line of its own: written by its own thread's
/// requests) and its queue.
#[repr(align(128))]
struct Lane {
    gathering: AtomicBool,
    tx: Sender<Pending>,
    rx: Receiver<Pending>,
}

/// A version's lanes, one per thread.
pub struct Gathering {
    lanes: Box<[Lane]>,
    /// Bit `i` set once lane `i` has held a request: the looks at other lanes skip the rest (with two
    /// connection threads, 14 of the 16 lanes are never used, and probing each empty one cost about
    /// 60 instructions, some 900 per request: `benches/instructions.py`). Set before the request is
    /// sent, so a look after a fence that would find the request finds its bit too.
    used: AtomicU32,
}

impl Default for Gathering {
    fn default() -> Self {
        let lanes = (0..LANES)
            .map(|_| {
                // Unbounded: a lane's blocks are made as it fills, so idle lanes hold no slots;
                // `LANE_MAX` bounds it.
                let (tx, rx) = crossbeam_channel::unbounded();
                Lane {
                    gathering: AtomicBool::new(false),
                    tx,
                    rx,
                }
            })
            .collect();
        Gathering {
            lanes,
            used: AtomicU32::new(0),
        }
    }
}

/// This thread's lane.
pub fn lane() -> usize {
    crate::per_thread::index(LANES)
}

impl Gathering {
    /// Queues `p` in `lane`, or gives it back when the lane is full.
    pub fn queue(&self, lane: usize, p: Pending) -> Result<(), Pending> {
        let bit = 1 << lane;
        let lane = &self.lanes[lane];
        if lane.rx.len() >= LANE_MAX {
            return Err(p);
        }
        if self.used.load(Ordering::Relaxed) & bit == 0 {
            self.used.fetch_or(bit, Ordering::SeqCst);
        }
        // The lane holds its own receiver: never disconnected.
        lane.tx.send(p).map_err(|e| e.into_inner())
    }

    /// Requests queued in `lane`.
    pub fn len(&self, lane: usize) -> usize {
        self.lanes[lane].rx.len()
    }

    /// The next request of `lane`.
    pub fn take_own(&self, lane: usize) -> Option<Pending> {
        self.lanes[lane].rx.try_recv().ok()
    }

    /// The lanes that have held a request, with their numbers.
    fn used(&self) -> impl Iterator<Item = (usize, &Lane)> {
        let mut bits = self.used.load(Ordering::SeqCst);
        std::iter::from_fn(move || {
            let i = bits.trailing_zeros() as usize;
            bits &= bits.checked_sub(1)?;
            Some((i, &self.lanes[i]))
        })
    }

    /// The next request of another lane than `own` that no gatherer of its own will relay.
    pub fn take_unattended(&self, own: usize) -> Option<Pending> {
        self.used()
            .filter(|&(i, lane)| i != own && !lane.gathering.load(Ordering::SeqCst))
            .find_map(|(_, lane)| lane.rx.try_recv().ok())
    }

    /// The next request of any lane (an instance thread's look).
    pub fn take_any(&self) -> Option<Pending> {
        self.used().find_map(|(_, lane)| lane.rx.try_recv().ok())
    }

    /// Whether every lane is empty.
    pub fn is_empty(&self) -> bool {
        self.used().all(|(_, lane)| lane.rx.is_empty())
    }

    /// Whether a relay of `own` has nothing to take: its lane is empty, and so is every other whose
    /// gatherer is not coming.
    pub fn none_for(&self, own: usize) -> bool {
        self.used().all(|(i, lane)| {
            lane.rx.is_empty() || (i != own && lane.gathering.load(Ordering::SeqCst))
        })
    }

    /// Called by a request after it queued in `lane`: `Some` when it is to gather and relay, `None`
    /// when a gatherer of this lane will see it.
    pub fn start<'a>(&'a self, lane: usize, bell: Option<&'a Doorbell>) -> Option<Gatherer<'a>> {
        let flag = &self.lanes[lane].gathering;
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

/// The gathering request's hold on its lane's flag, until its relay is done.
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
        let mut first = gathering
            .start(lane(), None)
            .expect("the first request gathers");
        assert!(
            gathering.start(lane(), None).is_none(),
            "the next ones wait for it"
        );
        // Another thread has a lane of its own, unless it shares this one (past `LANES` threads).
        let mine = lane();
        let (theirs, gathered) = std::thread::scope(|s| {
            s.spawn(|| (lane(), gathering.start(lane(), None).is_some()))
                .join()
                .unwrap()
        });
        assert_eq!(gathered, theirs != mine);
        first.stop();
        let second = gathering
            .start(lane(), None)
            .expect("after a stop, a request gathers again");
        assert!(gathering.start(lane(), None).is_none());
        first.relayed();
        second.relayed();
        assert!(
            gathering.start(lane(), None).is_some(),
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
        drop(gathering.start(lane(), Some(&bell)).unwrap());
        assert_eq!(waiter.join().unwrap(), Woken::Work);

        let waiter = asleep(&bell, Duration::from_millis(200));
        let mut gatherer = gathering
            .start(lane(), Some(&bell))
            .expect("the flag came back");
        gatherer.stop();
        gatherer.relayed();
        assert_eq!(waiter.join().unwrap(), Woken::Idle, "nobody was rung");
    }
}

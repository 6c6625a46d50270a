//! A connection's request timers, lent to its requests (`--request-timeout`, gRPC's `grpc-timeout`).
//!
//! A timer per request puts an entry into the runtime's timer wheel and takes it out again for every
//! request: 0.7-1.9 µs of CPU per HTTP request at 32 connections, and 1-5% of gRPC calls/s at h2load
//! 4 x 8 (`--request-timeout 0` against the default). So a connection keeps the timers its requests
//! used, still armed: a request borrows one at the first poll that finds it unanswered and gives it back
//! when it ends. A borrowed timer set for an earlier request fires no later than this one's deadline
//! under the same limit (the earlier request started first); when it fires early it is moved once to
//! the right time. A timer set later than the deadline (a shorter client deadline) is moved first.
//! Under steady traffic that is one timer update per timer per `--request-timeout`, not two per
//! request. An HTTP/1.1 connection answers one request at a time, so it keeps one timer; an HTTP/2
//! connection keeps as many as it had calls waiting at once, at most [`KEPT`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// The most timers a connection keeps; a call that ends while as many are kept drops its own.
pub const KEPT: usize = 64;

/// A connection's idle timers.
#[derive(Clone, Default)]
pub struct ConnTimer(Arc<Mutex<Vec<Pin<Box<Sleep>>>>>);

/// A request's borrowed timer, if it has one yet.
pub type Slot = Option<Pin<Box<Sleep>>>;

impl ConnTimer {
    /// Ready once `due` has passed; the timer is borrowed into `slot` at the first call.
    pub fn poll_due(&self, slot: &mut Slot, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match slot {
            Some(timer) => timer,
            None => {
                let timer = match self.take() {
                    Some(mut timer) => {
                        if timer.deadline() > due {
                            timer.as_mut().reset(due);
                        }
                        timer
                    }
                    None => Box::pin(tokio::time::sleep_until(due)),
                };
                slot.insert(timer)
            }
        };
        loop {
            match timer.as_mut().poll(cx) {
                // Armed for an earlier request: moved once to this one's deadline.
                Poll::Ready(()) if timer.deadline() < due => timer.as_mut().reset(due),
                Poll::Ready(()) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Gives `slot`'s timer back to the connection, still armed.
    pub fn give_back(&self, slot: &mut Slot) {
        if let Some(timer) = slot.take() {
            let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() < KEPT {
                kept.push(timer);
            }
        }
    }

    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    /// Timers kept now.
    #[cfg(test)]
    pub fn kept(&self) -> Vec<Instant> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().map(|t| t.deadline()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{ConnTimer, KEPT, Slot};

    /// Waits for `due` on a timer borrowed from `conn`, then gives it back.
    async fn wait(conn: &ConnTimer, due: Instant) {
        let mut slot: Slot = None;
        poll_fn(|cx| conn.poll_due(&mut slot, due, cx)).await;
        conn.give_back(&mut slot);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_each_get_their_own_deadline_and_the_timers_are_kept() {
        let conn = ConnTimer::default();
        let start = Instant::now();
        let limit = Duration::from_secs(60);
        // Three requests waiting at once: three timers, each firing at its own deadline.
        let dues = [0, 1, 2].map(|s| start + limit + Duration::from_secs(s));
        let waits = dues.map(|due| {
            let conn = conn.clone();
            tokio::spawn(async move {
                wait(&conn, due).await;
                Instant::now()
            })
        });
        for (wait, due) in waits.into_iter().zip(dues) {
            assert_eq!(wait.await.unwrap(), due);
        }
        assert_eq!(conn.kept().len(), 3);
        // Later requests borrow the kept timers (all fired, set for earlier requests) and still end
        // exactly at their own deadlines.
        let start = Instant::now();
        let later = [5, 3].map(|s| {
            let conn = conn.clone();
            let due = start + Duration::from_secs(s);
            tokio::spawn(async move {
                wait(&conn, due).await;
                (Instant::now(), due)
            })
        });
        for wait in later {
            let (ended, due) = wait.await.unwrap();
            assert_eq!(ended, due);
        }
        assert_eq!(conn.kept().len(), 3, "borrowed, not made");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_set_later_than_a_deadline_is_moved_to_it() {
        let conn = ConnTimer::default();
        let start = Instant::now();
        // A request answered before its 60 s deadline leaves a timer armed for it.
        let mut slot: Slot = None;
        let far = start + Duration::from_secs(60);
        assert!(
            poll_fn(|cx| std::task::Poll::Ready(conn.poll_due(&mut slot, far, cx).is_pending()))
                .await
        );
        conn.give_back(&mut slot);
        assert_eq!(conn.kept(), vec![far]);
        // A call with a 50 ms client deadline borrows it and still ends at 50 ms.
        let near = start + Duration::from_millis(50);
        wait(&conn, near).await;
        assert_eq!(Instant::now(), near);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_keeps_at_most_kept_timers() {
        let conn = ConnTimer::default();
        let due = Instant::now() + Duration::from_secs(1);
        let mut slots: Vec<Slot> = (0..KEPT + 10).map(|_| None).collect();
        for slot in &mut slots {
            let pending =
                poll_fn(|cx| std::task::Poll::Ready(conn.poll_due(slot, due, cx).is_pending()))
                    .await;
            assert!(pending);
        }
        for slot in &mut slots {
            conn.give_back(slot);
        }
        assert_eq!(conn.kept().len(), KEPT);
    }
}

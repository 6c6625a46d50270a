//! A connection served until it ends or the server stops, then finished gracefully (the request in
//! hand answered, no new one read), for the HTTP and gRPC loops alike.
//!
//! A `select!` between the connection and the stop signal polled the signal's future, and drew a
//! random branch order, at every wake-up of the connection: three times per HTTP request, about 900
//! instructions of Keel's ~58,000 per request (callgrind, docs/performance.md). Here the signal's
//! future registers the task's waker at its first poll and is polled again only once the signal has
//! changed, which a cloned receiver tells with one atomic load. A task's waker stays valid for the
//! task's life, so the registration made at the first poll still wakes it when the signal comes.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::sync::watch;

/// Drives `served` to its end; once `stopped` turns true (or its sender is gone), calls `graceful` on
/// it and drives it to its end from there. Returns the connection's own result either way. The signal
/// is meant to change once, to true: a change to false leaves the stop future to notice the next one.
pub async fn serve_until_stopped<F: Future>(
    mut served: Pin<&mut F>,
    mut stopped: watch::Receiver<bool>,
    graceful: impl FnOnce(Pin<&mut F>),
) -> F::Output {
    let mut probe = stopped.clone();
    let stop = stopped.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let mut armed = false;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = served.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if !armed || probe.has_changed().unwrap_or(true) {
            armed = true;
            probe.mark_unchanged();
            // The value is read too: the sender bumps the version before it notifies, and a stop
            // future polled in between is not notified yet. Marked seen, the change would not make
            // this poll it again when the notification wakes the task.
            if stop.as_mut().poll(cx).is_ready() || *probe.borrow() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    match ended {
        Some(output) => output,
        None => {
            graceful(served.as_mut());
            served.await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::Context;

    use super::*;

    /// A connection that wakes itself `wakes` times, then waits until `graceful` is called and ends
    /// one poll later; `polls` counts its polls.
    struct Busy {
        wakes: usize,
        graceful: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
        ends: Option<&'static str>,
    }

    impl Future for Busy {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if let Some(done) = self.ends {
                return Poll::Ready(done);
            }
            if self.graceful.load(Ordering::SeqCst) {
                return Poll::Ready("finished");
            }
            if self.wakes > 0 {
                self.wakes -= 1;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    fn busy(wakes: usize, ends: Option<&'static str>) -> (Busy, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let graceful = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let conn = Busy {
            wakes,
            graceful: graceful.clone(),
            polls: polls.clone(),
            ends,
        };
        (conn, graceful, polls)
    }

    /// `conn` served until `rx` stops it, on a task of its own.
    fn serving(conn: Busy, rx: watch::Receiver<bool>) -> tokio::task::JoinHandle<&'static str> {
        tokio::spawn(async move {
            tokio::pin!(conn);
            serve_until_stopped(conn, rx, |c| c.graceful.store(true, Ordering::SeqCst)).await
        })
    }

    #[tokio::test]
    async fn a_connection_that_ends_gives_its_result_without_a_graceful_stop() {
        let (_tx, rx) = watch::channel(false);
        let (conn, graceful, _) = busy(3, Some("closed"));
        tokio::pin!(conn);
        let out = serve_until_stopped(conn, rx, |c| c.graceful.store(true, Ordering::SeqCst)).await;
        assert_eq!(out, "closed");
        assert!(!graceful.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_stop_after_many_wake_ups_still_finishes_the_connection_gracefully() {
        let (tx, rx) = watch::channel(false);
        let (conn, graceful, polls) = busy(100, None);
        let flag = graceful.clone();
        let task = serving(conn, rx);
        // Let the connection wake itself through all its wake-ups; then it sleeps until the signal.
        while polls.load(Ordering::SeqCst) < 101 {
            tokio::task::yield_now().await;
        }
        assert!(!flag.load(Ordering::SeqCst));
        tx.send(true).unwrap();
        assert_eq!(task.await.unwrap(), "finished");
        assert!(flag.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_signal_that_stays_false_does_not_stop_the_connection() {
        let (tx, rx) = watch::channel(false);
        let (conn, graceful, polls) = busy(0, None);
        let task = serving(conn, rx);
        while polls.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        tx.send(false).unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!task.is_finished());
        assert!(!graceful.load(Ordering::SeqCst));
        tx.send(true).unwrap();
        assert_eq!(task.await.unwrap(), "finished");
    }

    #[tokio::test]
    async fn a_stop_signalled_before_the_connection_starts_or_a_dropped_sender_stops_it() {
        let (tx, rx) = watch::channel(true);
        let (conn, graceful, _) = busy(0, None);
        tokio::pin!(conn);
        let out = serve_until_stopped(conn, rx, |c| c.graceful.store(true, Ordering::SeqCst)).await;
        assert_eq!(out, "finished");
        assert!(graceful.load(Ordering::SeqCst));
        drop(tx);

        let (tx, rx) = watch::channel(false);
        let (conn, graceful, _) = busy(0, None);
        drop(tx);
        tokio::pin!(conn);
        let out = serve_until_stopped(conn, rx, |c| c.graceful.store(true, Ordering::SeqCst)).await;
        assert_eq!(out, "finished");
        assert!(graceful.load(Ordering::SeqCst));
    }

    /// A stop sent while the connection is being polled on another thread is never missed. The signal's
    /// version is bumped before its waiters are notified: a poll in between saw the change, marked it
    /// seen, found the stop future not yet notified, and then slept through the notification (a SIGTERM
    /// that left a gRPC connection open until the shutdown deadline: 7 in 40 runs beside a busy core).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_sent_while_the_connection_is_polled_elsewhere_is_never_missed() {
        for round in 0..2000 {
            let (tx, rx) = watch::channel(false);
            // Wakes itself at every poll: polled over and over on the other worker.
            let (conn, _, polls) = busy(usize::MAX, None);
            let task = serving(conn, rx);
            while polls.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
            tx.send(true).unwrap();
            let out = tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the stop was missed"));
            assert_eq!(out.unwrap(), "finished");
        }
    }
}

//! The request deadline (`--request-timeout`) on one timer per connection.
//!
//! `tokio::time::timeout` per request puts an entry into the runtime's timer wheel and takes it out again
//! for every request: 0.7-1.9 µs of CPU per request at 32 connections (wrk, `--request-timeout 0`
//! against the default). An HTTP/1.1 connection answers one request at a time, so its requests share one
//! timer that stays armed: a request borrows it, and when it fires before that request's deadline
//! (it was set for an earlier request) it is moved once to the right time. Under steady traffic that is
//! one timer update per connection per `--request-timeout`, not two per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A connection's timer, lent to one request at a time.
#[derive(Clone, Default)]
pub struct ConnTimer(Arc<Mutex<Option<Pin<Box<Sleep>>>>>);

impl ConnTimer {
    /// `future`, cut short at `due`.
    pub fn limit<F: Future>(&self, future: F, due: Instant) -> WithDeadline<F> {
        WithDeadline {
            future,
            due,
            conn: self.clone(),
            timer: None,
        }
    }

    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn give_back(&self, timer: Pin<Box<Sleep>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(timer);
    }
}

/// The deadline passed before the request was answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A request's future and its deadline ([`ConnTimer::limit`]).
    pub struct WithDeadline<F> {
        #[pin]
        future: F,
        due: Instant,
        conn: ConnTimer,
        // Borrowed from the connection at the first poll that finds the request unanswered.
        timer: Option<Pin<Box<Sleep>>>,
    }

    impl<F> PinnedDrop for WithDeadline<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(timer) = this.timer.take() {
                this.conn.give_back(timer);
            }
        }
    }
}

impl<F: Future> Future for WithDeadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let due = *this.due;
        let timer = match this.timer {
            Some(timer) => timer,
            None => {
                let timer = match this.conn.take() {
                    // Armed for an earlier request, so never later than this one's deadline.
                    Some(timer) => timer,
                    None => Box::pin(tokio::time::sleep_until(due)),
                };
                this.timer.insert(timer)
            }
        };
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) if timer.deadline() < due => timer.as_mut().reset(due),
                Poll::Ready(()) => return Poll::Ready(Err(Elapsed)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{ConnTimer, Elapsed};

    #[tokio::test(start_paused = true)]
    async fn requests_on_one_connection_share_its_timer_and_each_gets_its_own_deadline() {
        let conn = ConnTimer::default();
        let limit = Duration::from_secs(60);
        // Answered at once: the timer is never made.
        let quick = conn.limit(async { 1 }, Instant::now() + limit).await;
        assert_eq!(quick, Ok(1));
        assert!(conn.take().is_none());
        // Answered after a while: the timer is made, then kept by the connection.
        let start = Instant::now();
        let slow = conn.limit(tokio::time::sleep(Duration::from_secs(5)), start + limit);
        assert_eq!(slow.await, Ok(()));
        let kept = conn.take().expect("the connection keeps its timer");
        assert_eq!(kept.deadline(), start + limit);
        conn.give_back(kept);
        // A later request borrows the timer armed for the first one: when it fires, 5 s early for this
        // request, it moves to this request's deadline, and the request ends exactly there.
        let start = Instant::now();
        let stuck = conn.limit(std::future::pending::<()>(), start + limit);
        assert_eq!(stuck.await, Err(Elapsed));
        assert_eq!(Instant::now() - start, limit);
        // A request that ends within its deadline after the timer moved.
        let start = Instant::now();
        let within = conn.limit(
            tokio::time::sleep(limit - Duration::from_millis(1)),
            start + limit,
        );
        assert_eq!(within.await, Ok(()));
        assert_eq!(Instant::now() - start, limit - Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_unanswered_gives_the_timer_back() {
        let conn = ConnTimer::default();
        let due = Instant::now() + Duration::from_secs(1);
        let mut request = Box::pin(conn.limit(std::future::pending::<()>(), due));
        assert!(futures_poll_once(request.as_mut()).await.is_none());
        assert!(conn.take().is_none(), "lent to the request");
        drop(request);
        assert_eq!(conn.take().expect("given back").deadline(), due);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}

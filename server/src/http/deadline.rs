//! The request deadline (`--request-timeout`) on the connection's timer ([`crate::conn_timer`]): an
//! HTTP/1.1 connection answers one request at a time, so its requests share one timer that stays armed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

pub use crate::conn_timer::ConnTimer;
use crate::conn_timer::Slot;

/// `future`, cut short at `due` by one of `conn`'s timers.
pub fn limit<F: Future>(conn: &ConnTimer, future: F, due: Instant) -> WithDeadline<F> {
    WithDeadline {
        future,
        due,
        conn: conn.clone(),
        timer: None,
    }
}

/// The deadline passed before the request was answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A request's future and its deadline ([`limit`]).
    pub struct WithDeadline<F> {
        #[pin]
        future: F,
        due: Instant,
        conn: ConnTimer,
        // Borrowed from the connection at the first poll that finds the request unanswered.
        timer: Slot,
    }

    impl<F> PinnedDrop for WithDeadline<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.conn.give_back(this.timer);
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
        this.conn
            .poll_due(this.timer, *this.due, cx)
            .map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{ConnTimer, Elapsed, limit};

    #[tokio::test(start_paused = true)]
    async fn requests_on_one_connection_share_its_timer_and_each_gets_its_own_deadline() {
        let conn = ConnTimer::default();
        let max = Duration::from_secs(60);
        // Answered at once: the timer is never made.
        let quick = limit(&conn, async { 1 }, Instant::now() + max).await;
        assert_eq!(quick, Ok(1));
        assert!(conn.kept().is_empty());
        // Answered after a while: the timer is made, then kept by the connection.
        let start = Instant::now();
        let slow = limit(
            &conn,
            tokio::time::sleep(Duration::from_secs(5)),
            start + max,
        );
        assert_eq!(slow.await, Ok(()));
        assert_eq!(
            conn.kept(),
            vec![start + max],
            "the connection keeps its timer"
        );
        // A later request borrows the timer armed for the first one: when it fires, 5 s early for this
        // request, it moves to this request's deadline, and the request ends exactly there.
        let start = Instant::now();
        let stuck = limit(&conn, std::future::pending::<()>(), start + max);
        assert_eq!(stuck.await, Err(Elapsed));
        assert_eq!(Instant::now() - start, max);
        // A request that ends within its deadline after the timer moved.
        let start = Instant::now();
        let within = limit(
            &conn,
            tokio::time::sleep(max - Duration::from_millis(1)),
            start + max,
        );
        assert_eq!(within.await, Ok(()));
        assert_eq!(Instant::now() - start, max - Duration::from_millis(1));
        assert_eq!(
            conn.kept().len(),
            1,
            "one timer, borrowed by each request in turn"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_unanswered_gives_the_timer_back() {
        let conn = ConnTimer::default();
        let due = Instant::now() + Duration::from_secs(1);
        let mut request = Box::pin(limit(&conn, std::future::pending::<()>(), due));
        assert!(futures_poll_once(request.as_mut()).await.is_none());
        assert!(conn.kept().is_empty(), "lent to the request");
        drop(request);
        assert_eq!(conn.kept(), vec![due], "given back");
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

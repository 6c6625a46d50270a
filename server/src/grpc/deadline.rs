//! Deadlines on gRPC calls: `--request-timeout`, and the client's own deadline (the `grpc-timeout`
//! header), whichever comes first. A call whose handler has not answered by then gets DEADLINE_EXCEEDED,
//! as gRPC's own servers say (tonic's built-in timeout, which Keel's server no longer runs, answered
//! CANCELLED). For ModelStreamInfer the handler answers as soon as the stream is set up, so neither
//! cuts a stream short. The calls of a connection borrow its timers ([`crate::conn_timer`]): one made
//! per call was 1-5% of the calls served per second at h2load 4 x 8. [`DeadlineLayer`] is applied per
//! connection, so each has its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, Request, Response};
use tokio::time::Instant;

use crate::conn_timer::{ConnTimer, Slot};

#[derive(Clone, Copy)]
pub struct DeadlineLayer {
    /// `--request-timeout`; `None`: only the client's deadline applies.
    limit: Option<Duration>,
}

impl DeadlineLayer {
    pub fn new(limit: Option<Duration>) -> Self {
        DeadlineLayer { limit }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    /// A new set of timers: one layer per connection.
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limit: self.limit,
            timers: ConnTimer::default(),
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Option<Duration>,
    /// The connection's, shared by the clones its calls are served with.
    timers: ConnTimer,
}

/// Whose deadline cut a call short.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cause {
    Server(Duration),
    Client(Duration),
}

impl<S, B, RB> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let cause = match (self.limit, client_timeout(request.headers())) {
            (Some(server), Some(client)) if client < server => Some(Cause::Client(client)),
            (Some(server), _) => Some(Cause::Server(server)),
            (None, client) => client.map(Cause::Client),
        };
        let due = cause.map(|c| match c {
            Cause::Server(d) | Cause::Client(d) => (Instant::now() + d, c, self.timers.clone()),
        });
        DeadlineFuture {
            call: self.inner.call(request),
            due,
            timer: None,
        }
    }
}

/// The client's deadline from `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, `H` `M` `S`
/// `m` `u` `n`). A malformed value is ignored, as tonic ignored it.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// The call's future with its deadline, unboxed: boxing it cost an allocation and a move of
    /// tonic's future per call.
    pub struct DeadlineFuture<F> {
        #[pin]
        call: F,
        // With the connection's timers, where there is a deadline.
        due: Option<(Instant, Cause, ConnTimer)>,
        // Borrowed from the connection at the first poll that finds the call unanswered.
        timer: Slot,
    }

    impl<F> PinnedDrop for DeadlineFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((_, _, conn)) = this.due {
                conn.give_back(this.timer);
            }
        }
    }
}

impl<F, RB, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Default,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.call.poll(cx) {
            return Poll::Ready(result);
        }
        let Some((due, cause, conn)) = this.due else {
            return Poll::Pending;
        };
        if conn.poll_due(this.timer, *due, cx).is_pending() {
            return Poll::Pending;
        }
        let message = match *cause {
            Cause::Client(d) => format!(
                "the client's deadline (grpc-timeout, {} s) passed",
                d.as_secs_f64()
            ),
            Cause::Server(d) => format!(
                "the call took longer than {} s (--request-timeout)",
                d.as_secs_f64()
            ),
        };
        Poll::Ready(Ok(tonic::Status::deadline_exceeded(message).into_http()))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use axum::http::{HeaderMap, HeaderValue, Request, Response};
    use tower::{Layer, ServiceExt};

    use super::{DeadlineLayer, client_timeout};

    #[test]
    fn grpc_timeout_values_are_read_as_the_protocol_spells_them() {
        let read = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            client_timeout(&h)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("10S"), Some(Duration::from_secs(10)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(client_timeout(&HeaderMap::new()), None);
    }

    /// A handler that never answers: whichever deadline comes first ends the call with
    /// DEADLINE_EXCEEDED (grpc-status 4), naming whose it was.
    #[tokio::test(start_paused = true)]
    async fn the_earlier_of_the_server_limit_and_the_client_deadline_ends_a_call() {
        let never = tower::service_fn(|_: Request<()>| async {
            std::future::pending::<Result<Response<String>, Infallible>>().await
        });
        let call = |limit: Option<Duration>, header: Option<&'static str>| {
            let svc = DeadlineLayer::new(limit).layer(never);
            let mut request = Request::new(());
            if let Some(v) = header {
                request
                    .headers_mut()
                    .insert("grpc-timeout", HeaderValue::from_static(v));
            }
            async move {
                let start = tokio::time::Instant::now();
                let response = svc.oneshot(request).await.unwrap();
                let status = response.headers()["grpc-status"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let message = response.headers()["grpc-message"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                (start.elapsed(), status, message)
            }
        };
        let (took, status, message) = call(Some(Duration::from_secs(60)), Some("50m")).await;
        assert_eq!((took, status.as_str()), (Duration::from_millis(50), "4"));
        assert!(message.contains("grpc-timeout"), "{message}");
        let (took, status, message) = call(Some(Duration::from_secs(1)), Some("5S")).await;
        assert_eq!((took, status.as_str()), (Duration::from_secs(1), "4"));
        assert!(message.contains("request-timeout"), "{message}");
        let (took, _, message) = call(None, Some("2S")).await;
        assert_eq!(took, Duration::from_secs(2));
        assert!(message.contains("grpc-timeout"), "{message}");
        // No deadline at all: the call waits.
        let svc = DeadlineLayer::new(None).layer(never);
        let waited =
            tokio::time::timeout(Duration::from_secs(3600), svc.oneshot(Request::new(()))).await;
        assert!(waited.is_err());
    }

    /// The calls of one connection (one layer, its service cloned per call as hyper serves them) share
    /// its timers: calls waiting at once each end at their own deadline, and later calls borrow the
    /// timers kept, one with a shorter client deadline too.
    #[tokio::test(start_paused = true)]
    async fn a_connections_calls_share_its_timers_and_keep_their_own_deadlines() {
        let answer_after = tower::service_fn(|request: Request<Duration>| async move {
            tokio::time::sleep(*request.body()).await;
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let svc = DeadlineLayer::new(Some(Duration::from_secs(60))).layer(answer_after);
        let call = |wait: u64, header: Option<&'static str>| {
            let svc = svc.clone();
            let mut request = Request::new(Duration::from_secs(wait));
            if let Some(v) = header {
                request
                    .headers_mut()
                    .insert("grpc-timeout", HeaderValue::from_static(v));
            }
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let response = svc.oneshot(request).await.unwrap();
                let status = response
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
                (start.elapsed(), status)
            })
        };
        let secs = Duration::from_secs;
        // Three at once: two answered in time, one past the server's limit.
        let calls = [call(1, None), call(2, None), call(90, None)];
        let mut ended = Vec::new();
        for c in calls {
            ended.push(c.await.unwrap());
        }
        assert_eq!(
            ended,
            [
                (secs(1), None),
                (secs(2), None),
                (secs(60), Some("4".to_owned()))
            ]
        );
        assert_eq!(svc.timers.kept().len(), 3, "one timer per waiting call");
        // Later calls borrow them, each still ending at its own deadline.
        let (took, status) = call(90, Some("50m")).await.unwrap();
        assert_eq!(
            (took, status.as_deref()),
            (Duration::from_millis(50), Some("4"))
        );
        assert_eq!(call(5, None).await.unwrap(), (secs(5), None));
        let (took, status) = call(90, None).await.unwrap();
        assert_eq!((took, status.as_deref()), (secs(60), Some("4")));
        assert_eq!(svc.timers.kept().len(), 3, "borrowed, none made");
    }
}

//! The HTTP/1.1 server loop: hyper connections over [`Incoming`], each with its read deadlines, a body
//! deadline per request, and a graceful stop. axum's own `serve` has none of these, so an attacker could
//! hold connections open forever with half a header.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::{Frame, Incoming as IncomingBody, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::deadline::ConnTimer;
use crate::conn_stop::serve_until_stopped;
use crate::conn_threads::{self, ConnThreads};
use crate::listener::{Accepted, Activity, BusyGuard, Incoming};

/// What answers a connection's requests: a router as it is (the metrics server), or Keel's API router
/// with what surrounds it ([`super::Edge`]).
pub trait Answer: Clone + Send + Sync + 'static {
    /// `timer`: the connection's, for a request deadline; `arrived`: when its headers were read (one
    /// clock read for the body's and the request's deadlines and a refused request's time).
    fn answer(
        self,
        request: Request<Body>,
        timer: ConnTimer,
        arrived: Instant,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl Answer for axum::Router {
    async fn answer(self, request: Request<Body>, _: ConnTimer, _: Instant) -> Response<Body> {
        match self.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

impl Answer for super::Edge {
    fn answer(
        self,
        request: Request<Body>,
        timer: ConnTimer,
        arrived: Instant,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.call(request, timer, arrived)
    }
}

/// Serves `answer` on every connection of `incoming` until `stopped`; then closes idle connections at
/// once, lets the others finish their request, and returns when all have closed. The caller bounds that
/// wait with the shutdown deadline.
pub async fn serve(
    mut incoming: Incoming,
    answer: impl Answer,
    body_timeout: Option<Duration>,
    threads: Option<Arc<ConnThreads>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let for_connections = stopped.clone();
    loop {
        tokio::select! {
            conn = incoming.next() => match conn {
                Some(accepted) => {
                    let task = connection(accepted, answer.clone(), body_timeout, for_connections.clone());
                    conn_threads::spawn(threads.as_deref(), &mut connections, task);
                }
                None => break,
            },
            _ = stopped.wait_for(|stop| *stop) => break,
            // Reap finished connections so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(incoming);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    accepted: Accepted,
    answer: impl Answer,
    body_timeout: Option<Duration>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(conn) = accepted.establish_unless(&mut stopped).await else {
        return;
    };
    let activity = conn.activity().clone();
    let timer = ConnTimer::default();
    let service = hyper::service::service_fn(move |request: Request<IncomingBody>| {
        let busy = activity.begin();
        let answer = answer.clone();
        let timer = timer.clone();
        async move {
            let arrived = Instant::now();
            let request = request.map(|body| {
                let activity = busy.activity().clone();
                Body::new(DeadlineBody::new(body, body_timeout, arrived, activity))
            });
            let mut response = answer.answer(request, timer, arrived).await;
            if busy.activity().take_unread_body() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response.map(|body| GuardedBody { body, _busy: busy }))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let ended = serve_until_stopped(served, stopped, |served| served.graceful_shutdown()).await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection closed");
    }
}

/// A request body that must arrive whole within its deadline (counted from the request's headers).
struct DeadlineBody {
    body: IncomingBody,
    timeout: Option<Duration>,
    start: Instant,
    /// Made only when the body does not arrive with its headers (the common small request never needs it).
    timer: Option<Pin<Box<Sleep>>>,
    /// Told when the body is dropped before its end.
    activity: Arc<Activity>,
    /// Read to its end (a chunked body's length is never known to be zero before).
    ended: bool,
}

impl DeadlineBody {
    fn new(
        body: IncomingBody,
        timeout: Option<Duration>,
        start: Instant,
        activity: Arc<Activity>,
    ) -> Self {
        DeadlineBody {
            body,
            timeout,
            start,
            timer: None,
            activity,
            ended: false,
        }
    }
}

impl Drop for DeadlineBody {
    fn drop(&mut self) {
        if !self.ended && !self.body.is_end_stream() {
            self.activity.note_unread_body();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} s (--body-read-timeout)")]
struct BodyTimeout(f64);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let Some(timeout) = this.timeout else {
                    return Poll::Pending;
                };
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(this.start + timeout))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(BodyTimeout(timeout.as_secs_f64()).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its connection marked busy until it has been written (or dropped), so a
/// slow reader of a large response is not taken for an idle connection.
struct GuardedBody {
    body: Body,
    _busy: BusyGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

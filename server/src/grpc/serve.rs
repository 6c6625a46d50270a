//! The gRPC server loop: hyper's HTTP/2 connections over [`Incoming`], each serving Keel's layers and
//! the inference service, and a graceful stop.
//!
//! tonic's `Server` puts more around every call: its router (an axum router, for Keel's one service),
//! its error-recovery and `grpc-timeout` layers, a tracing span and the connection's address as a
//! request extension. At h2load 4 x 8 that measured about 2.7 µs of worker CPU per call (24.4 µs against
//! 27.1, 9% more calls a second). Keel has one service and answers `grpc-timeout` itself
//! ([`super::deadline`]), so the service is served on hyper directly, with the HTTP/2 settings tonic
//! gave hyper.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, Response};
use hyper::body::Incoming as IncomingBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};

use super::deadline::DeadlineLayer;

use crate::conn_stop::serve_until_stopped;
use crate::conn_threads::{self, ConnThreads};
use crate::listener::{Accepted, Incoming};

/// What tonic's `Server` defaulted to where Keel sets nothing: hyper's own HTTP/2 defaults, and 20 s for a
/// keep-alive ping's answer.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 settings of the gRPC port, and the calls' deadline.
#[derive(Clone, Copy)]
pub struct Http2 {
    pub max_concurrent_streams: u32,
    /// A ping after this long without frames; the connection closes when the ping is not answered
    /// within as long again. `None`: no pings.
    pub keepalive: Option<Duration>,
    /// `--request-timeout` and `grpc-timeout`, laid on each connection's calls with the connection's
    /// own timers; `None`: no deadlines (keel-canned).
    pub deadline: Option<DeadlineLayer>,
}

/// Serves `service` on every connection of `incoming` until `stopped`; then stops accepting, lets every
/// connection finish the calls it has (new streams are refused), and returns when all have closed.
pub async fn serve<S>(
    mut incoming: Incoming,
    service: S,
    http2: Http2,
    threads: Option<Arc<ConnThreads>>,
    mut stopped: watch::Receiver<bool>,
) where
    S: Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(KeepaliveTimer(TokioTimer::new()))
        .max_concurrent_streams(http2.max_concurrent_streams.max(1))
        .keep_alive_interval(http2.keepalive)
        .keep_alive_timeout(http2.keepalive.unwrap_or(KEEPALIVE_TIMEOUT));
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    let for_connections = stopped.clone();
    loop {
        tokio::select! {
            conn = incoming.next() => match conn {
                Some(accepted) => {
                    let service = tower::util::option_layer(http2.deadline).layer(service.clone());
                    let task = connection(accepted, builder.clone(), service, for_connections.clone());
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

async fn connection<S>(
    accepted: Accepted,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    mut stopped: watch::Receiver<bool>,
) where
    S: Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Some(conn) = accepted.establish_unless(&mut stopped).await else {
        return;
    };
    let service =
        service.map_request(|request: Request<IncomingBody>| request.map(tonic::body::Body::new));
    let served = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
    tokio::pin!(served);
    let ended = serve_until_stopped(served, stopped, |served| served.graceful_shutdown()).await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "gRPC connection closed");
    }
}

/// hyper's timer for keepalive pings, with tokio's sleeps. hyper reads the time for every frame it
/// receives (the keepalive ping is due an interval after the last): a clock read a tick old does for
/// an interval of seconds and costs a few ns instead of tens (see clock.rs). Keel does not turn on
/// hyper's adaptive window, the one use that would need better.
#[derive(Clone)]
struct KeepaliveTimer(TokioTimer);

impl hyper::rt::Timer for KeepaliveTimer {
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.sleep(duration)
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.sleep_until(deadline)
    }

    fn reset(
        &self,
        sleep: &mut std::pin::Pin<Box<dyn hyper::rt::Sleep>>,
        deadline: std::time::Instant,
    ) {
        self.0.reset(sleep, deadline)
    }

    fn now(&self) -> std::time::Instant {
        crate::clock::recent_instant()
    }
}

//! Accepting connections for the HTTP and gRPC front ends: plain TCP, or TLS when a certificate is
//! configured. Each listener holds at most `max_connections` open connections (more wait in the
//! kernel's backlog). The accept loop hands each socket on as it is ([`Accepted`]); the task that serves
//! it registers it with its own runtime (a connection thread's, see [`crate::conn_threads`]) and runs
//! the TLS handshake there, with a deadline, so a slow or silent client never holds up the accept loop,
//! and a plain-text client of a TLS listener fails its handshake and is closed.
//!
//! Every connection carries read deadlines ([`Activity`]): a client must send a request's headers within
//! the header timeout of connecting or of its first byte after an idle spell, and an HTTP/1.1 keep-alive
//! connection may stay idle between requests for the idle timeout. The deadline is checked where the
//! server waits for bytes, so an expired connection costs nothing until it is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use crate::tls::{Protocol, Tls};

/// Accepted connections waiting for the server to take them.
const BACKLOG: usize = 128;

/// Limits on one listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// Time to send a request's headers (and to finish a TLS handshake); `None`: no limit.
    pub header: Option<Duration>,
    /// Time an HTTP/1.1 connection may sit idle between requests; `None`: no limit.
    pub idle: Option<Duration>,
    pub protocol: Protocol,
}

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// Where a connection is in its request cycle, for its read deadline.
///
/// HTTP/1.1: waiting for headers (from connect, or from the first byte after idling), busy (a request
/// in the handler or its response being written: no deadline, the handler's own limits apply), idle
/// between requests. gRPC: waiting for its first bytes, then busy for good (HTTP/2 keepalive pings and
/// stream limits take over).
pub struct Activity {
    state: AtomicU8,
    /// Milliseconds since `origin` at the last change of state.
    since: AtomicU64,
    busy: AtomicU32,
    /// Set when a request's body was dropped before its end: its response must close the connection.
    unread_body: AtomicBool,
    origin: Instant,
    limits: ConnLimits,
}

impl Activity {
    fn new(limits: ConnLimits) -> Self {
        Activity {
            state: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            busy: AtomicU32::new(0),
            unread_body: AtomicBool::new(false),
            origin: Instant::now(),
            limits,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, state: u8) {
        self.since.store(self.now_ms(), Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
    }

    /// Bytes arrived.
    fn on_bytes(&self) {
        match (self.limits.protocol, self.state.load(Ordering::Acquire)) {
            (Protocol::Http, IDLE) => self.set(HEAD),
            (Protocol::Grpc, HEAD) => self.set(BUSY),
            _ => {}
        }
    }

    /// A request reached the handler; the returned guard marks its response as written when dropped.
    pub fn begin(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.state.store(BUSY, Ordering::Release);
        BusyGuard(self.clone())
    }

    /// A request's body was dropped before its end (a refusal from its headers, say): hyper closes the
    /// connection after the response, which must say so (see [`Activity::take_unread_body`]).
    pub fn note_unread_body(&self) {
        self.unread_body.store(true, Ordering::Relaxed);
    }

    /// Whether the request just answered left its body unread; clears it. Its response then carries
    /// `Connection: close`: otherwise a client takes the connection back to its pool and may send its
    /// next request into the close (reqwest: `IncompleteMessage`).
    pub fn take_unread_body(&self) -> bool {
        self.unread_body.swap(false, Ordering::Relaxed)
    }

    /// When the connection expires if no byte arrives.
    fn deadline(&self) -> Option<Instant> {
        let limit = match self.state.load(Ordering::Acquire) {
            HEAD => self.limits.header?,
            IDLE => self.limits.idle?,
            _ => return None,
        };
        Some(self.origin + Duration::from_millis(self.since.load(Ordering::Relaxed)) + limit)
    }
}

pub struct BusyGuard(Arc<Activity>);

impl BusyGuard {
    /// The connection's activity.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.0
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        // No wake-up: the connection's timer is armed for the idle deadline this starts (see
        // `Conn::poll_busy`).
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.set(IDLE);
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection: its stream, its read deadline, and its place among the listener's
/// `max_connections`.
pub struct Conn {
    io: Io,
    activity: Arc<Activity>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker `timer` was last polled with: a busy connection's read need not poll it again (a
    /// timer's poll clones the waker) while it is armed for the same task.
    armed_for: Option<Waker>,
    /// Set once this side has shut down writing (see [`AsyncWrite::poll_shutdown`]).
    linger: Option<Linger>,
    _permit: OwnedSemaphorePermit,
}

/// A lingering close: after its last bytes and FIN, the connection reads (and discards) what the
/// client still sends, until the client closes too, goes quiet for [`LINGER_QUIET`], or
/// [`LINGER_MAX`] has passed. Closing a socket with unread bytes makes the kernel send a reset, and a
/// reset can destroy the response just sent: a gRPC client that had acknowledged the response's data
/// (a WINDOW_UPDATE the server never read) lost its trailers this way when Keel closed the connection
/// at shutdown, and the answered request failed with UNAVAILABLE.
struct Linger {
    until: tokio::time::Instant,
    quiet: Pin<Box<Sleep>>,
}

/// How long a lingering close waits for more bytes after the last ones.
const LINGER_QUIET: Duration = Duration::from_millis(500);
/// The longest a lingering close takes.
const LINGER_MAX: Duration = Duration::from_secs(2);

impl Conn {
    fn new(io: Io, limits: ConnLimits, permit: OwnedSemaphorePermit) -> Self {
        Conn {
            io,
            activity: Arc::new(Activity::new(limits)),
            timer: None,
            armed_for: None,
            linger: None,
            _permit: permit,
        }
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Pending until the connection's deadline, if it has one; then an error that closes it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(deadline) = self.activity.deadline() else {
            return self.poll_busy(cx);
        };
        // The idle deadline moves later with every request; moving the timer with it would cost a timer
        // wheel update per request. A later deadline keeps the timer where it is: when that fires early,
        // it is re-armed once. Only an earlier deadline (headers now due) moves it at once.
        self.note_waker(cx);
        let timer = match &mut self.timer {
            Some(timer) => {
                if deadline < timer.deadline() {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) if timer.deadline() < deadline => {
                    timer.as_mut().reset(deadline);
                }
                Poll::Ready(()) => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within its read deadline",
                    ));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// No deadline now: a request in the handler or its response being written (or a gRPC connection,
    /// busy for good). An HTTP/1.1 connection turns idle when its response is written, and then no byte
    /// may ever come to poll it again and start its idle deadline. Its timer stays armed no later than
    /// that deadline can be (the idle limit from now), so that the timer polls it: re-armed when it
    /// fires while still busy (once per idle limit of a long request), moved to the idle deadline when
    /// it fires early. This replaced a wake-up at the end of every request, which cost each request a
    /// second poll of its connection.
    fn poll_busy(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limits = &self.activity.limits;
        let (Protocol::Http, Some(idle)) = (limits.protocol, limits.idle) else {
            return Poll::Pending;
        };
        // Set for headers or idling, which began before now: no later than the idle limit from now,
        // unless the header limit is the longer.
        let may_be_late = limits.header.is_some_and(|header| header > idle);
        let same_task = self
            .armed_for
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if same_task && !may_be_late && self.timer.as_ref().is_some_and(|timer| !timer.is_elapsed())
        {
            return Poll::Pending;
        }
        self.note_waker(cx);
        let timer = match &mut self.timer {
            Some(timer) => {
                if may_be_late {
                    let soonest = Instant::now() + idle;
                    if soonest < timer.deadline() {
                        timer.as_mut().reset(soonest);
                    }
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(Instant::now() + idle))),
        };
        while timer.as_mut().poll(cx).is_ready() {
            timer.as_mut().reset(Instant::now() + idle);
        }
        Poll::Pending
    }

    /// Records the task about to poll `timer` (a clone only when the task changed: the TLS handshake
    /// runs in another task than the connection).
    fn note_waker(&mut self, cx: &Context<'_>) {
        if !self
            .armed_for
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.armed_for = Some(cx.waker().clone());
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Shuts down writing, then lingers (see [`Linger`]); ready when the connection may be closed.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            std::task::ready!(match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            })?;
            let now = tokio::time::Instant::now();
            this.linger = Some(Linger {
                until: now + LINGER_MAX,
                quiet: Box::pin(tokio::time::sleep_until(now + LINGER_QUIET)),
            });
        }
        let Some(linger) = &mut this.linger else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            let polled = match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_read(cx, &mut buf),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut buf),
            };
            match polled {
                // More bytes: discarded, and the quiet spell starts again (within the limit).
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let again = (tokio::time::Instant::now() + LINGER_QUIET).min(linger.until);
                    linger.quiet.as_mut().reset(again);
                }
                // The client closed too (or the connection broke): nothing left to reset.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        linger.quiet.as_mut().poll(cx).map(Ok)
    }
}

/// An accepted socket, not yet bound to a runtime: [`Accepted::establish`] makes it a [`Conn`] on the
/// runtime that serves it.
pub struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Tls>>,
    limits: ConnLimits,
    permit: OwnedSemaphorePermit,
}

impl Accepted {
    /// Registers the socket with this thread's runtime and, on a TLS listener, completes the handshake
    /// within the header limit; `None` when that fails (the socket is closed).
    pub async fn establish(self) -> Option<Conn> {
        let Accepted {
            tcp,
            peer,
            tls,
            limits,
            permit,
        } = self;
        let tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot register an accepted connection");
                return None;
            }
        };
        let Some(tls) = tls else {
            return Some(Conn::new(Io::Plain(tcp), limits, permit));
        };
        let acceptor = tls.acceptor(limits.protocol);
        let handshake = limits.header.unwrap_or(Duration::from_secs(3600));
        match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Some(Conn::new(Io::Tls(Box::new(stream)), limits, permit)),
            Ok(Err(e)) => {
                tls.handshake_failed();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tls.handshake_failed();
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// [`Accepted::establish`], given up if `stopped` turns true first: a stopping server does not wait
    /// for handshakes.
    pub async fn establish_unless(self, stopped: &mut watch::Receiver<bool>) -> Option<Conn> {
        tokio::select! {
            conn = self.establish() => conn,
            Ok(_) = stopped.wait_for(|stop| *stop) => None,
        }
    }
}

/// A listener's accepted connections. Dropping it stops the accept loop and closes the listening socket.
pub struct Incoming {
    rx: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl Incoming {
    /// Starts accepting on `listener` until `stopped` turns true or the `Incoming` is dropped.
    pub fn spawn(
        listener: TcpListener,
        tls: Option<Arc<Tls>>,
        limits: ConnLimits,
        stopped: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(accept_loop(listener, tls, limits, tx, stopped));
        Ok(Incoming { rx, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection; `None` once the listener has stopped.
    pub async fn next(&mut self) -> Option<Accepted> {
        self.rx.recv().await
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    limits: ConnLimits,
    tx: mpsc::Sender<Accepted>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // At the limit, stop accepting: further clients wait in the kernel's backlog, not in memory.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
            _ = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Small responses must leave at once, not wait on Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        // Off this runtime's reactor: the task serving it registers it with its own.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot take an accepted connection");
                continue;
            }
        };
        let accepted = Accepted {
            tcp,
            peer,
            tls: tls.clone(),
            limits,
            permit,
        };
        if tx.send(accepted).await.is_err() {
            return;
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;

//! Streaming to a `keel monitor` sidecar over gRPC. The drain thread hands messages over without
//! waiting; a task keeps one client stream open, reconnecting with backoff. While the sidecar is away,
//! rows are dropped and counted, and on reconnect the latest retirements and every serving version's
//! spec are sent first, so a restarted sidecar resumes monitoring on its own and one that stayed up
//! drops versions retired while the stream was down.
//!
//! With `--monitor-token(-file)` each connection presents `authorization: Bearer <token>`, the file
//! read again at every connection (a rotated Secret is picked up). A sidecar that refuses the token
//! (UNAUTHENTICATED) is an outage like an unreachable one: logged once, rows dropped and counted,
//! retried with backoff. Rows are held back for a moment after each connection until the sidecar
//! has had time to refuse it, so rows refused with the stream are counted, not lost silently.
//!
//! Batches go as messages of about 1 MiB ([`CHUNK_BYTES`]), none above the sidecar's 16 MiB limit;
//! a row that alone exceeds it is dropped and counted (`reason="too_large"`). Messages waiting
//! (for the stream, or in it for tonic to take) hold at most [`QUEUE_BYTES`]; beyond that the
//! sidecar is too slow and rows are dropped and counted (`sidecar_unavailable`). Messages left when
//! a stream breaks are counted as `sidecar_unavailable`, those left when the task is stopped at the
//! shutdown deadline as `shutdown`. Only messages tonic already took onto a connection that then
//! breaks (at most an HTTP/2 window) are lost uncounted: the stream has no acknowledgements.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use keel_monitor::auth::ClientToken;
use keel_monitor::backoff::Backoff;
use keel_monitor::outbound::{redact_url, warn_if_credentials_exposed};
use keel_monitor::sidecar::convert::{
    CHUNK_BYTES, Chunked, MAX_SENT_MESSAGE_BYTES, feedback_messages, records_messages,
    retire_message, spec_message,
};
use keel_monitor::sidecar::pb::monitor_service_client::MonitorServiceClient;
use keel_monitor::sidecar::pb::{MonitorMessage, StreamSummary};
use keel_monitor::{FeedbackRecord, ModelSpec, PredictionRecord};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::drain::count_by_model;
use crate::prediction_log::reason;

/// Messages waiting for the stream; beyond this the sidecar is too slow and rows are dropped.
const QUEUE_MESSAGES: usize = 1024;
/// Bytes of messages waiting for the stream or in it: the client's memory bound.
pub const QUEUE_BYTES: usize = 32 << 20;
/// Messages handed to a stream that tonic has not taken yet.
const STREAM_MESSAGES: usize = 16;
/// Waits between reconnection attempts: doubling from the first up to the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a new stream must stay open before rows go on it: a sidecar refuses a token at once.
const SETTLE: Duration = Duration::from_millis(500);

type Specs = Arc<Mutex<BTreeMap<(String, u64), MonitorMessage>>>;

/// The latest retirements, resent on every (re)connection with the specs: one sent while the
/// stream was broken would otherwise be lost, and a sidecar that stayed up would keep the retired
/// version's drift series. Retiring an unknown version is a no-op there, so resending is safe.
type Retired = Arc<Mutex<std::collections::VecDeque<(String, u64)>>>;

/// Retirements remembered for resending (one per swap; older ones have long been delivered).
const RETIRED_KEPT: usize = 256;

/// A message on its way, holding its bytes of [`QUEUE_BYTES`] until tonic takes it (or it is
/// dropped).
struct Outgoing {
    message: MonitorMessage,
    queued: Option<Arc<AtomicUsize>>,
    bytes: usize,
}

impl Outgoing {
    /// `message`, if its `bytes` fit in what is left of [`QUEUE_BYTES`]; else it comes back.
    fn new(
        message: MonitorMessage,
        bytes: usize,
        queued: &Arc<AtomicUsize>,
    ) -> Result<Self, MonitorMessage> {
        let before = queued.fetch_add(bytes, Ordering::AcqRel);
        if bytes > 0 && before.saturating_add(bytes) > QUEUE_BYTES {
            queued.fetch_sub(bytes, Ordering::AcqRel);
            return Err(message);
        }
        Ok(Outgoing {
            message,
            queued: Some(queued.clone()),
            bytes,
        })
    }

    /// Version and retire messages: small, outside the byte bound.
    fn control(message: MonitorMessage) -> Self {
        Outgoing {
            message,
            queued: None,
            bytes: 0,
        }
    }

    fn into_message(mut self) -> MonitorMessage {
        std::mem::take(&mut self.message)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Some(queued) = &self.queued {
            queued.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The queue the streaming task reads; messages still in it when the task is stopped (the
/// shutdown deadline) are counted as `shutdown`.
struct Queue {
    rx: mpsc::Receiver<Outgoing>,
    dropped: IntCounterVec,
}

impl Queue {
    async fn recv(&mut self) -> Option<Outgoing> {
        self.rx.recv().await
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(left) = self.rx.try_recv() {
            count_message(&left.message, &self.dropped, reason::SHUTDOWN);
        }
    }
}

/// The request stream tonic reads. Messages tonic has not taken when it drops the stream (it
/// broke) are counted as `sidecar_unavailable`.
struct Outbound {
    rx: mpsc::Receiver<Outgoing>,
    dropped: IntCounterVec,
}

impl tokio_stream::Stream for Outbound {
    type Item = MonitorMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MonitorMessage>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(Outgoing::into_message))
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(left) = self.rx.try_recv() {
            count_message(&left.message, &self.dropped, reason::SIDECAR_UNAVAILABLE);
        }
    }
}

pub struct SidecarHandle {
    tx: mpsc::Sender<Outgoing>,
    specs: Specs,
    retired: Retired,
    queued: Arc<AtomicUsize>,
}

impl SidecarHandle {
    /// Starts the streaming task on the current runtime. The task ends once the handle is dropped
    /// and what it queued is sent (or counted); await it, with a deadline, on shutdown.
    pub fn start(
        endpoint: String,
        token: ClientToken,
        dropped: IntCounterVec,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        if token.token.is_some() || token.file.is_some() {
            warn_if_credentials_exposed(&endpoint, "monitor tokens");
        }
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let specs = Specs::default();
        let retired = Retired::default();
        let queue = Queue {
            rx,
            dropped: dropped.clone(),
        };
        let task = tokio::spawn(stream_forever(
            endpoint,
            token,
            queue,
            specs.clone(),
            retired.clone(),
            dropped,
        ));
        (
            SidecarHandle {
                tx,
                specs,
                retired,
                queued: Arc::default(),
            },
            task,
        )
    }

    pub fn version(&self, spec: &ModelSpec) {
        let message = match spec_message(spec) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(model = %spec.model, version = spec.version, error = %e, "cannot encode the version spec for the sidecar");
                return;
            }
        };
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(m, v)| !(m == &spec.model && *v == spec.version));
        self.specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((spec.model.clone(), spec.version), message.clone());
        // A spec lost here is resent on the next (re)connection.
        let _ = self.tx.try_send(Outgoing::control(message));
    }

    pub fn retire(&self, model: &str, version: u64) {
        self.specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(model.to_string(), version));
        {
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            if retired.len() == RETIRED_KEPT {
                retired.pop_front();
            }
            retired.push_back((model.to_string(), version));
        }
        let _ = self
            .tx
            .try_send(Outgoing::control(retire_message(model, version)));
    }

    /// Queues `records` as messages below the sidecar's limit; rows that cannot go are counted.
    pub fn records(&self, records: &[PredictionRecord], dropped: &IntCounterVec) {
        let chunked = records_messages(records, CHUNK_BYTES, MAX_SENT_MESSAGE_BYTES);
        self.send(chunked, dropped, |r| &r.model);
    }

    /// Queues feedback like [`Self::records`].
    pub fn feedback(&self, items: &[FeedbackRecord], dropped: &IntCounterVec) {
        let chunked = feedback_messages(items, CHUNK_BYTES, MAX_SENT_MESSAGE_BYTES);
        self.send(chunked, dropped, |f| &f.model);
    }

    fn send<T>(
        &self,
        chunked: Chunked<'_, T>,
        dropped: &IntCounterVec,
        model: impl Fn(&T) -> &String,
    ) {
        for item in chunked.too_large {
            dropped
                .with_label_values(&[model(item).as_str(), reason::TOO_LARGE])
                .inc();
        }
        for chunk in chunked.chunks {
            let outgoing = match Outgoing::new(chunk.message, chunk.bytes, &self.queued) {
                Ok(outgoing) => outgoing,
                Err(message) => {
                    // Over the byte bound: the sidecar is not keeping up.
                    count_message(&message, dropped, reason::SIDECAR_UNAVAILABLE);
                    continue;
                }
            };
            if let Err(e) = self.tx.try_send(outgoing) {
                let outgoing = match e {
                    mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => o,
                };
                count_message(&outgoing.message, dropped, reason::SIDECAR_UNAVAILABLE);
            }
        }
    }

    /// Bytes of messages waiting now.
    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Why rows cannot go to the sidecar now. Each kind is logged once per outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    Unreachable,
    /// No token to present: the file is unreadable or empty, or the token is not a header value.
    NoToken,
    /// The sidecar answered UNAUTHENTICATED.
    Refused,
    /// The sidecar ended the stream at once for another reason.
    Failing,
}

/// `authorization: Bearer <token>` for this connection, the file read now.
fn authorization(token: &ClientToken) -> Result<Option<AsciiMetadataValue>, String> {
    match token.current() {
        Ok(None) => Ok(None),
        Ok(Some(token)) => AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| "the monitor token holds characters a header cannot carry".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn stream_forever(
    endpoint: String,
    token: ClientToken,
    mut rx: Queue,
    specs: Specs,
    retired: Retired,
    dropped: IntCounterVec,
) {
    // Endpoints hold no credentials, but logs never show one if a user put it there.
    let shown = redact_url(&endpoint);
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut outage: Option<Outage> = None;
    loop {
        let failure = match connect(&endpoint, &token).await {
            Err(failure) => failure,
            Ok(mut client) => {
                let (stream_tx, stream_rx) = mpsc::channel(STREAM_MESSAGES);
                let outbound = Outbound {
                    rx: stream_rx,
                    dropped: dropped.clone(),
                };
                let mut resend: Vec<MonitorMessage> = retired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(model, version)| retire_message(model, *version))
                    .collect();
                resend.extend(
                    specs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned(),
                );
                let mut call = tokio::spawn(async move { client.stream(outbound).await });
                for message in resend {
                    if stream_tx.send(Outgoing::control(message)).await.is_err() {
                        break;
                    }
                }
                // Rows wait in the queue until the sidecar had time to refuse the stream.
                let early_end = tokio::select! {
                    ended = &mut call => Some(ended),
                    () = tokio::time::sleep(SETTLE) => None,
                };
                match early_end {
                    Some(ended) => match ended {
                        Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
                            (Outage::Refused, status.message().to_string())
                        }
                        Ok(Err(status)) => (Outage::Failing, status.to_string()),
                        Ok(Ok(_)) => (Outage::Failing, "stream closed by the sidecar".into()),
                        Err(e) => (Outage::Failing, e.to_string()),
                    },
                    None => {
                        tracing::info!(endpoint = %shown, "streaming to the monitor sidecar");
                        outage = None;
                        backoff.reset();
                        if !forward(&mut rx, stream_tx, call, &dropped).await {
                            return;
                        }
                        // Reconnect at once: a stream that ran ended (the sidecar restarting).
                        continue;
                    }
                }
            }
        };
        let (kind, reason) = failure;
        // Once per outage, not once per attempt.
        if outage != Some(kind) {
            match kind {
                Outage::Unreachable => {
                    tracing::warn!(endpoint = %shown, error = %reason, "monitor sidecar unreachable; dropping logged rows until it is back")
                }
                Outage::NoToken => {
                    tracing::warn!(endpoint = %shown, error = %reason, "no monitor token to present (--monitor-token-file); dropping logged rows until there is one")
                }
                Outage::Refused => {
                    tracing::warn!(endpoint = %shown, error = %reason, "the monitor sidecar refused this server's token (UNAUTHENTICATED): give --monitor-token or --monitor-token-file one of the sidecar's --api-token(s); dropping logged rows until it accepts")
                }
                Outage::Failing => {
                    tracing::warn!(endpoint = %shown, error = %reason, "the monitor sidecar ended the stream at once; dropping logged rows until it takes one")
                }
            }
            outage = Some(kind);
        }
        // Whatever waits now would be stale by the time the sidecar takes rows again.
        if !discard(&mut rx, &dropped, backoff.next_delay()).await {
            return;
        }
    }
}

/// Adds `authorization` to every call, when a token is set.
#[derive(Clone)]
struct AddToken(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for AddToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = MonitorServiceClient<InterceptedService<Channel, AddToken>>;

/// A client on a new connection that presents the token, if one is set.
async fn connect(endpoint: &str, token: &ClientToken) -> Result<Client, (Outage, String)> {
    let authorization = authorization(token).map_err(|e| (Outage::NoToken, e))?;
    let channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| (Outage::Unreachable, e.to_string()))?
        .connect()
        .await
        .map_err(|e| (Outage::Unreachable, e.to_string()))?;
    Ok(MonitorServiceClient::with_interceptor(
        channel,
        AddToken(authorization),
    ))
}

/// Forwards queued messages onto a settled stream until it ends (true: reconnect) or the handle
/// is gone (false).
async fn forward(
    rx: &mut Queue,
    stream_tx: mpsc::Sender<Outgoing>,
    mut call: tokio::task::JoinHandle<Result<tonic::Response<StreamSummary>, tonic::Status>>,
    dropped: &IntCounterVec,
) -> bool {
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                None => {
                    drop(stream_tx);
                    let _ = call.await;
                    return false;
                }
                Some(message) => {
                    if let Err(failed) = stream_tx.send(message).await {
                        count_message(&failed.0.message, dropped, reason::SIDECAR_UNAVAILABLE);
                        return true;
                    }
                }
            },
            ended = &mut call => {
                tracing::warn!(result = ?ended.map(|r| r.map(|_| ())), "monitor sidecar stream ended; reconnecting");
                return true;
            }
        }
    }
}

/// Drops (and counts) what arrives for `wait`; false once the handle is gone.
async fn discard(rx: &mut Queue, dropped: &IntCounterVec, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(left)) => count_message(&left.message, dropped, reason::SIDECAR_UNAVAILABLE),
        }
    }
}

/// Counts the rows of a records or feedback message under `why`.
fn count_message(message: &MonitorMessage, dropped: &IntCounterVec, why: &str) {
    use keel_monitor::sidecar::pb::monitor_message::Kind;
    match &message.kind {
        Some(Kind::Records(batch)) => count_by_model(dropped, &batch.records, why, |r| &r.model),
        Some(Kind::Feedback(batch)) => count_by_model(dropped, &batch.items, why, |f| &f.model),
        _ => {}
    }
}

#[cfg(test)]
#[path = "sidecar_client_tests.rs"]
mod tests;

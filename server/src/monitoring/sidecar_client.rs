//! Streaming to a `keel monitor` sidecar over gRPC. The drain thread hands messages over without
//! waiting; a task keeps one client stream open, reconnecting with backoff. While the sidecar is away,
//! rows are dropped and counted, and on reconnect every serving version's spec is sent first, so a
//! restarted sidecar resumes monitoring on its own.
//!
//! With `--monitor-token(-file)` each connection presents `authorization: Bearer <token>`, the file
//! read again at every connection (a rotated Secret is picked up). A sidecar that refuses the token
//! (UNAUTHENTICATED) is an outage like an unreachable one: logged once, rows dropped and counted,
//! retried with backoff. Rows are held back for a moment after each connection until the sidecar
//! has had time to refuse it, so rows refused with the stream are counted, not lost silently.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_monitor::auth::ClientToken;
use keel_monitor::outbound::{redact_url, warn_if_credentials_exposed};
use keel_monitor::sidecar::convert::{
    feedback_message, records_message, retire_message, spec_message,
};
use keel_monitor::sidecar::pb::monitor_service_client::MonitorServiceClient;
use keel_monitor::sidecar::pb::{MonitorMessage, StreamSummary};
use keel_monitor::{FeedbackRecord, ModelSpec, PredictionRecord};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::drain::count_by_model;

/// Messages (batches) waiting for the stream; beyond this the sidecar is too slow and rows are dropped.
const QUEUE_MESSAGES: usize = 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a new stream must stay open before rows go on it: a sidecar refuses a token at once.
const SETTLE: Duration = Duration::from_millis(500);

type Specs = Arc<Mutex<BTreeMap<(String, u64), MonitorMessage>>>;

pub struct SidecarHandle {
    tx: mpsc::Sender<MonitorMessage>,
    specs: Specs,
}

impl SidecarHandle {
    /// Starts the streaming task on the current runtime.
    pub fn start(endpoint: String, token: ClientToken, dropped: IntCounterVec) -> Self {
        if token.token.is_some() || token.file.is_some() {
            warn_if_credentials_exposed(&endpoint, "monitor tokens");
        }
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let specs = Specs::default();
        tokio::spawn(stream_forever(endpoint, token, rx, specs.clone(), dropped));
        SidecarHandle { tx, specs }
    }

    pub fn version(&self, spec: &ModelSpec) {
        let message = match spec_message(spec) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(model = %spec.model, version = spec.version, error = %e, "cannot encode the version spec for the sidecar");
                return;
            }
        };
        self.specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((spec.model.clone(), spec.version), message.clone());
        // A spec lost here is resent on the next (re)connection.
        let _ = self.tx.try_send(message);
    }

    pub fn retire(&self, model: &str, version: u64) {
        self.specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(model.to_string(), version));
        let _ = self.tx.try_send(retire_message(model, version));
    }

    pub fn records(&self, records: &[PredictionRecord], dropped: &IntCounterVec) {
        if self.tx.try_send(records_message(records)).is_err() {
            count_by_model(dropped, records, "sidecar_unavailable", |r| &r.model);
        }
    }

    pub fn feedback(&self, items: &[FeedbackRecord], dropped: &IntCounterVec) {
        if self.tx.try_send(feedback_message(items)).is_err() {
            count_by_model(dropped, items, "sidecar_unavailable", |f| &f.model);
        }
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
    mut rx: mpsc::Receiver<MonitorMessage>,
    specs: Specs,
    dropped: IntCounterVec,
) {
    // Endpoints hold no credentials, but logs never show one if a user put it there.
    let shown = redact_url(&endpoint);
    let mut backoff = FIRST_BACKOFF;
    let mut outage: Option<Outage> = None;
    loop {
        let failure = match connect(&endpoint, &token).await {
            Err(failure) => failure,
            Ok(mut client) => {
                let (stream_tx, stream_rx) = mpsc::channel(64);
                let resend: Vec<MonitorMessage> = specs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                let mut call =
                    tokio::spawn(
                        async move { client.stream(ReceiverStream::new(stream_rx)).await },
                    );
                for message in resend {
                    if stream_tx.send(message).await.is_err() {
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
                        backoff = FIRST_BACKOFF;
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
        if !discard(&mut rx, &dropped, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
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
    rx: &mut mpsc::Receiver<MonitorMessage>,
    stream_tx: mpsc::Sender<MonitorMessage>,
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
                        count_message(&failed.0, dropped);
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
async fn discard(
    rx: &mut mpsc::Receiver<MonitorMessage>,
    dropped: &IntCounterVec,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(message)) => count_message(&message, dropped),
        }
    }
}

fn count_message(message: &MonitorMessage, dropped: &IntCounterVec) {
    use keel_monitor::sidecar::pb::monitor_message::Kind;
    match &message.kind {
        Some(Kind::Records(batch)) => {
            count_by_model(dropped, &batch.records, "sidecar_unavailable", |r| &r.model)
        }
        Some(Kind::Feedback(batch)) => {
            count_by_model(dropped, &batch.items, "sidecar_unavailable", |f| &f.model)
        }
        _ => {}
    }
}

//! Streaming to a `keel monitor` sidecar over gRPC. The drain thread hands messages over without
//! waiting; a task keeps one client stream open, reconnecting with backoff. While the sidecar is away,
//! rows are dropped and counted, and on reconnect every serving version's spec is sent first, so a
//! restarted sidecar resumes monitoring on its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_monitor::sidecar::convert::{
    feedback_message, records_message, retire_message, spec_message,
};
use keel_monitor::sidecar::pb::MonitorMessage;
use keel_monitor::sidecar::pb::monitor_service_client::MonitorServiceClient;
use keel_monitor::{FeedbackRecord, ModelSpec, PredictionRecord};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::drain::count_by_model;

/// Messages (batches) waiting for the stream; beyond this the sidecar is too slow and rows are dropped.
const QUEUE_MESSAGES: usize = 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Specs = Arc<Mutex<BTreeMap<(String, u64), MonitorMessage>>>;

pub struct SidecarHandle {
    tx: mpsc::Sender<MonitorMessage>,
    specs: Specs,
}

impl SidecarHandle {
    /// Starts the streaming task on the current runtime.
    pub fn start(endpoint: String, dropped: IntCounterVec) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let specs = Specs::default();
        tokio::spawn(stream_forever(endpoint, rx, specs.clone(), dropped));
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

async fn stream_forever(
    endpoint: String,
    mut rx: mpsc::Receiver<MonitorMessage>,
    specs: Specs,
    dropped: IntCounterVec,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(250);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut client = match MonitorServiceClient::connect(endpoint.clone()).await {
            Ok(client) => client,
            Err(e) => {
                // Once per outage, not once per attempt.
                if backoff == FIRST_BACKOFF {
                    tracing::warn!(%endpoint, error = %e, "monitor sidecar unreachable; dropping logged rows until it is back");
                }
                // Whatever waits now would be stale by the time the sidecar returns.
                if !discard(&mut rx, &dropped, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(%endpoint, "streaming to the monitor sidecar");
        backoff = FIRST_BACKOFF;
        let (stream_tx, stream_rx) = mpsc::channel(64);
        let resend: Vec<MonitorMessage> = specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut call =
            tokio::spawn(async move { client.stream(ReceiverStream::new(stream_rx)).await });
        for message in resend {
            if stream_tx.send(message).await.is_err() {
                break;
            }
        }
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    None => {
                        drop(stream_tx);
                        let _ = call.await;
                        return;
                    }
                    Some(message) => {
                        if let Err(failed) = stream_tx.send(message).await {
                            count_message(&failed.0, &dropped);
                            break;
                        }
                    }
                },
                ended = &mut call => {
                    tracing::warn!(result = ?ended.map(|r| r.map(|_| ())), "monitor sidecar stream ended; reconnecting");
                    break;
                }
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

//! The sender task: takes new events, keeps every undelivered one on disk, and attempts each when
//! it is due, one at a time, until delivered, refused, gone or expired.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Client, Url};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::delivery::{Outcome, attempt, backoff};
use super::metrics::Metrics;
use super::store::{Store, StoredEvent};
use super::{Secret, WebhookConfig};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Pending {
    event: StoredEvent,
    path: PathBuf,
    due: Instant,
}

pub struct Worker {
    client: Client,
    url: Url,
    secret: Secret,
    store: Store,
    metrics: Metrics,
    queue: mpsc::Receiver<StoredEvent>,
    stored_aside: Arc<Notify>,
    shutdown: watch::Receiver<()>,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_age: Duration,
    max_attempts: u32,
}

/// Why an event is abandoned.
#[derive(Clone, Copy, Debug)]
enum GiveUp {
    Gone,
    Failed,
    Expired,
}

impl Worker {
    pub fn new(config: &WebhookConfig, parts: WorkerParts) -> Self {
        let WorkerParts {
            client,
            url,
            store,
            metrics,
            queue,
            stored_aside,
            shutdown,
        } = parts;
        Self {
            client,
            url,
            secret: config.secret.clone(),
            store,
            metrics,
            queue,
            stored_aside,
            shutdown,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            max_age: config.max_age,
            max_attempts: config.max_attempts.max(1),
        }
    }

    pub async fn run(mut self, loaded: Vec<(PathBuf, StoredEvent)>) {
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        let now = Instant::now();
        for (path, event) in loaded {
            pending.insert(
                event.id.clone(),
                Pending {
                    event,
                    path,
                    due: now,
                },
            );
        }
        self.metrics.pending.set(gauge(&pending));
        let mut queue_open = true;
        loop {
            let next = pending
                .iter()
                .min_by_key(|(_, p)| (p.due, p.event.created_ms))
                .map(|(id, p)| (id.clone(), p.due));
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                event = self.queue.recv(), if queue_open => match event {
                    Some(event) => self.accept(&mut pending, event).await,
                    None => queue_open = false,
                },
                () = self.stored_aside.notified() => self.rescan(&mut pending).await,
                () = sleep_until(next.as_ref().map(|(_, due)| *due)), if next.is_some() => {
                    let Some((id, _)) = next else { continue };
                    let Some(entry) = pending.remove(&id) else { continue };
                    match self.attempt(entry).await {
                        Step::Keep(entry) => {
                            pending.insert(id, *entry);
                        }
                        Step::Done => {}
                        // The event stays on disk for the next start.
                        Step::Stop => break,
                    }
                    self.metrics.pending.set(gauge(&pending));
                }
            }
        }
        self.store_queued().await;
    }

    /// Stores a new event before its first attempt, which is due now.
    async fn accept(&self, pending: &mut BTreeMap<String, Pending>, event: StoredEvent) {
        let path = self.store.path_for(&event.id);
        if let Err(error) = blocking_save(&self.store, path.clone(), event.clone()).await {
            tracing::warn!(id = %event.id, %error, "webhook: cannot store the event; it is kept in memory only");
        }
        pending.insert(
            event.id.clone(),
            Pending {
                event,
                path,
                due: Instant::now(),
            },
        );
        self.metrics.pending.set(gauge(pending));
    }

    /// Picks up events the sink stored itself because the queue was full.
    async fn rescan(&self, pending: &mut BTreeMap<String, Pending>) {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load_all()).await;
        match loaded {
            Ok(Ok((events, corrupt))) => {
                self.count_corrupt(&corrupt);
                let now = Instant::now();
                for (path, event) in events {
                    if !pending.contains_key(&event.id) {
                        pending.insert(
                            event.id.clone(),
                            Pending {
                                event,
                                path,
                                due: now,
                            },
                        );
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "webhook: cannot read the pending events"),
            Err(error) => tracing::warn!(%error, "webhook: cannot read the pending events"),
        }
        self.metrics.pending.set(gauge(pending));
    }

    pub fn count_corrupt(&self, corrupt: &[PathBuf]) {
        for path in corrupt {
            tracing::error!(path = %path.display(), "webhook: unreadable pending event set aside");
            self.metrics.failed.inc();
        }
    }

    /// Attempts one due event, unless it is past its max age; stops early on shutdown.
    async fn attempt(&mut self, mut entry: Pending) -> Step {
        if self.expired(&entry.event, Duration::ZERO) {
            return self
                .give_up(entry, GiveUp::Expired, "max age reached")
                .await;
        }
        let outcome = tokio::select! {
            biased;
            _ = self.shutdown.changed() => return Step::Stop,
            outcome = attempt(&self.client, &self.url, &self.secret, &entry.event) => outcome,
        };
        entry.event.attempts = entry.event.attempts.saturating_add(1);
        match outcome {
            Outcome::Delivered => {
                // Forgotten first, so a counted delivery is never found on disk again.
                self.forget(&entry).await;
                self.metrics.delivered.inc();
                Step::Done
            }
            Outcome::Gone => self.give_up(entry, GiveUp::Gone, "HTTP 410 Gone").await,
            Outcome::Failed(status) => {
                self.give_up(entry, GiveUp::Failed, &format!("HTTP {status}"))
                    .await
            }
            Outcome::Retry { after, reason } => {
                let wait = after.unwrap_or_else(|| {
                    backoff(entry.event.attempts, self.initial_backoff, self.max_backoff)
                });
                if entry.event.attempts >= self.max_attempts || self.expired(&entry.event, wait) {
                    return self.give_up(entry, GiveUp::Expired, &reason).await;
                }
                self.metrics.retry.inc();
                // An event's first failure is worth a warning (a receiver down, a certificate not
                // trusted); its later retries are not.
                if entry.event.attempts == 1 {
                    tracing::warn!(id = %entry.event.id, ?wait, %reason, "webhook: delivery failed; will retry");
                } else {
                    tracing::debug!(id = %entry.event.id, attempts = entry.event.attempts, ?wait, %reason, "webhook: will retry");
                }
                if let Err(error) =
                    blocking_save(&self.store, entry.path.clone(), entry.event.clone()).await
                {
                    tracing::warn!(id = %entry.event.id, %error, "webhook: cannot store the attempt count");
                }
                entry.due = Instant::now() + wait;
                Step::Keep(Box::new(entry))
            }
        }
    }

    /// Whether `event` would be past its max age `wait` from now.
    fn expired(&self, event: &StoredEvent, wait: Duration) -> bool {
        let age = Duration::from_millis(now_ms().saturating_sub(event.created_ms));
        age.saturating_add(wait) >= self.max_age
    }

    async fn give_up(&self, entry: Pending, why: GiveUp, reason: &str) -> Step {
        self.forget(&entry).await;
        match why {
            GiveUp::Gone => self.metrics.gone.inc(),
            GiveUp::Failed => self.metrics.failed.inc(),
            GiveUp::Expired => self.metrics.expired.inc(),
        }
        tracing::warn!(id = %entry.event.id, attempts = entry.event.attempts, %reason, ?why, "webhook: event abandoned");
        Step::Done
    }

    async fn forget(&self, entry: &Pending) {
        let (store, path) = (self.store.clone(), entry.path.clone());
        let removed = tokio::task::spawn_blocking(move || store.remove(&path)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(id = %entry.event.id, "webhook: cannot delete a finished event; it may be sent again");
        }
    }

    /// On shutdown: events still queued go to disk, to be sent by the next start.
    async fn store_queued(&mut self) {
        self.queue.close();
        while let Ok(event) = self.queue.try_recv() {
            let path = self.store.path_for(&event.id);
            if let Err(error) = blocking_save(&self.store, path, event).await {
                tracing::error!(%error, "webhook: event lost on shutdown");
                self.metrics.dropped.inc();
            }
        }
    }
}

/// The client, store, metrics and channels `Webhook::start` made for the worker.
pub struct WorkerParts {
    pub client: Client,
    pub url: Url,
    pub store: Store,
    pub metrics: Metrics,
    pub queue: mpsc::Receiver<StoredEvent>,
    pub stored_aside: Arc<Notify>,
    pub shutdown: watch::Receiver<()>,
}

/// What became of an attempted event.
enum Step {
    /// Retry later.
    Keep(Box<Pending>),
    /// Delivered or abandoned, and deleted.
    Done,
    /// Shutdown came during the attempt.
    Stop,
}

fn gauge(pending: &BTreeMap<String, Pending>) -> i64 {
    i64::try_from(pending.len()).unwrap_or(i64::MAX)
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

async fn blocking_save(store: &Store, path: PathBuf, event: StoredEvent) -> std::io::Result<()> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.save(&path, &event))
        .await
        .map_err(std::io::Error::other)?
}

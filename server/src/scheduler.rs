//! The per model version scheduler: one bounded queue that every instance of the version pulls batches
//! from. Submitting never blocks: a full queue is refused at once (429 / RESOURCE_EXHAUSTED), and a
//! request's timeout is enforced while it waits, so an expired request never reaches the backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::batch;
use crate::error::{Error, Result};
use crate::metrics::VersionMetrics;
use crate::repository::model_toml::DynamicBatching;
use crate::stats::Phases;
use crate::tensor::Tensor;

/// A finished execution, as one request sees it: its outputs and where the time went.
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub phases: Phases,
}

/// A request waiting for an instance.
pub struct Pending {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<Executed>>,
}

impl Pending {
    /// Still worth computing: its client waits and its deadline has not passed.
    fn is_live(&self, now: Instant) -> bool {
        !self.reply.is_closed() && self.deadline.is_none_or(|d| now < d)
    }
}

/// How instances form batches.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    /// 0: every request runs alone.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub preferred_batch_sizes: Vec<usize>,
}

/// The submitting side, held by the served version.
pub struct Scheduler {
    queue: Sender<Pending>,
    default_timeout: Option<Duration>,
    metrics: Arc<VersionMetrics>,
}

impl Scheduler {
    /// The queue and the receiving end the instances share.
    pub fn new(
        config: &DynamicBatching,
        metrics: Arc<VersionMetrics>,
    ) -> (Self, Receiver<Pending>) {
        let (queue, rx) = crossbeam_channel::bounded(config.max_queue_size.max(1));
        let default_timeout = (config.default_timeout_us > 0)
            .then(|| Duration::from_micros(config.default_timeout_us));
        (
            Scheduler {
                queue,
                default_timeout,
                metrics,
            },
            rx,
        )
    }

    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        timeout: Option<Duration>,
    ) -> Result<Executed> {
        let timeout = timeout.or(self.default_timeout);
        let now = Instant::now();
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            inputs,
            rows,
            enqueued: now,
            deadline: timeout.map(|t| now + t),
            reply,
        };
        match self.queue.try_send(pending) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => {
                return Err(Error::Overloaded(format!(
                    "the queue of this model version is full ({} requests waiting); retry later",
                    self.queue.capacity().unwrap_or_default()
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable(
                    "the model version is shutting down".into(),
                ));
            }
        }
        let stopped = || Error::Unavailable("the model instance stopped during inference".into());
        match timeout {
            None => answer.await.map_err(|_| stopped())?,
            Some(limit) => match tokio::time::timeout(limit, answer).await {
                Ok(result) => result.map_err(|_| stopped())?,
                Err(_) => Err(Error::Timeout(format!(
                    "request timed out after {} µs waiting for an instance",
                    limit.as_micros()
                ))),
            },
        }
    }
}

/// The pulling side: each instance thread owns one, with the request it could not fit last time.
pub struct BatchSource {
    queue: Receiver<Pending>,
    policy: BatchPolicy,
    carry: Option<Pending>,
    metrics: Arc<VersionMetrics>,
}

impl BatchSource {
    pub fn new(
        queue: Receiver<Pending>,
        policy: BatchPolicy,
        metrics: Arc<VersionMetrics>,
    ) -> Self {
        BatchSource {
            queue,
            policy,
            carry: None,
            metrics,
        }
    }

    /// Blocks for the next request, then gathers what else fits in its batch. `None` once the queue is
    /// closed and drained: the version was unloaded or the server stopped, and every queued request has
    /// been served.
    pub fn next_batch(&mut self) -> Option<Vec<Pending>> {
        let first = loop {
            let p = match self.carry.take() {
                Some(p) => p,
                None => self.take(self.queue.recv().ok()?),
            };
            if p.is_live(Instant::now()) {
                break p;
            }
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        if self.policy.max_batch_size == 0 {
            return Some(batch);
        }
        let wait_until = batch[0].enqueued + self.policy.max_queue_delay;
        while rows < self.policy.max_batch_size
            && !self.policy.preferred_batch_sizes.contains(&rows)
        {
            let next = match self.queue.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match self.queue.recv_deadline(wait_until) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            let next = self.take(next);
            if !next.is_live(Instant::now()) {
                continue;
            }
            if rows + next.rows > self.policy.max_batch_size
                || !batch::compatible(&batch[0].inputs, &next.inputs)
            {
                self.carry = Some(next);
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        Some(batch)
    }

    fn take(&self, p: Pending) -> Pending {
        self.metrics.queue_depth.dec();
        p
    }
}

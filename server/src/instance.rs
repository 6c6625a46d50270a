//! Model instances: each owns one backend session on its own OS thread, so model compute never runs on
//! the async runtime. Instances pull batches from their version's scheduler queue. The one exception is
//! the direct run ([`crate::direct`]): while an instance is idle and nothing waits, a lone
//! request of a model that computes in microseconds borrows its session for one call, on the caller's
//! thread, instead of paying two thread hand-offs. The session sits behind a mutex for that; it is taken
//! once per batch, never contended in the steady state.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{Backend, BackendKind};
use crate::batch;
use crate::error::{Error, Result};
use crate::metrics::VersionMetrics;
use crate::model_toml::ModelToml;
use crate::scheduler::{BatchPolicy, BatchSource, Executed, Pending, Queue};
use crate::signature::Signature;
use crate::stats::{Phases, Stats};
use crate::tensor::Tensor;

/// An instance's backend session: the instance thread takes it for each batch; a direct run may borrow
/// it while the thread waits for work. `None` once the thread has ended (it drops the session itself,
/// on its own thread, since unloading a session can take a while).
pub type Session = Arc<Mutex<Option<Box<dyn Backend>>>>;

/// Locks a session; a panic is caught inside the lock (see [`execute`]), so a poisoned lock still holds a
/// usable session.
pub fn lock(session: &Session) -> MutexGuard<'_, Option<Box<dyn Backend>>> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an instance thread needs to load its backend and serve.
pub struct InstanceSpec {
    pub label: String,
    pub kind: BackendKind,
    pub path: PathBuf,
    pub signature: Signature,
    pub config: ModelToml,
    pub policy: BatchPolicy,
    pub stats: Arc<Stats>,
    pub metrics: Arc<VersionMetrics>,
    /// What a row costs to compute, learnt from every batch: decides whether a request may run directly.
    pub cost: crate::direct::Cost,
}

/// Starts `count` instance threads on `queue` and waits until every one has loaded its backend; returns
/// their sessions. They exit by themselves once the queue is closed and drained.
pub async fn start(
    spec: Arc<InstanceSpec>,
    count: usize,
    queue: Queue,
) -> Result<Vec<Session>, String> {
    let mut loads = Vec::with_capacity(count);
    for i in 0..count {
        let (loaded_tx, loaded) = oneshot::channel();
        let spec = spec.clone();
        let queue = queue.clone();
        thread::Builder::new()
            .name(format!("keel-{}-{i}", spec.label))
            .spawn(move || {
                let _running = Running::start();
                let backend = match spec.kind.load(&spec.path, &spec.signature, &spec.config) {
                    Ok(backend) => backend,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let session: Session = Arc::new(Mutex::new(Some(backend)));
                let _ = loaded_tx.send(Ok(session.clone()));
                let source = BatchSource::new(queue, spec.policy.clone(), spec.metrics.clone());
                serve(&session, source, &spec);
                let backend = lock(&session).take();
                drop(backend);
            })
            .map_err(|e| format!("cannot start an instance thread: {e}"))?;
        loads.push(loaded);
    }
    drop(queue);
    let mut sessions = Vec::with_capacity(count);
    for loaded in loads {
        sessions.push(
            loaded
                .await
                .map_err(|_| "an instance thread died while loading".to_string())??,
        );
    }
    Ok(sessions)
}

/// Instance threads alive in this process: each loads, runs and drops its session on its own, so the
/// process must not exit under one (ONNX Runtime's globals are torn down at exit; a thread still
/// inside a session then crashes the exit).
static RUNNING: AtomicUsize = AtomicUsize::new(0);

struct Running;

impl Running {
    fn start() -> Running {
        RUNNING.fetch_add(1, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until every instance thread has ended (their versions are gone: each finishes its batch and
/// drops its session), at most `limit`; false if some still run then.
pub fn wait_stopped(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while RUNNING.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    true
}

fn serve(session: &Session, mut source: BatchSource, spec: &InstanceSpec) {
    while let Some(batch) = source.next_batch() {
        let mut guard = lock(session);
        let Some(backend) = guard.as_mut() else {
            return;
        };
        compute(backend.as_mut(), batch, spec);
    }
}

/// Computes a batch of claimed requests and answers each, on the caller's thread (an instance thread, or
/// a request relaying the queue) while it holds the session.
pub fn compute(backend: &mut dyn Backend, batch: Vec<Pending>, spec: &InstanceSpec) {
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let served = batch.iter().filter(|p| !p.warmup).count() as u64;
    let warmup = served == 0;
    let mut inputs = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    let started = Instant::now();
    for p in batch {
        waiting.push((p.reply, started - p.enqueued));
        inputs.push(p.inputs);
    }
    let result = execute(backend, &inputs, &rows);
    let compute = started.elapsed();
    let total_rows: usize = rows.iter().sum();
    spec.record(compute, total_rows, warmup);
    match result {
        Ok((outputs, phases)) => {
            if served > 0 {
                spec.stats.record_compute(served, phases);
            }
            let batch_requests = waiting.len();
            for (((reply, queue), outputs), inputs) in waiting.into_iter().zip(outputs).zip(inputs)
            {
                let _ = reply.send(Ok(Executed {
                    outputs,
                    inputs,
                    queue,
                    started,
                    compute,
                    batch_rows: total_rows,
                    batch_requests,
                }));
            }
        }
        Err(e) => {
            for (reply, _) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

impl InstanceSpec {
    /// Accounts for one executed batch (warm-up runs are left out).
    pub fn record(&self, compute: Duration, rows: usize, warmup: bool) {
        if !warmup {
            self.cost.observe(compute, rows);
            self.metrics.record_execution(compute, rows);
            self.stats.record_execution(rows as u64);
        }
    }
}

/// One backend call for the whole batch; a single request skips the concatenation and split. A panicking
/// backend must not take the instance down: the batch fails, the instance serves on.
pub fn execute(
    backend: &mut dyn Backend,
    inputs: &[Vec<Tensor>],
    rows: &[usize],
) -> Result<(Vec<Vec<Tensor>>, Phases)> {
    panic::catch_unwind(AssertUnwindSafe(|| run(backend, inputs, rows))).unwrap_or_else(|_| {
        Err(Error::Internal(
            "the backend panicked during inference".into(),
        ))
    })
}

fn run(
    backend: &mut dyn Backend,
    inputs: &[Vec<Tensor>],
    rows: &[usize],
) -> Result<(Vec<Vec<Tensor>>, Phases)> {
    if let [alone] = inputs {
        let (outputs, phases) = backend.infer(alone)?;
        return Ok((vec![outputs], phases));
    }
    let start = Instant::now();
    let joined = batch::concat(inputs);
    let joined_at = start.elapsed();
    let (outputs, mut phases) = backend.infer(&joined)?;
    let split_start = Instant::now();
    let per_request = batch::split(outputs, rows)?;
    phases.input += joined_at;
    phases.output += split_start.elapsed();
    Ok((per_request, phases))
}

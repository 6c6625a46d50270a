//! Model instances: each owns one backend session on its own OS thread, so blocking inference never runs
//! on the async runtime. Instances pull batches from their version's scheduler queue; no lock is held
//! across a backend call.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::backend::{Backend, BackendKind};
use crate::batch;
use crate::error::{Error, Result};
use crate::metrics::VersionMetrics;
use crate::model_toml::ModelToml;
use crate::scheduler::{BatchPolicy, BatchSource, Executed, Pending};
use crate::signature::Signature;
use crate::stats::{Phases, Stats};

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
}

/// Starts `count` instance threads on `queue` and waits until every one has loaded its backend. They
/// exit by themselves once the queue is closed and drained.
pub async fn start(
    spec: Arc<InstanceSpec>,
    count: usize,
    queue: crossbeam_channel::Receiver<Pending>,
) -> Result<(), String> {
    let mut loads = Vec::with_capacity(count);
    for i in 0..count {
        let (loaded_tx, loaded) = oneshot::channel();
        let (spec, queue) = (spec.clone(), queue.clone());
        thread::Builder::new()
            .name(format!("keel-{}-{i}", spec.label))
            .spawn(move || {
                let backend = match spec.kind.load(&spec.path, &spec.signature, &spec.config) {
                    Ok(backend) => backend,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let _ = loaded_tx.send(Ok(()));
                let source = BatchSource::new(queue, spec.policy.clone(), spec.metrics.clone());
                serve(backend, source, &spec);
            })
            .map_err(|e| format!("cannot start an instance thread: {e}"))?;
        loads.push(loaded);
    }
    drop(queue);
    for loaded in loads {
        loaded
            .await
            .map_err(|_| "an instance thread died while loading".to_string())??;
    }
    Ok(())
}

fn serve(mut backend: Box<dyn Backend>, mut source: BatchSource, spec: &InstanceSpec) {
    while let Some(batch) = source.next_batch() {
        let started = Instant::now();
        let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
        let warmup = batch.iter().all(|p| p.warmup);
        let mut inputs = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for p in batch {
            waiting.push((p.reply, started - p.enqueued));
            inputs.push(p.inputs);
        }
        // A panicking backend must not take the instance down: the batch fails, the thread serves on.
        let result = panic::catch_unwind(AssertUnwindSafe(|| run(backend.as_mut(), inputs, &rows)))
            .unwrap_or_else(|_| {
                Err(Error::Internal(
                    "the backend panicked during inference".into(),
                ))
            });
        let compute = started.elapsed();
        let total_rows: usize = rows.iter().sum();
        if !warmup {
            spec.metrics.compute_duration.observe(compute.as_secs_f64());
            spec.metrics.batch_rows.observe(total_rows as f64);
            spec.stats.record_execution(total_rows as u64);
        }
        match result {
            Ok((outputs, phases)) => {
                let batch_requests = waiting.len();
                for ((reply, queue), outputs) in waiting.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(Executed {
                        outputs,
                        queue,
                        phases,
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
}

/// One backend call for the whole batch; a single request skips the concatenation and split.
fn run(
    backend: &mut dyn Backend,
    mut inputs: Vec<Vec<crate::tensor::Tensor>>,
    rows: &[usize],
) -> Result<(Vec<Vec<crate::tensor::Tensor>>, Phases)> {
    if inputs.len() == 1 {
        let (outputs, phases) = backend.infer(inputs.pop().unwrap_or_default())?;
        return Ok((vec![outputs], phases));
    }
    let start = Instant::now();
    let joined = batch::concat(inputs);
    let joined_at = start.elapsed();
    let (outputs, mut phases) = backend.infer(joined)?;
    let split_start = Instant::now();
    let per_request = batch::split(outputs, rows)?;
    phases.input += joined_at;
    phases.output += split_start.elapsed();
    Ok((per_request, phases))
}

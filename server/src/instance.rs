//! A model instance: one backend session owned by one dedicated OS thread, so blocking inference never
//! runs on the async runtime. Callers send a batch and await its result on a oneshot channel.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::repository::model_toml::ModelToml;
use crate::signature::Signature;
use crate::stats::Phases;
use crate::tensor::Tensor;

struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Executed>>,
}

/// A finished execution: the outputs and where the time went.
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub phases: Phases,
}

/// Handle to an instance thread. Dropping every handle ends the thread after the jobs already queued.
#[derive(Clone)]
pub struct Instance {
    jobs: mpsc::Sender<Job>,
}

impl Instance {
    /// Starts the thread, loads the backend on it and waits for the load to finish.
    pub async fn start(
        label: String,
        kind: BackendKind,
        path: PathBuf,
        signature: Signature,
        config: ModelToml,
    ) -> Result<Self, String> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (loaded_tx, loaded) = oneshot::channel();
        thread::Builder::new()
            .name(format!("keel-{label}"))
            .spawn(move || {
                let mut backend = match kind.load(&path, &signature, &config) {
                    Ok(backend) => {
                        let _ = loaded_tx.send(Ok(()));
                        backend
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    // A caller that went away no longer needs the answer: skip the work.
                    if job.reply.is_closed() {
                        continue;
                    }
                    // A panicking backend must not take the instance down with it: the request fails, the
                    // thread keeps serving.
                    let queue = job.enqueued.elapsed();
                    let result =
                        panic::catch_unwind(AssertUnwindSafe(|| backend.infer(job.inputs)))
                            .unwrap_or_else(|_| {
                                Err(Error::Internal(
                                    "the backend panicked during inference".into(),
                                ))
                            })
                            .map(|(outputs, phases)| Executed {
                                outputs,
                                queue,
                                phases,
                            });
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| format!("cannot start the instance thread: {e}"))?;
        match loaded.await {
            Ok(Ok(())) => Ok(Instance { jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the instance thread died while loading".into()),
        }
    }

    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Executed> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                inputs,
                enqueued: Instant::now(),
                reply,
            })
            .map_err(|_| Error::Unavailable("the model instance has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the model instance stopped during inference".into()))?
    }
}

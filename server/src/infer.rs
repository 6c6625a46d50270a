//! The serving core shared by every front end: find the model version, validate the request against its
//! signature, run it on an instance, return the requested outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::metrics::{Outcome, Protocol};
use crate::otel::{Execution, RequestSpan};
use crate::repository::{Repository, ServedVersion};
use crate::stats::StatsSnapshot;
use crate::tensor::Tensor;

/// A protocol-neutral inference request.
#[derive(Debug, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Output names to return, in this order; `None` returns every output.
    pub outputs: Option<Vec<String>>,
    /// How long the request may wait for an instance (Triton's `timeout` parameter).
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: u64,
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

/// Cheap to clone; every front end holds one.
#[derive(Clone)]
pub struct Infer {
    repository: Arc<Repository>,
}

impl Infer {
    pub fn new(repository: Arc<Repository>) -> Self {
        Infer { repository }
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The ready version to serve: `version` if given, else the highest ready one.
    pub fn version(&self, model: &str, version: Option<&str>) -> Result<Arc<ServedVersion>> {
        let version = version.map(parse_version).transpose()?;
        self.repository.ready_version(model, version)
    }
}

impl Infer {
    /// Statistics of every ready version of `model` (all models when `None`), or of one version.
    pub fn statistics(
        &self,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<StatsSnapshot>> {
        let version = version.map(parse_version).transpose()?;
        let entries = match model {
            Some(name) => vec![self.repository.model(name)?],
            None => self.repository.models().values().cloned().collect(),
        };
        let mut out = Vec::new();
        for entry in entries {
            match version {
                Some(v) => {
                    let served = self.repository.ready_version(&entry.name, Some(v))?;
                    out.push(served.stats.snapshot(&served.model, served.version));
                }
                None => out.extend(
                    entry
                        .ready_versions()
                        .map(|s| s.stats.snapshot(&s.model, s.version)),
                ),
            }
        }
        Ok(out)
    }

    /// Version names of a model's ready versions, ascending.
    pub fn ready_version_names(&self, model: &str) -> Result<Vec<String>> {
        Ok(self
            .repository
            .model(model)?
            .ready_versions()
            .map(|v| v.version.to_string())
            .collect())
    }
}

/// Versions are positive integers on the wire ("1"), as in the repository layout.
pub fn parse_version(text: &str) -> Result<u64> {
    text.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::invalid(format!("version '{text}' is not a positive integer")))
}

impl ServedVersion {
    pub async fn infer(&self, request: InferRequest, protocol: Protocol) -> Result<InferResponse> {
        self.infer_traced(request, protocol, None).await
    }

    /// [`Self::infer`], recording the request's id, rows and the scheduler's timings in its trace span
    /// when it has one.
    pub async fn infer_traced(
        &self,
        request: InferRequest,
        protocol: Protocol,
        span: Option<&mut RequestSpan>,
    ) -> Result<InferResponse> {
        let guard = RequestGuard::new(self, protocol);
        let result = self.run(request, span).await;
        guard.finish(Outcome::of(&result));
        result
    }

    async fn run(
        &self,
        request: InferRequest,
        mut span: Option<&mut RequestSpan>,
    ) -> Result<InferResponse> {
        if let Some(wanted) = &request.outputs {
            for (i, name) in wanted.iter().enumerate() {
                if self.signature.output(name).is_none() {
                    return Err(Error::invalid(format!("unknown output '{name}' requested")));
                }
                if wanted[..i].contains(name) {
                    return Err(Error::invalid(format!(
                        "output '{name}' is requested more than once"
                    )));
                }
            }
        }
        let inputs = self.signature.check_inputs(request.inputs)?;
        self.backend.check_strings(&inputs)?;
        let rows = self.signature.rows(&inputs);
        if let Some(span) = span.as_deref_mut() {
            span.request(request.id.as_deref(), rows);
        }
        let mut executed = self
            .scheduler
            .submit(inputs, rows as usize, request.timeout)
            .await?;
        if let Some(span) = span {
            span.executed(Execution {
                started: executed.started,
                queue: executed.queue,
                compute: executed.compute,
                batch_rows: executed.batch_rows,
                batch_requests: executed.batch_requests,
            });
        }
        // Captured after the run, from the inputs the backend borrowed: large tensors logged whole
        // are kept, not copied.
        if let Some(log) = &self.log {
            let inputs = std::mem::take(&mut executed.inputs);
            if let Some(captured) = log.capture(request.id.as_deref(), inputs, rows as usize) {
                log.push(captured, self.version, &executed.outputs);
            }
        }
        self.stats.record_queue(executed.queue);
        self.metrics.record_answer(rows, executed.queue);
        let mut all = executed.outputs;
        let outputs = match request.outputs {
            None => all,
            Some(wanted) => wanted
                .iter()
                .map(|name| {
                    let pos = all
                        .iter()
                        .position(|t| &t.name == name)
                        .expect("backends return every output");
                    all.swap_remove(pos)
                })
                .collect(),
        };
        Ok(InferResponse {
            model_name: self.model.clone(),
            model_version: self.version,
            id: request.id,
            outputs,
        })
    }
}

/// Accounts for one request however it ends: finished normally, or dropped because its client went away
/// (counted as cancelled).
struct RequestGuard<'a> {
    served: &'a ServedVersion,
    protocol: Protocol,
    start: Instant,
    finished: bool,
}

impl<'a> RequestGuard<'a> {
    fn new(served: &'a ServedVersion, protocol: Protocol) -> Self {
        served.metrics.inflight.inc();
        RequestGuard {
            served,
            protocol,
            start: Instant::now(),
            finished: false,
        }
    }

    fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let elapsed = self.start.elapsed();
        self.served
            .metrics
            .record_request(self.protocol, outcome, elapsed);
        self.served
            .stats
            .record_request(outcome == Outcome::Success, elapsed);
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.served.metrics.inflight.dec();
        if !self.finished {
            self.served.metrics.record_request(
                self.protocol,
                Outcome::Cancelled,
                self.start.elapsed(),
            );
        }
    }
}

/// Counts a request that `served` refused before it reached the scheduler (a check against the signature
/// while it was decoded, the in-flight budget), as [`ServedVersion::infer`] counts the requests it refuses:
/// in `keel_inference_requests_total{outcome}` and the version's failure statistics.
pub fn count_refused(served: &ServedVersion, protocol: Protocol, error: &Error, since: Instant) {
    let elapsed = since.elapsed();
    let outcome = Outcome::of(&Err::<(), _>(error.clone()));
    served.metrics.record_request(protocol, outcome, elapsed);
    served.stats.record_request(false, elapsed);
}

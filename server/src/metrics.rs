//! Prometheus metrics: every family is described once here. Per model version, the label sets are resolved
//! at load into [`VersionMetrics`], so the request path only touches atomics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::process_collector::ProcessCollector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::error::Error;

mod hot;
pub(crate) mod shards;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];
    fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// How a request ended, as counted in `keel_inference_requests_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Invalid,
    Overloaded,
    Timeout,
    Cancelled,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Invalid,
        Outcome::Overloaded,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Invalid => "invalid",
            Outcome::Overloaded => "overloaded",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
        }
    }

    pub fn of(result: &Result<impl Sized, Error>) -> Self {
        match result {
            Ok(_) => Outcome::Success,
            Err(Error::Overloaded(_)) => Outcome::Overloaded,
            Err(Error::Timeout(_)) => Outcome::Timeout,
            Err(Error::Internal(_) | Error::Unavailable(_)) => Outcome::Error,
            Err(_) => Outcome::Invalid,
        }
    }
}

/// Latency buckets from 50 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
const ROWS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct Metrics {
    registry: Registry,
    /// What every request updates, per thread (requests, rows, their times, batches, queue depth): the
    /// families `keel_inference_requests_total`, `keel_inference_rows_total`, `keel_model_rows_total`
    /// (rows per model, all versions together: survives swaps), `keel_request_duration_seconds`,
    /// `keel_queue_duration_seconds`, `keel_compute_duration_seconds`, `keel_batch_rows` and
    /// `keel_queue_depth` (metrics/hot.rs).
    versions: Arc<hot::Versions>,
    /// Read on the request path too (whether a request is alone): one shared gauge.
    inflight: IntGaugeVec,
    model_info: IntGaugeVec,
    /// Requests refused before they reached a model, by reason (`inflight_bytes`: the in-flight request
    /// bytes budget was spent).
    pub requests_refused: IntCounterVec,
    /// Request bytes (bodies and decoded tensors) held by requests being served now.
    pub inflight_request_bytes: Arc<hot::HeldBytes>,
    /// Live [`VersionMetrics`] per label set: a reloaded version shares its labels with the one it
    /// replaces, whose drop must not clear them.
    live: Mutex<HashMap<(String, String, String), usize>>,
    pub reload: ReloadMetrics,
}

/// The model lifecycle: loads, swaps and each version's state.
pub struct ReloadMetrics {
    pub loads: IntCounterVec,
    pub load_duration: HistogramVec,
    pub swaps: IntCounterVec,
    pub version_info: IntGaugeVec,
}

impl ReloadMetrics {
    fn new(r: &Registry) -> Self {
        ReloadMetrics {
            loads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "keel_model_loads_total",
                        "Model version loads by outcome (success, failure).",
                    ),
                    &["model", "outcome"],
                )
                .expect("valid counter"),
            ),
            load_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "keel_model_load_duration_seconds",
                        "Time to load, check and warm up one model version, in seconds.",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                    &["model"],
                )
                .expect("valid histogram"),
            ),
            swaps: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "keel_model_swaps_total",
                        "Times a model's set of serving versions was replaced while it was serving.",
                    ),
                    &["model"],
                )
                .expect("valid counter"),
            ),
            version_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "keel_model_version_info",
                        "1 for each model version the repository knows, by state (READY, UNAVAILABLE).",
                    ),
                    &["model", "version", "state"],
                )
                .expect("valid gauge"),
            ),
        }
    }

    /// Replaces the version-state series of `model` with `states`.
    pub fn set_versions(
        &self,
        model: &str,
        before: &[(u64, &'static str)],
        now: &[(u64, &'static str)],
    ) {
        for (version, state) in before {
            if !now.contains(&(*version, *state)) {
                let _ =
                    self.version_info
                        .remove_label_values(&[model, &version.to_string(), state]);
            }
        }
        for (version, state) in now {
            self.version_info
                .with_label_values(&[model, &version.to_string(), state])
                .set(1);
        }
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... (Linux).
        r.register(Box::new(ProcessCollector::for_self()))
            .expect("the process collector registers once");
        let mv = &["model", "version"];
        let versions = Arc::new(hot::Versions::default());
        let held_bytes = Arc::new(hot::HeldBytes::default());
        r.register(Box::new(hot::Families::new(
            versions.clone(),
            held_bytes.clone(),
        )))
        .expect("the request path's families register once");
        let metrics = Metrics {
            versions,
            inflight: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("keel_inflight_requests", "Requests being served right now."),
                    mv,
                )
                .expect("valid gauge"),
            ),
            model_info: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "keel_model_info",
                        "1 for each model version being served, with its backend.",
                    ),
                    &["model", "version", "backend"],
                )
                .expect("valid gauge"),
            ),
            requests_refused: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "keel_requests_refused_total",
                        "Requests refused before they reached a model, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid counter"),
            ),
            inflight_request_bytes: held_bytes,
            live: Mutex::new(HashMap::new()),
            reload: ReloadMetrics::new(&r),
            registry: r,
        };
        Arc::new(metrics)
    }

    /// Resolves every label set of one model version.
    pub fn version(self: &Arc<Self>, model: &str, version: u64, backend: &str) -> VersionMetrics {
        let v = version.to_string();
        let mv = [model, v.as_str()];
        self.model_info
            .with_label_values(&[model, v.as_str(), backend])
            .set(1);
        *self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((model.to_string(), v.clone(), backend.to_string()))
            .or_default() += 1;
        let cells = self.versions.hold(model, &v);
        VersionMetrics {
            labels: (model.to_string(), v.clone(), backend.to_string()),
            cells: cells.clone(),
            queue_depth: QueueDepth(cells),
            inflight: self.inflight.with_label_values(&mv),
            registry: self.clone(),
        }
    }

    /// Where other components (the embedded drift monitor) register their families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition (format 0.0.4), process metrics included.
    pub fn encode(&self) -> Vec<u8> {
        let families = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encoding into a Vec cannot fail");
        out
    }
}

/// One model version's metric handles. When the version is unloaded its info gauge is removed, so
/// dashboards show what is being served; its counters stay, as Prometheus counters should.
pub struct VersionMetrics {
    labels: (String, String, String),
    /// Shared with the other instances of the same model version (a reload's old and new).
    cells: Arc<hot::Cells>,
    pub queue_depth: QueueDepth,
    pub inflight: IntGauge,
    registry: Arc<Metrics>,
}

/// `keel_queue_depth` of one version.
pub struct QueueDepth(Arc<hot::Cells>);

impl QueueDepth {
    pub fn inc(&self) {
        self.0.queue_depth_add(1);
    }

    pub fn dec(&self) {
        self.0.queue_depth_add(-1);
    }

    pub fn get(&self) -> i64 {
        self.0.queue_depth()
    }
}

impl VersionMetrics {
    pub fn record_request(&self, protocol: Protocol, outcome: Outcome, elapsed: Duration) {
        let p = Protocol::ALL
            .iter()
            .position(|x| *x == protocol)
            .unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        let seconds = (outcome == Outcome::Success).then_some(elapsed.as_secs_f64());
        self.cells.request(p, o, seconds);
    }

    /// A request answered with `rows` rows after `queue` in the queue.
    pub fn record_answer(&self, rows: u64, queue: Duration) {
        self.cells.answered(rows, queue.as_secs_f64());
    }

    /// One backend execution of `rows` rows.
    pub fn record_execution(&self, compute: Duration, rows: usize) {
        self.cells.executed(compute.as_secs_f64(), rows as f64);
    }
}

impl Drop for VersionMetrics {
    fn drop(&mut self) {
        self.registry
            .versions
            .release(&self.labels.0, &self.labels.1);
        let mut live = self.registry.live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(count) = live.get_mut(&self.labels) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        live.remove(&self.labels);
        let (model, version, backend) = &self.labels;
        let r = &self.registry;
        let _ = r.model_info.remove_label_values(&[model, version, backend]);
        if live.keys().any(|(m, v, _)| m == model && v == version) {
            // The same version on another backend still serves, on these same series.
            return;
        }
        // A retired version's series go with it: with a swap every few seconds they would otherwise
        // pile up without bound (Prometheus treats the disappearance as staleness).
        let _ = r.inflight.remove_label_values(&[model, version]);
    }
}

//! The request path's metrics of every model version, in per-thread shards ([`super::shards`]), and the
//! collector that adds them up into their Prometheus families at each scrape. The families and series
//! are those the `prometheus` vectors exposed before: every protocol and outcome of a served version,
//! zeros included, gone once no instance of the version is left.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::shards::{Hist, SHARDS, Writer};
use super::{Outcome, Protocol, ROWS_BUCKETS, SECONDS_BUCKETS};

/// Buckets of a seconds histogram: one per bound and `+Inf`.
const SECONDS: usize = SECONDS_BUCKETS.len() + 1;
const ROWS: usize = ROWS_BUCKETS.len() + 1;

/// One thread's cells for one version, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    requests: [[AtomicU64; Outcome::ALL.len()]; Protocol::ALL.len()],
    rows: AtomicU64,
    queue_depth: AtomicI64,
    request_duration: [Hist<SECONDS>; Protocol::ALL.len()],
    queue_duration: Hist<SECONDS>,
    compute_duration: Hist<SECONDS>,
    batch_rows: Hist<ROWS>,
}

/// A model version's cells: what its [`super::VersionMetrics`] write and its series show.
pub struct Cells {
    shards: Box<[Shard]>,
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl Cells {
    fn mine(&self) -> (&Shard, Writer) {
        let w = Writer::this_thread();
        (&self.shards[w.index], w)
    }

    pub fn request(&self, protocol: usize, outcome: usize, seconds: Option<f64>) {
        let (shard, w) = self.mine();
        w.add(&shard.requests[protocol][outcome], 1);
        if let Some(seconds) = seconds {
            shard.request_duration[protocol].observe(w, SECONDS_BUCKETS, seconds);
        }
    }

    pub fn answered(&self, rows: u64, queue_seconds: f64) {
        let (shard, w) = self.mine();
        w.add(&shard.rows, rows);
        shard
            .queue_duration
            .observe(w, SECONDS_BUCKETS, queue_seconds);
    }

    pub fn executed(&self, compute_seconds: f64, rows: f64) {
        let (shard, w) = self.mine();
        shard
            .compute_duration
            .observe(w, SECONDS_BUCKETS, compute_seconds);
        shard.batch_rows.observe(w, ROWS_BUCKETS, rows);
    }

    pub fn queue_depth_add(&self, n: i64) {
        let (shard, w) = self.mine();
        w.add_signed(&shard.queue_depth, n);
    }

    pub fn queue_depth(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.queue_depth.load(Relaxed))
            .sum()
    }

    fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows.load(Relaxed)).sum()
    }

    fn requests(&self, protocol: usize, outcome: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.requests[protocol][outcome].load(Relaxed))
            .sum()
    }

    fn histogram<const N: usize>(
        &self,
        bounds: &[f64],
        each: impl Fn(&Shard) -> &Hist<N>,
    ) -> proto::Histogram {
        let (mut counts, mut sum) = ([0u64; N], 0.0);
        for shard in self.shards.iter() {
            each(shard).add_to(&mut counts, &mut sum);
        }
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut b = proto::Bucket::default();
                b.set_cumulative_count(cumulative);
                b.set_upper_bound(*bound);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_sample_count(counts.iter().sum());
        h.set_sample_sum(sum);
        h.set_bucket(buckets);
        h
    }
}

struct Live {
    cells: Arc<Cells>,
    /// The [`super::VersionMetrics`] holding `cells`: a reloaded version shares the series of the one
    /// it replaces.
    holders: usize,
}

#[derive(Default)]
struct Held {
    /// By (model, version).
    live: BTreeMap<(String, String), Live>,
    /// The rows of the versions gone, by model, which `keel_model_rows_total` keeps counting.
    gone: HashMap<String, u64>,
}

/// Every live version's cells.
#[derive(Default)]
pub struct Versions {
    held: Mutex<Held>,
}

impl Versions {
    /// The cells of `model`'s `version`, shared with its other holders.
    pub fn hold(&self, model: &str, version: &str) -> Arc<Cells> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held
            .live
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| Live {
                cells: Arc::default(),
                holders: 0,
            });
        entry.holders += 1;
        entry.cells.clone()
    }

    /// One holder let go; the last takes the version's series away (its rows stay in the model's).
    pub fn release(&self, model: &str, version: &str) {
        let mut guard = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Held { live, gone } = &mut *guard;
        let key = (model.to_string(), version.to_string());
        let Some(entry) = live.get_mut(&key) else {
            return;
        };
        entry.holders -= 1;
        if entry.holders == 0 {
            let rows = entry.cells.rows();
            live.remove(&key);
            *gone.entry(model.to_string()).or_default() += rows;
        }
    }
}

/// The families, as the registry sees them: the versions' and `keel_inflight_request_bytes`.
pub struct Families {
    versions: Arc<Versions>,
    held_bytes: Arc<HeldBytes>,
    descs: [(Desc, MetricType); 9],
}

fn desc(kind: MetricType, name: &str, help: &str, labels: &[&str]) -> (Desc, MetricType) {
    let desc = Desc::new(
        name.to_string(),
        help.to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
        HashMap::new(),
    )
    .expect("valid metric description");
    (desc, kind)
}

const REQUESTS: usize = 0;
const ROWS_TOTAL: usize = 1;
const MODEL_ROWS: usize = 2;
const REQUEST_DURATION: usize = 3;
const QUEUE_DURATION: usize = 4;
const COMPUTE_DURATION: usize = 5;
const BATCH_ROWS: usize = 6;
const QUEUE_DEPTH: usize = 7;
const HELD_BYTES: usize = 8;

impl Families {
    pub fn new(versions: Arc<Versions>, held_bytes: Arc<HeldBytes>) -> Self {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let mv = &["model", "version"];
        Families {
            versions,
            held_bytes,
            descs: [
                desc(
                    COUNTER,
                    "keel_inference_requests_total",
                    "Inference requests by how they ended.",
                    &["model", "version", "protocol", "outcome"],
                ),
                desc(
                    COUNTER,
                    "keel_inference_rows_total",
                    "Rows inferred successfully.",
                    mv,
                ),
                desc(
                    COUNTER,
                    "keel_model_rows_total",
                    "Rows inferred successfully by any version of the model (kept across swaps).",
                    &["model"],
                ),
                desc(
                    HISTOGRAM,
                    "keel_request_duration_seconds",
                    "Time from a decoded request to its outputs, in seconds.",
                    &["model", "version", "protocol"],
                ),
                desc(
                    HISTOGRAM,
                    "keel_queue_duration_seconds",
                    "Time requests waited in the scheduler queue, in seconds.",
                    mv,
                ),
                desc(
                    HISTOGRAM,
                    "keel_compute_duration_seconds",
                    "Time of one backend execution (a whole batch), in seconds.",
                    mv,
                ),
                desc(
                    HISTOGRAM,
                    "keel_batch_rows",
                    "Rows per backend execution.",
                    mv,
                ),
                desc(
                    GAUGE,
                    "keel_queue_depth",
                    "Requests waiting in the scheduler queue.",
                    mv,
                ),
                desc(
                    GAUGE,
                    "keel_inflight_request_bytes",
                    "Request bytes (bodies and decoded tensors) held by requests being served now.",
                    &[],
                ),
            ],
        }
    }

    fn family(&self, index: usize, metrics: Vec<proto::Metric>) -> MetricFamily {
        let (desc, kind) = &self.descs[index];
        let mut family = MetricFamily::default();
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(*kind);
        family.set_metric(metrics);
        family
    }
}

/// A series' labels, sorted by name as the registry's own series have them.
fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut pairs = pairs.to_vec();
    pairs.sort_by_key(|(name, _)| *name);
    pairs
        .into_iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

fn counter(labels: Vec<LabelPair>, value: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    let mut m = proto::Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, value: i64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value as f64);
    let mut m = proto::Metric::from_label(labels);
    m.set_gauge(g);
    m
}

fn histogram(labels: Vec<LabelPair>, h: proto::Histogram) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    m.set_histogram(h);
    m
}

impl Collector for Families {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().map(|(desc, _)| desc).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let guard = self.versions.held.lock().unwrap_or_else(|e| e.into_inner());
        let Held { live, gone } = &*guard;
        let mut out: [Vec<proto::Metric>; 9] = Default::default();
        let mut model_rows: BTreeMap<&str, u64> =
            gone.iter().map(|(m, rows)| (m.as_str(), *rows)).collect();
        for ((model, version), entry) in live {
            let cells = &entry.cells;
            let (model, version) = (model.as_str(), version.as_str());
            let mv = [("model", model), ("version", version)];
            for (p, protocol) in Protocol::ALL.iter().enumerate() {
                for (o, outcome) in Outcome::ALL.iter().enumerate() {
                    out[REQUESTS].push(counter(
                        labels(&[
                            ("model", model),
                            ("version", version),
                            ("protocol", protocol.label()),
                            ("outcome", outcome.label()),
                        ]),
                        cells.requests(p, o),
                    ));
                }
                out[REQUEST_DURATION].push(histogram(
                    labels(&[
                        ("model", model),
                        ("version", version),
                        ("protocol", protocol.label()),
                    ]),
                    cells.histogram(SECONDS_BUCKETS, |s| &s.request_duration[p]),
                ));
            }
            let rows = cells.rows();
            out[ROWS_TOTAL].push(counter(labels(&mv), rows));
            *model_rows.entry(model).or_default() += rows;
            out[QUEUE_DURATION].push(histogram(
                labels(&mv),
                cells.histogram(SECONDS_BUCKETS, |s| &s.queue_duration),
            ));
            out[COMPUTE_DURATION].push(histogram(
                labels(&mv),
                cells.histogram(SECONDS_BUCKETS, |s| &s.compute_duration),
            ));
            out[BATCH_ROWS].push(histogram(
                labels(&mv),
                cells.histogram(ROWS_BUCKETS, |s| &s.batch_rows),
            ));
            out[QUEUE_DEPTH].push(gauge(labels(&mv), cells.queue_depth()));
        }
        for (model, rows) in model_rows {
            out[MODEL_ROWS].push(counter(labels(&[("model", model)]), rows));
        }
        out[HELD_BYTES].push(gauge(Vec::new(), self.held_bytes.get()));
        out.into_iter()
            .enumerate()
            // A family with no series is left out, as an empty vector's is.
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|(i, metrics)| self.family(i, metrics))
            .collect()
    }
}

/// `keel_inflight_request_bytes`: read at each scrape from the in-flight budgets' own counters (see
/// budget.rs), so a request's bytes update one shared counter, not that and a gauge as well.
#[derive(Default)]
pub struct HeldBytes {
    budgets: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicUsize>>>,
}

impl HeldBytes {
    /// Reports `used` (a budget's bytes held) from now on, until the budget is gone.
    pub fn track(&self, used: &Arc<std::sync::atomic::AtomicUsize>) {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets.retain(|b| b.strong_count() > 0);
        budgets.push(Arc::downgrade(used));
    }

    /// The bytes held now, by every budget reported here.
    pub fn get(&self) -> i64 {
        let budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .iter()
            .filter_map(|b| b.upgrade())
            .map(|used| used.load(Relaxed) as i64)
            .sum()
    }
}

#[cfg(test)]
#[path = "hot_tests.rs"]
mod tests;

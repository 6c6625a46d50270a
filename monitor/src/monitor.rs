//! The drift monitor: routes prediction records and feedback to the state of their model version,
//! evaluates rules on a timer and hands transitions to the alert sink.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Registry;

use crate::batch::RowBatch;
use crate::error::MonitorError;
use crate::event::AlertSink;
use crate::feedback::{Evictions, FeedbackStore, Joined};
use crate::metrics::Metrics;
use crate::performance::Skip;
use crate::record::{FeedbackRecord, PredictionRecord};
use crate::report::{DriftReport, FeedbackSummary};
use crate::settings::{ModelSpec, MonitorConfig};
use crate::version::Tally;
use crate::version::VersionState;

/// The `model` label of records and feedback for a model never monitored here: their names come
/// from clients, so they share one series instead of each getting its own.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// Tracks every serving model version. One lock guards all state: records arrive from a single
/// drain thread and evaluation takes milliseconds, so finer locking would buy nothing.
pub struct Monitor {
    config: MonitorConfig,
    metrics: Metrics,
    alerts: Option<AlertSink>,
    inner: Mutex<Inner>,
}

struct Inner {
    models: HashMap<String, BTreeMap<u64, VersionState>>,
    store: FeedbackStore,
    evictions: HashMap<String, Arc<Evictions>>,
}

impl Inner {
    /// Counts `rows` rows of one (model, version) with `ingest` into that version's state. Rows the
    /// window refuses, and all rows of a version or model not monitored here, are counted as ignored
    /// by reason (see [`Monitor::ingest`]).
    fn ingest_rows(
        &mut self,
        metrics: &Metrics,
        model: &str,
        version: u64,
        rows: usize,
        ingest: impl FnOnce(&mut VersionState, &mut FeedbackStore) -> (u64, u64),
    ) {
        let rows = rows as u64;
        let state = self.models.get_mut(model).and_then(|v| v.get_mut(&version));
        let (label, ignored) = match state {
            Some(state) => {
                let (late, future) = ingest(state, &mut self.store);
                (model, [("late", late), ("future", future)])
            }
            // A model ever monitored here has a bounded name: it came with a version spec.
            None if self.evictions.contains_key(model) => {
                (model, [("unknown_version", rows), ("future", 0)])
            }
            None => (UNKNOWN_MODEL, [("unknown_model", rows), ("future", 0)]),
        };
        for (reason, count) in ignored {
            if count > 0 {
                metrics
                    .records_ignored
                    .with_label_values(&[label, reason])
                    .inc_by(count);
            }
        }
    }
}

/// The second thread that tallies half of a large run, started once, on the first run that needs it,
/// where a second core can run beside the drain (asked once: it reads the cgroup's CPU quota). `None`
/// on one core, or when no thread could be started: the drain counts in place.
///
/// It lives as long as the process because a thread started per run cost more than its half of the
/// counting: at 256-row requests, dozens of thread starts and exits a second made mimalloc hand the
/// serving threads fresh pages, each first touched as a zeroed 2 MiB huge page (docs/performance.md).
static TALLY_HELPER: std::sync::LazyLock<Option<rayon_core::ThreadPool>> =
    std::sync::LazyLock::new(|| {
        if !std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
            return None;
        }
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "keel-monitor-tally".into())
            .build()
            .ok()
    });

/// Rows in one call to [`Monitor::ingest_batches`] from which two threads count them.
const PARALLEL_ROWS: usize = 8192;
/// Rows per request, on average, from which two threads count them: small requests cost more to
/// add from a scratch bucket than to count in place.
const PARALLEL_ROWS_PER_REQUEST: usize = 32;

/// Each request's values counted ahead into a scratch bucket of its version's layout (none for a
/// request of a version not monitored here), by two threads, each half of the requests.
struct Tallies {
    counts: Vec<u64>,
    /// Out-of-range values of each half's requests, in order.
    out_of_range: [Vec<(usize, f64)>; 2],
    spans: Vec<Option<Span>>,
}

/// A request's part of [`Tallies`].
#[derive(Clone, Copy, Default)]
struct Span {
    counts: usize,
    counts_len: usize,
    half: usize,
    out_of_range: usize,
    out_of_range_len: usize,
    skipped: u64,
}

impl Tallies {
    /// Tallies `batches`, the second half on `helper`'s thread; `None` when the helper failed.
    fn count(
        helper: &rayon_core::ThreadPool,
        inner: &Inner,
        batches: &[RowBatch<'_>],
    ) -> Option<Tallies> {
        let state = |b: &RowBatch<'_>| inner.models.get(b.model).and_then(|v| v.get(&b.version));
        let half = batches.len() / 2;
        let mut spans = Vec::with_capacity(batches.len());
        let mut counts_len = 0;
        let mut second = None;
        for (i, batch) in batches.iter().enumerate() {
            if i == half {
                second = Some(counts_len);
            }
            spans.push(state(batch).map(|s| {
                let span = Span {
                    counts: counts_len,
                    counts_len: s.bucket_len().0,
                    half: usize::from(i >= half),
                    ..Span::default()
                };
                counts_len += span.counts_len;
                span
            }));
        }
        let mut counts = vec![0u64; counts_len];
        let second = second.unwrap_or(counts_len);
        let (counts_a, counts_b) = counts.split_at_mut(second);
        let (spans_a, spans_b) = spans.split_at_mut(half);
        let (batches_a, batches_b) = batches.split_at(half);
        let tally = |batches: &[RowBatch<'_>],
                     spans: &mut [Option<Span>],
                     counts: &mut [u64],
                     base: usize| {
            let mut out_of_range = Vec::new();
            for (batch, span) in batches.iter().zip(spans.iter_mut()) {
                if let (Some(span), Some(state)) = (span.as_mut(), state(batch)) {
                    let at = span.counts - base;
                    span.out_of_range = out_of_range.len();
                    span.skipped = state.tally(
                        batch,
                        &mut counts[at..at + span.counts_len],
                        &mut out_of_range,
                    );
                    span.out_of_range_len = out_of_range.len() - span.out_of_range;
                }
            }
            out_of_range
        };
        let tally = &tally;
        let mut helped = None;
        let first = helper.in_place_scope(|scope| {
            let helped = &mut helped;
            scope.spawn(move |_| {
                // A panic there leaves `helped` empty and the caller counts in place, as it does
                // without a helper, rather than taking the drain thread down with it.
                let half = || tally(batches_b, spans_b, counts_b, second);
                *helped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(half)).ok();
            });
            tally(batches_a, spans_a, counts_a, 0)
        });
        Some(Tallies {
            counts,
            out_of_range: [first, helped?],
            spans,
        })
    }

    fn get(&self, i: usize) -> Option<Tally<'_>> {
        let span = self.spans.get(i).copied().flatten()?;
        let out_of_range = &self.out_of_range[span.half];
        Some(Tally {
            counts: &self.counts[span.counts..span.counts + span.counts_len],
            out_of_range: &out_of_range
                [span.out_of_range..span.out_of_range + span.out_of_range_len],
            skipped: span.skipped,
        })
    }
}

impl Monitor {
    /// Registers the monitor's metrics in `registry` (once per registry); `alerts` receives rule
    /// transitions.
    pub fn new(
        config: MonitorConfig,
        registry: &Registry,
        alerts: Option<AlertSink>,
    ) -> Result<Arc<Monitor>, MonitorError> {
        config.validate()?;
        let metrics = Metrics::new(registry)?;
        let ttl_ms = u64::try_from(config.feedback_ttl.as_millis()).unwrap_or(u64::MAX);
        let store = FeedbackStore::new(config.feedback_capacity, ttl_ms);
        Ok(Arc::new(Monitor {
            config,
            metrics,
            alerts,
            inner: Mutex::new(Inner {
                models: HashMap::new(),
                store,
                evictions: HashMap::new(),
            }),
        }))
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Starts monitoring a version with a fresh window, replacing any earlier spec for the same
    /// (model, version). Fails, changing nothing, on invalid settings or baseline.
    pub fn set_version(&self, spec: ModelSpec) -> Result<(), MonitorError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let prepared = VersionState::prepare(&spec, &inner.store)?;
        let evictions = inner
            .evictions
            .entry(spec.model.clone())
            .or_insert_with(|| {
                let m = &self.metrics.feedback_evicted;
                Arc::new(Evictions {
                    ttl: m.with_label_values(&[spec.model.as_str(), "ttl"]),
                    capacity: m.with_label_values(&[spec.model.as_str(), "capacity"]),
                })
            })
            .clone();
        let versions = inner.models.entry(spec.model.clone()).or_default();
        // The old state's series go first: the new one re-creates series with the same labels.
        if let Some(old) = versions.remove(&spec.version) {
            old.remove_metrics(&self.metrics);
        }
        let state = VersionState::new(&spec, prepared, &self.config, &self.metrics, evictions);
        versions.insert(spec.version, state);
        Ok(())
    }

    /// Stops tracking a version and removes its metric series.
    pub fn retire_version(&self, model: &str, version: u64) {
        let mut inner = self.lock();
        let Some(versions) = inner.models.get_mut(model) else {
            return;
        };
        if let Some(state) = versions.remove(&version) {
            state.remove_metrics(&self.metrics);
        }
        if versions.is_empty() {
            inner.models.remove(model);
        }
    }

    /// Counts records into their version's window, looking the version up once per run of
    /// records with the same (model, version). Records of unknown versions, older than the window
    /// or more than a day ahead of the latest time seen are counted as ignored (reasons
    /// `unknown_version`, `late`, `future`); those of a model never monitored here under the one
    /// label `model="_unknown"`, reason `unknown_model`.
    pub fn ingest(&self, records: &[PredictionRecord]) {
        let mut inner = self.lock();
        let mut rest = records;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|r| r.version != first.version || r.model != first.model)
                .unwrap_or(rest.len());
            let (batch, tail) = rest.split_at(run);
            rest = tail;
            inner.ingest_rows(
                &self.metrics,
                &first.model,
                first.version,
                batch.len(),
                |state, store| state.ingest(batch, store),
            );
        }
    }

    /// Counts requests' logged rows into their version's window, as [`Monitor::ingest`] counts
    /// the same rows as records (ignored rows counted alike), column by column from the tensors.
    ///
    /// A large run of large requests is counted by two threads: each tallies half of the requests
    /// into scratch buckets (binning is most of the work and touches no shared state), then this
    /// thread adds them to the window request by request, in order, as if it had counted them. At a
    /// 256-row peak one thread alone bins fewer rows than two cores serve.
    pub fn ingest_batches(&self, batches: &[RowBatch<'_>]) {
        self.ingest_batches_with(batches, true);
    }

    /// [`Monitor::ingest_batches`] on this thread alone, however large the run: for a caller that
    /// keeps up by itself, where a second thread would only take a core from the requests being
    /// served (the same counts either way).
    pub fn ingest_batches_in_place(&self, batches: &[RowBatch<'_>]) {
        self.ingest_batches_with(batches, false);
    }

    fn ingest_batches_with(&self, batches: &[RowBatch<'_>], helper: bool) {
        let mut inner = self.lock();
        let rows: usize = batches.iter().map(RowBatch::len).sum();
        let large = rows >= PARALLEL_ROWS && rows >= PARALLEL_ROWS_PER_REQUEST * batches.len();
        let tallies = (helper && large)
            .then(|| TALLY_HELPER.as_ref())
            .flatten()
            .and_then(|helper| Tallies::count(helper, &inner, batches));
        // A run of requests to one version finds its state once: single-row traffic is thousands of
        // requests a run, and a lookup by name (hash and tree) cost more than binning a value.
        let mut at = 0;
        while let Some(first) = batches.get(at) {
            let (model, version) = (first.model, first.version);
            let end = batches[at..]
                .iter()
                .position(|b| b.version != version || b.model != model)
                .map_or(batches.len(), |n| at + n);
            let run = &batches[at..end];
            let rows = run.iter().map(RowBatch::len).sum();
            inner.ingest_rows(&self.metrics, model, version, rows, |state, store| {
                let (mut late, mut future) = (0, 0);
                for (i, batch) in run.iter().enumerate() {
                    let tally = tallies.as_ref().and_then(|t| t.get(at + i));
                    let (l, f) = state.ingest_batch(batch, tally, store);
                    late += l;
                    future += f;
                }
                (late, future)
            });
            at = end;
        }
    }

    /// Joins feedback with logged predictions and counts it into the predicting version's
    /// feedback window.
    pub fn feedback(&self, items: &[FeedbackRecord]) -> FeedbackSummary {
        let mut guard = self.lock();
        let Inner {
            models,
            store,
            evictions,
        } = &mut *guard;
        let mut total = FeedbackSummary::default();
        let mut rest = items;
        while let Some(first) = rest.first() {
            let model = first.model.as_str();
            let run = rest
                .iter()
                .position(|f| f.model != model)
                .unwrap_or(rest.len());
            let (batch, tail) = rest.split_at(run);
            rest = tail;
            let mut summary = FeedbackSummary::default();
            for item in batch {
                let Joined::Found { version, predicted } =
                    store.take(model, &item.request_id, item.row, item.timestamp_ms)
                else {
                    summary.unmatched += 1;
                    continue;
                };
                let Some(state) = models.get_mut(model).and_then(|v| v.get_mut(&version)) else {
                    summary.unmatched += 1;
                    continue;
                };
                let truth = store.value(&item.truth);
                match state.feedback(item.timestamp_ms, predicted, truth) {
                    Ok(()) => summary.matched += 1,
                    Err(Skip::Invalid | Skip::Late) => summary.invalid += 1,
                }
            }
            // Model names in feedback come from clients: only models ever monitored get series of
            // their own; the others share one.
            let label = if evictions.contains_key(model) {
                model
            } else {
                UNKNOWN_MODEL
            };
            for (outcome, n) in [
                ("matched", summary.matched),
                ("unmatched", summary.unmatched),
                ("invalid", summary.invalid),
            ] {
                if n > 0 {
                    self.metrics
                        .feedback_total
                        .with_label_values(&[label, outcome])
                        .inc_by(n);
                }
            }
            total.matched += summary.matched;
            total.unmatched += summary.unmatched;
            total.invalid += summary.invalid;
        }
        total
    }

    /// Advances every window to `now_ms` (unix milliseconds), expires old predictions, updates
    /// gauges, runs the rules and sends their transitions to the alert sink (outside the lock).
    pub fn evaluate(&self, now_ms: u64) {
        let mut events = Vec::new();
        {
            let mut guard = self.lock();
            let Inner { models, store, .. } = &mut *guard;
            store.expire(now_ms);
            for state in models.values_mut().flat_map(BTreeMap::values_mut) {
                state.evaluate(now_ms, &self.metrics, &mut events);
            }
        }
        if let Some(sink) = &self.alerts {
            for event in events {
                sink(event);
            }
        }
    }

    /// The current window of a version, without advancing time.
    pub fn report(&self, model: &str, version: u64) -> Option<DriftReport> {
        let inner = self.lock();
        Some(inner.models.get(model)?.get(&version)?.report())
    }

    /// The (model, version) pairs being monitored.
    pub fn versions(&self) -> Vec<(String, u64)> {
        let inner = self.lock();
        let mut all: Vec<(String, u64)> = inner
            .models
            .iter()
            .flat_map(|(m, vs)| vs.keys().map(|v| (m.clone(), *v)))
            .collect();
        all.sort();
        all
    }

    /// Calls [`Monitor::evaluate`] with wall-clock time every `evaluate_every`, forever.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.evaluate_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Evaluation takes the lock that ingest takes and computes every statistic: on the
            // blocking pool, so it never holds up an async worker serving requests.
            let monitor = self.clone();
            if tokio::task::spawn_blocking(move || monitor.evaluate(now_ms()))
                .await
                .is_err()
            {
                tracing::error!("a monitor evaluation panicked");
            }
        }
    }

    /// A panic elsewhere while holding the lock leaves counts that are still consistent enough
    /// to keep monitoring, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

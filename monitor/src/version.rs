//! Everything tracked for one serving model version: its compiled baseline bins, drift window,
//! feedback window, rules and metric handles.

use std::sync::Arc;

use prometheus::IntCounter;

use crate::bins::{ColumnBins, RowBinner};
use crate::calibration::{EstimateWindow, EstimatedPerformance};
use crate::error::MonitorError;
use crate::event::{self, AlertEvent, Evidence};
use crate::feedback::{Evictions, FeedbackStore, Value};
use crate::metrics::{Metrics, set_or_remove};
use crate::performance::{FeedbackWindow, Skip};
use crate::psi::psi_of_counts;
use crate::report::{AlertState, ColumnDrift, DriftReport, FeedbackMetrics};
use crate::rules::{Metric, Rule, Transition};
use crate::settings::{DEFAULT_MIN_FEEDBACK, ModelSpec, MonitorConfig};
use crate::stats::{ColumnInput, ColumnStat, ColumnStats, OutOfRange, column_stats};
use crate::window::DriftWindow;

mod ingest;

pub(crate) use ingest::Tally;

/// Features and outputs named in alert events.
const TOP_FEATURES: usize = 5;

struct Tracked {
    bins: ColumnBins,
    /// First bin of this column in the window's bin layout.
    offset: usize,
    /// Numeric columns with a training range: index `r` of its out-of-range tallies, window sums
    /// `4r..4r + 4`: count and summed distance below the range, then above it (adjacent, so an
    /// out-of-range value touches one cache line).
    range: Option<usize>,
}

/// Columns read from one tensor, so a record's tensor is looked up once per tensor, not per
/// column.
struct Group {
    tensor: String,
    /// (element index in the tensor's row, column).
    members: Vec<(usize, usize)>,
    /// The members again, each with all its single-row binning needs, when every one is a numeric
    /// column a [`RowBinner`] takes (a single-row request's path; `None`: the general one).
    row: Option<Vec<RowMember>>,
}

/// A [`Group`] member as a single-row request counts it.
struct RowMember {
    binner: RowBinner,
    /// Element index in the tensor's row.
    index: usize,
    /// First bin of the column in the window's bin layout.
    offset: usize,
    range: Option<usize>,
}

pub(crate) struct VersionState {
    model: String,
    version: u64,
    version_label: String,
    /// Input features first, then outputs.
    columns: Vec<Tracked>,
    n_features: usize,
    input_groups: Vec<Group>,
    output_groups: Vec<Group>,
    window: DriftWindow,
    /// What each Prometheus bin counter has been told so far: `evaluate` adds what the window
    /// counted since, keeping atomics (and any second increment) off the per-record path.
    reported: Vec<u64>,
    bin_counters: Vec<IntCounter>,
    records_total: IntCounter,
    values_skipped: IntCounter,
    feedback: Option<FeedbackWindow>,
    /// Estimated accuracy, when the baseline has a calibration.
    estimate: Option<EstimateWindow>,
    prediction_output: Option<String>,
    evictions: Arc<Evictions>,
    rules: Vec<Rule>,
    min_samples: u64,
    min_feedback: u64,
}

/// A column's drift at one moment.
struct Drift {
    features: Vec<ColumnDrift>,
    outputs: Vec<ColumnDrift>,
}

/// The fallible part of setting up a version, done before anything is replaced.
pub(crate) struct Prepared {
    rules: Vec<Rule>,
    positive: Value,
}

impl VersionState {
    /// Compiles the rules and checks them against the baseline.
    pub fn prepare(spec: &ModelSpec, store: &FeedbackStore) -> Result<Prepared, MonitorError> {
        let settings = &spec.settings;
        settings.validate()?;
        if let Some(b) = &spec.baseline {
            b.validate()?;
        }
        let rules = settings
            .effective_rules()
            .iter()
            .map(Rule::new)
            .collect::<Result<Vec<_>, _>>()?;
        for rule in &rules {
            if let Metric::CsiFeature(name) = &rule.metric
                && !spec
                    .baseline
                    .iter()
                    .flat_map(|b| &b.features)
                    .any(|f| &f.name == name)
            {
                return Err(MonitorError::Settings(format!(
                    "rule {:?}: the baseline has no input feature {name:?}",
                    rule.name
                )));
            }
            if let Metric::Stat(_, Some(name)) = &rule.metric
                && !spec
                    .baseline
                    .iter()
                    .flat_map(|b| b.features.iter().chain(&b.outputs))
                    .any(|f| &f.name == name)
            {
                return Err(MonitorError::Settings(format!(
                    "rule {:?}: the baseline has no feature or output {name:?}",
                    rule.name
                )));
            }
            if rule.metric == Metric::EstimatedAccuracy
                && spec
                    .baseline
                    .as_ref()
                    .is_none_or(|b| b.calibration.is_none())
            {
                return Err(MonitorError::Settings(format!(
                    "rule {:?}: estimated_accuracy needs a baseline with a calibration \
                     (keel baseline --label-column)",
                    rule.name
                )));
            }
        }
        let positive = store
            .value(&settings.positive_label)
            .ok_or_else(|| MonitorError::Settings("positive_label must not be NaN".into()))?;
        Ok(Prepared { rules, positive })
    }

    /// Creates the version's state and its metric series.
    pub fn new(
        spec: &ModelSpec,
        prepared: Prepared,
        config: &MonitorConfig,
        metrics: &Metrics,
        evictions: Arc<Evictions>,
    ) -> VersionState {
        let settings = &spec.settings;
        let Prepared { rules, positive } = prepared;
        let (features, outputs) = match &spec.baseline {
            Some(b) => (b.features.as_slice(), b.outputs.as_slice()),
            None => (&[][..], &[][..]),
        };
        let mut offset = 0;
        let mut ranged = 0;
        let mut columns = Vec::with_capacity(features.len() + outputs.len());
        for c in features.iter().chain(outputs) {
            let bins = ColumnBins::new(c);
            let len = bins.len();
            let range = bins.range().map(|_| {
                ranged += 1;
                ranged - 1
            });
            columns.push(Tracked {
                bins,
                offset,
                range,
            });
            offset += len;
        }
        let version_label = spec.version.to_string();
        let mv = [spec.model.as_str(), version_label.as_str()];
        let mut bin_counters = Vec::with_capacity(offset);
        for t in &columns {
            for (label, expected) in t.bins.labels.iter().zip(&t.bins.expected) {
                let labels = [mv[0], mv[1], t.bins.name.as_str(), label.as_str()];
                bin_counters.push(metrics.bin_rows.with_label_values(&labels));
                metrics
                    .baseline_proportion
                    .with_label_values(&labels)
                    .set(*expected);
            }
        }
        for rule in &rules {
            metrics
                .alert
                .with_label_values(&[mv[0], mv[1], rule.name.as_str()])
                .set(0);
        }
        metrics.window_rows.with_label_values(&mv).set(0);
        let task = settings.effective_task();
        if task.is_some() {
            metrics.feedback_window_rows.with_label_values(&mv).set(0);
        }
        let input_groups = groups(features, 0, &columns);
        let output_groups = groups(outputs, features.len(), &columns);
        VersionState {
            model: spec.model.clone(),
            version: spec.version,
            columns,
            n_features: features.len(),
            input_groups,
            output_groups,
            window: DriftWindow::new(config.window, config.buckets, offset, 4 * ranged),
            reported: vec![0; offset],
            bin_counters,
            records_total: metrics.records_total.with_label_values(&mv),
            values_skipped: metrics.values_skipped.with_label_values(&mv),
            feedback: task.map(|t| FeedbackWindow::new(config.window, config.buckets, t, positive)),
            estimate: spec
                .baseline
                .as_ref()
                .and_then(|b| b.calibration.clone())
                .map(|c| EstimateWindow::new(config.window, config.buckets, c)),
            prediction_output: settings.prediction_output.clone(),
            evictions,
            rules,
            min_samples: settings.min_samples.unwrap_or(config.min_samples),
            min_feedback: settings.min_feedback.unwrap_or(DEFAULT_MIN_FEEDBACK),
            version_label,
        }
    }

    /// Counts one joined feedback item.
    pub fn feedback(
        &mut self,
        time_ms: u64,
        predicted: Value,
        truth: Option<Value>,
    ) -> Result<(), Skip> {
        match (&mut self.feedback, truth) {
            (Some(window), Some(truth)) => window.add(time_ms, predicted, truth),
            _ => Err(Skip::Invalid),
        }
    }

    /// Advances the windows to `now_ms`, updates gauges and counters, runs the rules and appends
    /// their transitions to `events`.
    pub fn evaluate(&mut self, now_ms: u64, metrics: &Metrics, events: &mut Vec<AlertEvent>) {
        self.window.advance(now_ms);
        if let Some(f) = &mut self.feedback {
            f.advance(now_ms);
        }
        if let Some(e) = &mut self.estimate {
            e.advance(now_ms);
        }
        // The bin counters follow what the window has counted since it was made.
        let counted = self.window.counted();
        for ((counter, reported), counted) in self
            .bin_counters
            .iter()
            .zip(&mut self.reported)
            .zip(counted)
        {
            if counted > *reported {
                counter.inc_by(counted - *reported);
                *reported = counted;
            }
        }
        let drift = self.drift();
        let performance = self.feedback.as_ref().map(FeedbackWindow::metrics);
        self.run_rules(now_ms, &drift, performance.as_ref(), events);
        let mv = [self.model.as_str(), self.version_label.as_str()];
        metrics
            .window_rows
            .with_label_values(&mv)
            .set(i64::try_from(self.window.rows()).unwrap_or(i64::MAX));
        for (gauge, columns) in [
            (&metrics.psi, &drift.outputs),
            (&metrics.csi, &drift.features),
        ] {
            for c in columns {
                set_or_remove(gauge, &[mv[0], mv[1], c.name.as_str()], c.value);
            }
        }
        for c in drift.features.iter().chain(&drift.outputs) {
            for (gauge, stat) in metrics.column_stats.iter().zip(ColumnStat::ALL) {
                set_or_remove(gauge, &[mv[0], mv[1], c.name.as_str()], stat.of(c));
            }
        }
        if let Some(p) = &performance {
            metrics
                .feedback_window_rows
                .with_label_values(&mv)
                .set(i64::try_from(p.rows).unwrap_or(i64::MAX));
            let values = [
                p.accuracy,
                p.precision,
                p.recall,
                p.false_positive_rate,
                p.mae,
                p.rmse,
            ];
            for (gauge, value) in metrics.version_gauges().into_iter().zip(values) {
                set_or_remove(gauge, &mv, value);
            }
        }
        if let Some(e) = &self.estimate {
            let estimated = e.estimate(self.min_samples).accuracy;
            set_or_remove(&metrics.estimated_accuracy, &mv, estimated);
        }
        for rule in &self.rules {
            metrics
                .alert
                .with_label_values(&[mv[0], mv[1], rule.name.as_str()])
                .set(i64::from(rule.firing));
        }
    }

    fn run_rules(
        &mut self,
        now_ms: u64,
        drift: &Drift,
        performance: Option<&FeedbackMetrics>,
        events: &mut Vec<AlertEvent>,
    ) {
        let max = |cs: &[ColumnDrift]| cs.iter().filter_map(|c| c.value).reduce(f64::max);
        let usable = performance.filter(|p| p.rows >= self.min_feedback);
        let mut top: Vec<(String, f64)> = drift
            .features
            .iter()
            .filter_map(|c| Some((c.name.clone(), c.value?)))
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(TOP_FEATURES);
        let estimated = self.estimate.as_ref().map(|e| e.estimate(self.min_samples));
        let evidence = evidence(drift, performance, estimated.as_ref());
        let first_event = events.len();
        for rule in &mut self.rules {
            let value = match &rule.metric {
                Metric::Psi => max(&drift.outputs),
                Metric::Csi => max(&drift.features),
                Metric::CsiFeature(name) => drift
                    .features
                    .iter()
                    .find(|c| &c.name == name)
                    .and_then(|c| c.value),
                Metric::Stat(stat, column) => drift
                    .features
                    .iter()
                    .chain(&drift.outputs)
                    .filter(|c| column.as_ref().is_none_or(|name| &c.name == name))
                    .filter_map(|c| stat.of(c))
                    .reduce(f64::max),
                Metric::Accuracy => usable.and_then(|p| p.accuracy),
                Metric::Precision => usable.and_then(|p| p.precision),
                Metric::Recall => usable.and_then(|p| p.recall),
                Metric::FalsePositiveRate => usable.and_then(|p| p.false_positive_rate),
                Metric::Mae => usable.and_then(|p| p.mae),
                Metric::Rmse => usable.and_then(|p| p.rmse),
                Metric::EstimatedAccuracy => estimated.as_ref().and_then(|e| e.accuracy),
            };
            let Some(value) = value else { continue };
            let Some(transition) = rule.observe(value, now_ms) else {
                continue;
            };
            let drift_metric = rule.metric.is_drift();
            let kind = match (drift_metric, transition) {
                (true, Transition::Fired) => event::DRIFT_DETECTED,
                (true, Transition::Cleared) => event::DRIFT_RESOLVED,
                (false, Transition::Fired) => event::PERFORMANCE_DEGRADED,
                (false, Transition::Cleared) => event::PERFORMANCE_RECOVERED,
            };
            let ((window_start_ms, window_end_ms), rows) = match &self.feedback {
                // Estimated from served rows: the drift window's bounds.
                _ if rule.metric == Metric::EstimatedAccuracy => (
                    self.window.bounds(),
                    estimated.as_ref().map_or(0, |e| e.rows),
                ),
                Some(f) if !drift_metric => (f.bounds(), usable.map_or(0, |p| p.rows)),
                _ => (self.window.bounds(), self.window.rows()),
            };
            events.push(AlertEvent {
                kind: kind.to_owned(),
                model: self.model.clone(),
                version: self.version,
                rule: rule.name.clone(),
                metric: rule.metric.to_string(),
                value,
                threshold: match transition {
                    Transition::Fired => rule.fire,
                    Transition::Cleared => rule.clear,
                },
                window_start_ms,
                window_end_ms,
                rows,
                top_features: top.clone(),
                files: Vec::new(),
                time_ms: now_ms,
                evidence: evidence.clone(),
            });
        }
        if events.len() > first_event {
            // Every rule firing after this evaluation (data-quality breaches among them).
            let firing: Vec<AlertState> = self
                .rules
                .iter()
                .filter(|r| r.firing)
                .map(Rule::state)
                .collect();
            for event in &mut events[first_event..] {
                event.evidence.firing = firing.clone();
            }
        }
    }

    fn drift(&self) -> Drift {
        let totals = self.window.totals();
        let column = |t: &Tracked| {
            let counts = &totals[t.offset..t.offset + t.bins.len()];
            let rows: u64 = counts.iter().sum();
            let reported = rows >= self.min_samples;
            let stats = if reported {
                column_stats(&ColumnInput {
                    counts,
                    expected: &t.bins.expected,
                    edges: t.bins.is_numeric().then(|| t.bins.edges()),
                    range: t.bins.range().zip(t.range).map(|(bounds, r)| {
                        // Counts are exact in f64 up to 2^53.
                        let out = OutOfRange {
                            below: self.window.sum(4 * r) as u64,
                            below_distance: self.window.sum(4 * r + 1),
                            above: self.window.sum(4 * r + 2) as u64,
                            above_distance: self.window.sum(4 * r + 3),
                        };
                        (bounds, out)
                    }),
                })
            } else {
                ColumnStats::default()
            };
            ColumnDrift {
                name: t.bins.name.clone(),
                rows,
                value: if reported {
                    psi_of_counts(counts, &t.bins.expected)
                } else {
                    None
                },
                js: stats.js,
                ks: stats.ks,
                wasserstein: stats.wasserstein,
                missing_ratio: stats.missing_ratio,
                out_of_range_ratio: stats.out_of_range_ratio,
                unseen_category_ratio: stats.unseen_category_ratio,
            }
        };
        let (features, outputs) = self.columns.split_at(self.n_features);
        Drift {
            features: features.iter().map(column).collect(),
            outputs: outputs.iter().map(column).collect(),
        }
    }

    pub fn report(&self) -> DriftReport {
        let drift = self.drift();
        let (window_start_ms, window_end_ms) = self.window.bounds();
        DriftReport {
            model: self.model.clone(),
            version: self.version,
            window_start_ms,
            window_end_ms,
            rows: self.window.rows(),
            min_samples: self.min_samples,
            psi: drift
                .outputs
                .iter()
                .filter_map(|c| c.value)
                .reduce(f64::max),
            outputs: drift.outputs,
            features: drift.features,
            feedback: self
                .feedback
                .as_ref()
                .map(FeedbackWindow::metrics)
                .unwrap_or_default(),
            estimated: self.estimate.as_ref().map(|e| e.estimate(self.min_samples)),
            alerts: self.rules.iter().map(Rule::state).collect(),
        }
    }

    /// Removes every series this version created.
    pub fn remove_metrics(&self, metrics: &Metrics) {
        let mv = [self.model.as_str(), self.version_label.as_str()];
        // Errors only mean a series was never created (e.g. a gauge not yet set).
        let _ = metrics.window_rows.remove_label_values(&mv);
        let _ = metrics.feedback_window_rows.remove_label_values(&mv);
        let _ = metrics.records_total.remove_label_values(&mv);
        let _ = metrics.values_skipped.remove_label_values(&mv);
        for gauge in metrics.version_gauges() {
            let _ = gauge.remove_label_values(&mv);
        }
        let _ = metrics.estimated_accuracy.remove_label_values(&mv);
        for (i, t) in self.columns.iter().enumerate() {
            let gauge = if i < self.n_features {
                &metrics.csi
            } else {
                &metrics.psi
            };
            let _ = gauge.remove_label_values(&[mv[0], mv[1], t.bins.name.as_str()]);
            for gauge in &metrics.column_stats {
                let _ = gauge.remove_label_values(&[mv[0], mv[1], t.bins.name.as_str()]);
            }
            for label in &t.bins.labels {
                let labels = [mv[0], mv[1], t.bins.name.as_str(), label.as_str()];
                let _ = metrics.bin_rows.remove_label_values(&labels);
                let _ = metrics.baseline_proportion.remove_label_values(&labels);
            }
        }
        for rule in &self.rules {
            let _ = metrics
                .alert
                .remove_label_values(&[mv[0], mv[1], rule.name.as_str()]);
        }
    }
}

/// What an alert event carries besides its value: the most drifted features (highest CSI first)
/// with all their statistics, the outputs, and estimated and measured performance.
fn evidence(
    drift: &Drift,
    performance: Option<&FeedbackMetrics>,
    estimated: Option<&EstimatedPerformance>,
) -> Evidence {
    let mut features: Vec<ColumnDrift> = drift
        .features
        .iter()
        .filter(|c| c.value.is_some())
        .cloned()
        .collect();
    features.sort_by(|a, b| b.value.unwrap_or(0.0).total_cmp(&a.value.unwrap_or(0.0)));
    features.truncate(TOP_FEATURES);
    Evidence {
        features,
        outputs: drift.outputs.clone(),
        estimated: estimated.cloned(),
        measured: performance.cloned(),
        firing: Vec::new(),
    }
}

/// Groups columns by tensor; `first` is the index of the first of these columns overall, in
/// `tracked`.
fn groups(
    columns: &[crate::baseline::BaselineColumn],
    first: usize,
    tracked: &[Tracked],
) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let member = (c.index, first + i);
        match groups.iter_mut().find(|g| g.tensor == c.tensor) {
            Some(g) => g.members.push(member),
            None => groups.push(Group {
                tensor: c.tensor.clone(),
                members: vec![member],
                row: None,
            }),
        }
    }
    for g in &mut groups {
        g.row = g
            .members
            .iter()
            .map(|&(index, column)| {
                let t = &tracked[column];
                Some(RowMember {
                    binner: t.bins.row_binner()?,
                    index,
                    offset: t.offset,
                    range: t.range,
                })
            })
            .collect();
    }
    groups
}

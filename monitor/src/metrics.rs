//! The monitor's Prometheus metrics, registered once per registry. Everything is labelled by model
//! and version so a retired version's series can be removed.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

pub(crate) struct Metrics {
    pub psi: GaugeVec,
    pub csi: GaugeVec,
    pub window_rows: IntGaugeVec,
    pub alert: IntGaugeVec,
    pub accuracy: GaugeVec,
    pub precision: GaugeVec,
    pub recall: GaugeVec,
    pub false_positive_rate: GaugeVec,
    pub mae: GaugeVec,
    pub rmse: GaugeVec,
    pub estimated_accuracy: GaugeVec,
    pub feedback_window_rows: IntGaugeVec,
    pub feedback_total: IntCounterVec,
    pub feedback_evicted: IntCounterVec,
    pub records_total: IntCounterVec,
    pub records_ignored: IntCounterVec,
    pub values_skipped: IntCounterVec,
    pub bin_rows: IntCounterVec,
    pub baseline_proportion: GaugeVec,
    /// Per-column statistics, in [`ColumnStat::ALL`](crate::stats::ColumnStat::ALL) order:
    /// `keel_drift_js`, `_ks`, `_wasserstein`, `keel_data_missing_ratio`, `_out_of_range_ratio`,
    /// `_unseen_category_ratio` (labels model, version, feature).
    pub column_stats: [GaugeVec; 6],
}

const MV: &[&str] = &["model", "version"];

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let int_gauge =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        Ok(Metrics {
            psi: gauge(
                "keel_drift_psi",
                "Population stability index of a model output over the rolling window",
                &["model", "version", "output"],
            )?,
            csi: gauge(
                "keel_drift_csi",
                "Characteristic stability index of an input feature over the rolling window",
                &["model", "version", "feature"],
            )?,
            window_rows: int_gauge("keel_drift_window_rows", "Rows in the drift window", MV)?,
            alert: int_gauge(
                "keel_drift_alert",
                "1 while a monitor rule is firing",
                &["model", "version", "rule"],
            )?,
            accuracy: gauge(
                "keel_model_accuracy",
                "Accuracy over joined feedback in the window",
                MV,
            )?,
            precision: gauge(
                "keel_model_precision",
                "Precision of the positive label over joined feedback in the window",
                MV,
            )?,
            recall: gauge(
                "keel_model_recall",
                "Recall of the positive label over joined feedback in the window",
                MV,
            )?,
            false_positive_rate: gauge(
                "keel_model_false_positive_rate",
                "False-positive rate over joined feedback in the window",
                MV,
            )?,
            mae: gauge(
                "keel_model_mae",
                "Mean absolute error over joined feedback in the window",
                MV,
            )?,
            rmse: gauge(
                "keel_model_rmse",
                "Root mean squared error over joined feedback in the window",
                MV,
            )?,
            estimated_accuracy: gauge(
                "keel_model_estimated_accuracy",
                "Accuracy estimated without labels (mean calibrated confidence of the predicted class) over the window",
                MV,
            )?,
            feedback_window_rows: int_gauge(
                "keel_feedback_window_rows",
                "Joined feedback rows in the window",
                MV,
            )?,
            feedback_total: counter(
                "keel_feedback_total",
                "Feedback items by join outcome (matched, unmatched, invalid); model \"_unknown\" for models never monitored",
                &["model", "outcome"],
            )?,
            feedback_evicted: counter(
                "keel_feedback_evicted_total",
                "Logged predictions dropped before feedback joined them (reason ttl or capacity)",
                &["model", "reason"],
            )?,
            records_total: counter(
                "keel_monitor_records_total",
                "Prediction records received for a monitored version",
                MV,
            )?,
            records_ignored: counter(
                "keel_monitor_records_ignored_total",
                "Prediction records not counted, by reason; model \"_unknown\" (reason unknown_model) for models never monitored",
                &["model", "reason"],
            )?,
            values_skipped: counter(
                "keel_monitor_values_skipped_total",
                "Monitored values missing from a record or unusable (a word in a numeric column)",
                MV,
            )?,
            bin_rows: counter(
                "keel_drift_bin_rows_total",
                "Rows per baseline bin of a feature or output (sum across replicas for fleet PSI)",
                &["model", "version", "feature", "bin"],
            )?,
            baseline_proportion: gauge(
                "keel_drift_baseline_proportion",
                "Baseline proportion of each bin of a feature or output",
                &["model", "version", "feature", "bin"],
            )?,
            column_stats: {
                const COLUMN: &[&str] = &["model", "version", "feature"];
                [
                    gauge(
                        "keel_drift_js",
                        "Jensen-Shannon distance (base 2) of a feature or output over the rolling window, all bins including NaN",
                        COLUMN,
                    )?,
                    gauge(
                        "keel_drift_ks",
                        "Binned Kolmogorov-Smirnov statistic of a numeric feature or output over the rolling window (non-NaN values)",
                        COLUMN,
                    )?,
                    gauge(
                        "keel_drift_wasserstein",
                        "Binned Wasserstein-1 distance of a numeric feature or output over the rolling window (non-NaN values, feature units)",
                        COLUMN,
                    )?,
                    gauge(
                        "keel_data_missing_ratio",
                        "Share of a feature's or output's values in the window that are NaN or null",
                        COLUMN,
                    )?,
                    gauge(
                        "keel_data_out_of_range_ratio",
                        "Share of a numeric feature's or output's values in the window below the training minimum or above the maximum",
                        COLUMN,
                    )?,
                    gauge(
                        "keel_data_unseen_category_ratio",
                        "Share of a categorical feature's or output's values in the window that are none of the baseline categories",
                        COLUMN,
                    )?,
                ]
            },
        })
    }

    /// Every per-version gauge vector (label sets `[model, version]`).
    pub fn version_gauges(&self) -> [&GaugeVec; 6] {
        [
            &self.accuracy,
            &self.precision,
            &self.recall,
            &self.false_positive_rate,
            &self.mae,
            &self.rmse,
        ]
    }
}

/// Sets a gauge, or removes its series while the value is undefined (absent beats stale).
pub(crate) fn set_or_remove(gauge: &GaugeVec, labels: &[&str], value: Option<f64>) {
    match value {
        Some(v) => gauge.with_label_values(labels).set(v),
        None => {
            // Err only means the series did not exist.
            let _ = gauge.remove_label_values(labels);
        }
    }
}

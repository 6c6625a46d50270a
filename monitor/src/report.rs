//! What the monitor tells callers: a version's current drift and performance
//! ([`DriftReport`]) and the outcome of a feedback batch ([`FeedbackSummary`]).

use serde::{Deserialize, Serialize};

/// The state of one monitored model version's window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub model: String,
    pub version: u64,
    /// Start of the oldest bucket in the window, unix milliseconds.
    pub window_start_ms: u64,
    /// Latest time the window has seen (last evaluation or record), unix milliseconds.
    pub window_end_ms: u64,
    /// Rows in the window.
    pub rows: u64,
    /// Rows a column needs before its PSI/CSI is reported.
    pub min_samples: u64,
    /// Highest PSI over the outputs; `None` until one is reported.
    pub psi: Option<f64>,
    /// PSI per monitored output, in baseline order.
    pub outputs: Vec<ColumnDrift>,
    /// CSI per monitored input feature, in baseline order.
    pub features: Vec<ColumnDrift>,
    pub feedback: FeedbackMetrics,
    /// Accuracy estimated without labels, for versions whose baseline has a calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated: Option<crate::calibration::EstimatedPerformance>,
    pub alerts: Vec<AlertState>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    pub name: String,
    /// Values of this column in the window (rows missing it are not counted).
    pub rows: u64,
    /// PSI/CSI; `None` below `min_samples`.
    pub value: Option<f64>,
    /// Jensen-Shannon distance (base 2) over all bins; like every statistic below, `None` below
    /// `min_samples` or where it does not apply (formulas: docs/monitoring.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js: Option<f64>,
    /// Binned Kolmogorov-Smirnov statistic (numeric columns, non-NaN values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    /// Binned Wasserstein-1 distance (numeric columns whose baseline has `min`/`max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasserstein: Option<f64>,
    /// Share of the column's values that are NaN or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_ratio: Option<f64>,
    /// Share of a numeric column's values outside the training `[min, max]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_range_ratio: Option<f64>,
    /// Share of a categorical column's values that are none of the baseline's categories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_category_ratio: Option<f64>,
}

/// Rolling metrics over joined feedback; a metric is `None` while undefined (no rows, or e.g. no
/// positive predictions for precision) or not applicable to the task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackMetrics {
    /// Joined feedback rows in the window.
    pub rows: u64,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub false_positive_rate: Option<f64>,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
}

/// One rule's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub rule: String,
    pub metric: String,
    pub firing: bool,
    pub fire: f64,
    pub clear: f64,
    /// Value at the last evaluation that had one.
    pub value: Option<f64>,
    /// Evaluations in a row past the fire threshold (while not firing).
    pub over: u32,
    pub last_fired_ms: Option<u64>,
}

/// Outcome of one [`Monitor::feedback`](crate::Monitor::feedback) call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackSummary {
    /// Joined with a logged prediction and counted.
    pub matched: u64,
    /// No logged prediction (never logged, not sampled, expired, evicted, feedback not enabled
    /// for the model, or its version retired).
    pub unmatched: u64,
    /// Joined, but the truth is unusable (NaN, or not a number for a regressor).
    pub invalid: u64,
}

//! What the monitor tells the outside world when a retraining rule changes state. The drift core
//! produces [`AlertEvent`]s; the webhook sender delivers them as CloudEvents.

use serde::{Deserialize, Serialize};

use crate::calibration::EstimatedPerformance;
use crate::report::{AlertState, ColumnDrift, FeedbackMetrics};

/// CloudEvents `type` of an event whose rule started firing on a drift metric (PSI/CSI).
pub const DRIFT_DETECTED: &str = "dev.keel.drift.detected";
/// CloudEvents `type` of an event whose drift rule cleared.
pub const DRIFT_RESOLVED: &str = "dev.keel.drift.resolved";
/// CloudEvents `type` of an event whose rule started firing on a feedback metric (accuracy, FPR, ...).
pub const PERFORMANCE_DEGRADED: &str = "dev.keel.performance.degraded";
/// CloudEvents `type` of an event whose feedback rule cleared.
pub const PERFORMANCE_RECOVERED: &str = "dev.keel.performance.recovered";

/// One rule transition (fired or cleared) of one model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// One of the `dev.keel.*` constants above.
    pub kind: String,
    pub model: String,
    pub version: u64,
    /// The rule's name (from model.toml, or derived from its metric).
    pub rule: String,
    /// "psi", "csi", "csi:<feature>", "accuracy", "false_positive_rate", ...
    pub metric: String,
    pub value: f64,
    /// The threshold that was crossed (fire threshold when firing, clear threshold when clearing).
    pub threshold: f64,
    /// The evaluated window, unix milliseconds.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// Rows in the window.
    pub rows: u64,
    /// The most drifted features, highest CSI first: (feature, CSI).
    pub top_features: Vec<(String, f64)>,
    /// Prediction-log files covering the window; filled in by whoever knows where the log lives.
    pub files: Vec<String>,
    /// When the transition happened, unix milliseconds.
    pub time_ms: u64,
    /// The window's statistics when the rule changed state, so a receiver can decide without
    /// querying Prometheus. Absent (empty) in events stored by older builds.
    #[serde(default)]
    pub evidence: Evidence,
}

/// Why a rule changed state: drift of the most drifted features and of the outputs, and estimated
/// and measured performance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The most drifted input features, highest CSI first (at most 5, only those with a CSI),
    /// with every statistic the drift report holds for them.
    pub features: Vec<ColumnDrift>,
    /// Every monitored output, with its PSI.
    pub outputs: Vec<ColumnDrift>,
    /// Accuracy estimated without labels, when the baseline has a calibration.
    pub estimated: Option<EstimatedPerformance>,
    /// Measured performance over joined feedback, when feedback is enabled.
    pub measured: Option<FeedbackMetrics>,
    /// Every rule of the version firing after the evaluation that raised the event, this one
    /// included when it fired (data-quality rules among them: their breaches).
    pub firing: Vec<AlertState>,
}

/// Where the drift core hands its events: the webhook sender, a test's collector, or nothing.
pub type AlertSink = std::sync::Arc<dyn Fn(AlertEvent) + Send + Sync>;

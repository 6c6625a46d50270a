//! Configuration: the process-wide [`MonitorConfig`], a model's `[monitor]` table of model.toml
//! ([`MonitorSettings`]), and the [`ModelSpec`] that starts monitoring one model version.
//!
//! ```toml
//! [monitor]
//! sample_rate = 0.5
//! task = "classifier"
//! prediction_output = "label"
//! positive_label = "1"
//!
//! [[monitor.rules]]
//! metric = "psi"            # fire = 0.25, clear = 0.1 by default
//!
//! [[monitor.rules]]
//! metric = "accuracy"
//! fire = 0.8                # fires at or below 0.8 ...
//! clear = 0.85              # ... clears at or above 0.85
//! consecutive = 2
//! ```

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::baseline::Baseline;
use crate::error::MonitorError;
use crate::record::FeatureValue;
use crate::rules::Metric;

/// Process-wide monitor settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    /// Length of the rolling window.
    pub window: Duration,
    /// Sub-window buckets the window slides by (window / buckets at a time).
    pub buckets: u32,
    /// Rows a column needs in the window before its PSI/CSI is reported.
    pub min_samples: u64,
    /// How long a logged prediction waits for its feedback.
    pub feedback_ttl: Duration,
    /// Most predictions waiting for feedback, all models together (oldest evicted first).
    pub feedback_capacity: usize,
    /// Period of [`Monitor::run`](crate::Monitor::run).
    pub evaluate_every: Duration,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            window: Duration::from_secs(600),
            buckets: 10,
            min_samples: 1000,
            feedback_ttl: Duration::from_secs(3600),
            feedback_capacity: 100_000,
            evaluate_every: Duration::from_secs(5),
        }
    }
}

impl MonitorConfig {
    pub fn validate(&self) -> Result<(), MonitorError> {
        let bad = |m: &str| Err(MonitorError::Config(m.into()));
        if self.buckets == 0 {
            return bad("buckets must be at least 1");
        }
        if self.window.as_millis() < u128::from(self.buckets) {
            return bad("window must be at least one millisecond per bucket");
        }
        if self.min_samples == 0 {
            return bad("min_samples must be at least 1");
        }
        if self.feedback_capacity == 0 {
            return bad("feedback_capacity must be at least 1");
        }
        if self.evaluate_every.is_zero() {
            return bad("evaluate_every must be positive");
        }
        Ok(())
    }
}

/// What the model predicts, which decides the feedback metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Accuracy, precision, recall, false-positive rate.
    Classifier,
    /// Mean absolute error, root mean squared error.
    Regressor,
}

/// The `[monitor]` table of a model's model.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// Fraction of served rows the server logs, 0..=1 (applied by the server, not here).
    #[serde(default = "one")]
    pub sample_rate: f64,
    /// Enables the feedback join. Implied by feedback rules when absent; with neither, no
    /// predictions are kept for feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Output tensor holding the prediction (its first element per row); default the record's
    /// first output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_output: Option<String>,
    /// The positive class for precision, recall and false-positive rate. A number or a string;
    /// numbers and numeric strings compare numerically.
    #[serde(default = "positive_one")]
    pub positive_label: FeatureValue,
    /// Overrides [`MonitorConfig::min_samples`] for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// Joined feedback rows the window needs before feedback rules are evaluated (default 100).
    /// Gauges show feedback metrics from the first row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_feedback: Option<u64>,
    /// Absent: one default "psi" rule. `rules = []`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSettings>>,
}

/// One `[[monitor.rules]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// "psi" (max over outputs), "csi" (max over input features), "csi:<feature>", "accuracy",
    /// "precision", "recall", "false_positive_rate", "mae", "rmse"; per-column statistics "js",
    /// "ks", "wasserstein", "missing_ratio", "out_of_range_ratio", "unseen_category_ratio" (max
    /// over all monitored columns) or "<statistic>:<column>".
    pub metric: Metric,
    /// Threshold to fire at; default 0.25 for psi/csi (and csi:<feature>), required otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire: Option<f64>,
    /// Threshold to clear at; default 0.1 for psi/csi, required otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// Evaluations in a row past `fire` before the rule fires.
    #[serde(default = "three")]
    pub consecutive: u32,
    /// After firing, the rule does not fire again for this long (one retraining run).
    #[serde(default = "hour")]
    pub cooldown_s: u64,
    /// Alert name; default the metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Starts monitoring one model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub model: String,
    pub version: u64,
    /// Without one, only feedback metrics are tracked.
    pub baseline: Option<Baseline>,
    pub settings: MonitorSettings,
}

fn one() -> f64 {
    1.0
}
fn positive_one() -> FeatureValue {
    FeatureValue::Category("1".into())
}
fn three() -> u32 {
    3
}
fn hour() -> u64 {
    3600
}

/// Default PSI/CSI fire threshold: "major shift" by the usual credit-scoring rule of thumb.
pub const DEFAULT_DRIFT_FIRE: f64 = 0.25;
/// Default PSI/CSI clear threshold: "stable".
pub const DEFAULT_DRIFT_CLEAR: f64 = 0.1;
/// Default [`MonitorSettings::min_feedback`].
pub const DEFAULT_MIN_FEEDBACK: u64 = 100;

impl Default for MonitorSettings {
    fn default() -> MonitorSettings {
        MonitorSettings {
            sample_rate: 1.0,
            task: None,
            prediction_output: None,
            positive_label: positive_one(),
            min_samples: None,
            min_feedback: None,
            rules: None,
        }
    }
}

impl RuleSettings {
    /// A rule on `metric` with default thresholds (only valid for drift metrics).
    pub fn new(metric: Metric) -> RuleSettings {
        RuleSettings {
            metric,
            fire: None,
            clear: None,
            consecutive: three(),
            cooldown_s: hour(),
            name: None,
        }
    }

    /// The alert name: `name`, or the metric.
    pub fn rule_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.metric.to_string())
    }

    /// `(fire, clear)` with drift defaults applied.
    pub fn thresholds(&self) -> Result<(f64, f64), MonitorError> {
        let name = self.rule_name();
        let default = |v: Option<f64>, d: f64, what: &str| match v {
            Some(v) => Ok(v),
            // JS, KS, Wasserstein and the data-quality ratios have no sensible default scale.
            None if self.metric.is_drift() && !matches!(self.metric, Metric::Stat(..)) => Ok(d),
            None => Err(MonitorError::Settings(format!(
                "rule {name:?}: `{what}` is required for {}",
                self.metric
            ))),
        };
        let fire = default(self.fire, DEFAULT_DRIFT_FIRE, "fire")?;
        let clear = default(self.clear, DEFAULT_DRIFT_CLEAR, "clear")?;
        if !fire.is_finite() || !clear.is_finite() {
            return Err(MonitorError::Settings(format!(
                "rule {name:?}: thresholds must be finite"
            )));
        }
        let ordered = if self.metric.lower_is_worse() {
            clear >= fire
        } else {
            clear <= fire
        };
        if !ordered {
            let side = if self.metric.lower_is_worse() {
                "at or above"
            } else {
                "at or below"
            };
            return Err(MonitorError::Settings(format!(
                "rule {name:?}: clear ({clear}) must be {side} fire ({fire}) for {}",
                self.metric
            )));
        }
        Ok((fire, clear))
    }
}

impl MonitorSettings {
    /// The rules in force: the given ones, or one default "psi" rule.
    pub fn effective_rules(&self) -> Vec<RuleSettings> {
        self.rules
            .clone()
            .unwrap_or_else(|| vec![RuleSettings::new(Metric::Psi)])
    }

    /// `task`, or the one the feedback rules imply.
    pub fn effective_task(&self) -> Option<Task> {
        self.task
            .or_else(|| self.rules.iter().flatten().find_map(|r| r.metric.task()))
    }

    /// Checks ranges, thresholds, unique rule names and that rules agree with the task. The
    /// server should call this when it reads model.toml; [`Monitor::set_version`](crate::Monitor::set_version)
    /// calls it again.
    pub fn validate(&self) -> Result<(), MonitorError> {
        let bad = |m: String| Err(MonitorError::Settings(m));
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return bad(format!("sample_rate {} is outside 0..=1", self.sample_rate));
        }
        if self.min_samples == Some(0) {
            return bad("min_samples must be at least 1".into());
        }
        let nan = match &self.positive_label {
            FeatureValue::Number(x) => x.is_nan(),
            FeatureValue::Category(s) => s.trim().parse::<f64>().is_ok_and(f64::is_nan),
        };
        if nan {
            return bad("positive_label is NaN".into());
        }
        let task = self.effective_task();
        let mut names = HashSet::new();
        for rule in self.effective_rules() {
            let name = rule.rule_name();
            rule.thresholds()?;
            if rule.consecutive == 0 {
                return bad(format!("rule {name:?}: consecutive must be at least 1"));
            }
            if let Some(needed) = rule.metric.task()
                && Some(needed) != task
            {
                return bad(format!(
                    "rule {name:?}: {} needs task = \"{}\"",
                    rule.metric,
                    match needed {
                        Task::Classifier => "classifier",
                        Task::Regressor => "regressor",
                    }
                ));
            }
            if !names.insert(name.clone()) {
                return bad(format!("two rules are named {name:?}; give one a `name`"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct ModelToml {
        monitor: Option<MonitorSettings>,
    }

    fn parse(text: &str) -> Result<MonitorSettings, String> {
        let parsed: ModelToml = toml::from_str(text).map_err(|e| e.to_string())?;
        let settings = parsed.monitor.expect("[monitor] present");
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }

    #[test]
    fn defaults() {
        let s = parse("[monitor]\n").unwrap();
        assert_eq!(s, MonitorSettings::default());
        let rules = s.effective_rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].metric, Metric::Psi);
        assert_eq!(rules[0].thresholds().unwrap(), (0.25, 0.1));
        assert_eq!((rules[0].consecutive, rules[0].cooldown_s), (3, 3600));
        assert_eq!(s.effective_task(), None);
    }

    #[test]
    fn full_table() {
        let s = parse(
            r#"
            [monitor]
            sample_rate = 0.25
            prediction_output = "label"
            positive_label = 1
            min_samples = 200
            [[monitor.rules]]
            metric = "csi:mean radius"
            fire = 0.3
            [[monitor.rules]]
            metric = "accuracy"
            fire = 0.8
            clear = 0.85
            consecutive = 1
            cooldown_s = 60
            name = "accuracy-low"
            "#,
        )
        .unwrap();
        assert_eq!(s.positive_label, FeatureValue::Number(1.0));
        assert_eq!(s.effective_task(), Some(Task::Classifier));
        let rules = s.effective_rules();
        assert_eq!(rules[0].metric, Metric::CsiFeature("mean radius".into()));
        assert_eq!(rules[0].thresholds().unwrap(), (0.3, 0.1));
        assert_eq!(rules[1].rule_name(), "accuracy-low");
    }

    #[test]
    fn empty_rules_means_none() {
        assert!(
            parse("[monitor]\nrules = []\n")
                .unwrap()
                .effective_rules()
                .is_empty()
        );
    }

    #[test]
    fn mistakes_are_reported() {
        let err = |text: &str| parse(text).unwrap_err();
        assert!(err("[monitor]\nsampling = 1\n").contains("unknown field"));
        assert!(err("[monitor]\nsample_rate = 2\n").contains("sample_rate"));
        assert!(err("[monitor]\n[[monitor.rules]]\nmetric = \"psy\"\n").contains("psy"));
        assert!(err("[monitor]\n[[monitor.rules]]\nmetric = \"accuracy\"\n").contains("fire"));
        assert!(
            err("[monitor]\n[[monitor.rules]]\nmetric = \"accuracy\"\nfire = 0.9\nclear = 0.8\n")
                .contains("at or above")
        );
        assert!(
            err("[monitor]\n[[monitor.rules]]\nmetric = \"psi\"\nfire = 0.1\nclear = 0.2\n")
                .contains("at or below")
        );
        assert!(
            err("[monitor]\ntask = \"regressor\"\n[[monitor.rules]]\nmetric = \"accuracy\"\nfire = 0.8\nclear = 0.9\n")
                .contains("classifier")
        );
        assert!(
            err("[monitor]\n[[monitor.rules]]\nmetric = \"psi\"\n[[monitor.rules]]\nmetric = \"psi\"\n")
                .contains("named")
        );
        assert!(
            err("[monitor]\n[[monitor.rules]]\nmetric = \"psi\"\nconsecutive = 0\n")
                .contains("consecutive")
        );
        assert!(err("[monitor]\n[[monitor.rules]]\nmetric = \"missing_ratio\"\n").contains("fire"));
        let s = parse("[monitor]\n[[monitor.rules]]\nmetric = \"ks:x\"\nfire = 0.3\nclear = 0.1\n")
            .unwrap();
        assert_eq!(
            s.effective_rules()[0].metric,
            Metric::Stat(crate::stats::ColumnStat::Ks, Some("x".into()))
        );
    }

    #[test]
    fn config_validation() {
        assert!(MonitorConfig::default().validate().is_ok());
        let zero = MonitorConfig {
            buckets: 0,
            ..MonitorConfig::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn spec_round_trips_as_json() {
        let spec = ModelSpec {
            model: "m".into(),
            version: 2,
            baseline: None,
            settings: MonitorSettings {
                rules: Some(vec![RuleSettings::new(Metric::Csi)]),
                ..MonitorSettings::default()
            },
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
    }
}

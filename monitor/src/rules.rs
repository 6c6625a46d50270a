//! Retraining rules: which metric they watch and the hysteresis that turns a noisy series of
//! evaluations into one event per firing and one per clearing.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::MonitorError;
use crate::settings::{RuleSettings, Task};
use crate::stats::ColumnStat;

/// What a rule watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Metric {
    /// Highest PSI over the monitored outputs.
    Psi,
    /// Highest CSI over the monitored input features.
    Csi,
    /// CSI of one input feature (by baseline name).
    CsiFeature(String),
    Accuracy,
    Precision,
    Recall,
    FalsePositiveRate,
    /// Mean absolute error.
    Mae,
    /// Root mean squared error.
    Rmse,
    /// Accuracy estimated without labels from the baseline's calibration (CBPE).
    EstimatedAccuracy,
    /// A per-column statistic (JS, KS, Wasserstein, data-quality ratios): the highest over every
    /// monitored column (features and outputs) with `None`, else that column's (by baseline name).
    Stat(ColumnStat, Option<String>),
}

impl Metric {
    /// PSI/CSI (events `drift.*`), as opposed to feedback metrics (events `performance.*`).
    pub fn is_drift(&self) -> bool {
        matches!(
            self,
            Metric::Psi | Metric::Csi | Metric::CsiFeature(_) | Metric::Stat(..)
        )
    }

    /// Accuracy, precision and recall get worse as they fall; everything else as it rises.
    pub fn lower_is_worse(&self) -> bool {
        matches!(
            self,
            Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::EstimatedAccuracy
        )
    }

    /// The task a feedback metric needs.
    pub fn task(&self) -> Option<Task> {
        match self {
            Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::FalsePositiveRate => {
                Some(Task::Classifier)
            }
            Metric::Mae | Metric::Rmse => Some(Task::Regressor),
            // Needs the baseline's calibration, not the feedback join.
            Metric::Psi | Metric::Csi | Metric::CsiFeature(_) | Metric::EstimatedAccuracy => None,
            Metric::Stat(..) => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Psi => f.write_str("psi"),
            Metric::Csi => f.write_str("csi"),
            Metric::CsiFeature(name) => write!(f, "csi:{name}"),
            Metric::Accuracy => f.write_str("accuracy"),
            Metric::Precision => f.write_str("precision"),
            Metric::Recall => f.write_str("recall"),
            Metric::FalsePositiveRate => f.write_str("false_positive_rate"),
            Metric::Mae => f.write_str("mae"),
            Metric::Rmse => f.write_str("rmse"),
            Metric::EstimatedAccuracy => f.write_str("estimated_accuracy"),
            Metric::Stat(stat, None) => write!(f, "{stat}"),
            Metric::Stat(stat, Some(column)) => write!(f, "{stat}:{column}"),
        }
    }
}

impl TryFrom<String> for Metric {
    type Error = String;

    fn try_from(s: String) -> Result<Metric, String> {
        Ok(match s.as_str() {
            "psi" => Metric::Psi,
            "csi" => Metric::Csi,
            "accuracy" => Metric::Accuracy,
            "precision" => Metric::Precision,
            "recall" => Metric::Recall,
            "false_positive_rate" => Metric::FalsePositiveRate,
            "mae" => Metric::Mae,
            "rmse" => Metric::Rmse,
            "estimated_accuracy" => Metric::EstimatedAccuracy,
            _ => match s.strip_prefix("csi:") {
                Some(feature) if !feature.is_empty() => Metric::CsiFeature(feature.to_owned()),
                _ => match stat_metric(&s) {
                    Some(metric) => metric,
                    None => {
                        return Err(format!(
                            "unknown metric {s:?}: expected psi, csi, csi:<feature>, accuracy, \
                         precision, recall, false_positive_rate, mae, rmse, estimated_accuracy, \
                         js, ks, wasserstein, missing_ratio, out_of_range_ratio, \
                         unseen_category_ratio (each also as <name>:<column>)"
                        ));
                    }
                },
            },
        })
    }
}

/// `js`, `ks:<column>`, ...: a per-column statistic, over all columns or one.
fn stat_metric(s: &str) -> Option<Metric> {
    match s.split_once(':') {
        None => Some(Metric::Stat(ColumnStat::from_name(s)?, None)),
        Some((_, "")) => None,
        Some((stat, column)) => Some(Metric::Stat(
            ColumnStat::from_name(stat)?,
            Some(column.to_owned()),
        )),
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.to_string()
    }
}

/// A change of a rule's state, reported once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Fired,
    Cleared,
}

/// A compiled rule and its state.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub metric: Metric,
    pub fire: f64,
    pub clear: f64,
    consecutive: u32,
    cooldown_ms: u64,
    pub firing: bool,
    /// Evaluations in a row past `fire` while not firing.
    pub over: u32,
    pub last_value: Option<f64>,
    pub last_fired_ms: Option<u64>,
}

impl Rule {
    pub fn new(settings: &RuleSettings) -> Result<Rule, MonitorError> {
        let (fire, clear) = settings.thresholds()?;
        Ok(Rule {
            name: settings.rule_name(),
            metric: settings.metric.clone(),
            fire,
            clear,
            consecutive: settings.consecutive.max(1),
            cooldown_ms: settings.cooldown_s.saturating_mul(1000),
            firing: false,
            over: 0,
            last_value: None,
            last_fired_ms: None,
        })
    }

    /// Its state as reports and events show it.
    pub fn state(&self) -> crate::report::AlertState {
        crate::report::AlertState {
            rule: self.name.clone(),
            metric: self.metric.to_string(),
            firing: self.firing,
            fire: self.fire,
            clear: self.clear,
            value: self.last_value,
            over: self.over,
            last_fired_ms: self.last_fired_ms,
        }
    }

    /// Feeds one evaluation. Fires after `consecutive` values past `fire` (unless the last firing
    /// is within the cooldown: then it keeps waiting), clears at the first value past `clear`.
    pub fn observe(&mut self, value: f64, now_ms: u64) -> Option<Transition> {
        self.last_value = Some(value);
        let (past_fire, past_clear) = if self.metric.lower_is_worse() {
            (value <= self.fire, value >= self.clear)
        } else {
            (value >= self.fire, value <= self.clear)
        };
        if self.firing {
            if past_clear {
                self.firing = false;
                self.over = 0;
                return Some(Transition::Cleared);
            }
            return None;
        }
        if !past_fire {
            self.over = 0;
            return None;
        }
        self.over = self.over.saturating_add(1);
        let cooling = self
            .last_fired_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.cooldown_ms);
        if self.over >= self.consecutive && !cooling {
            self.firing = true;
            self.over = 0;
            self.last_fired_ms = Some(now_ms);
            return Some(Transition::Fired);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: Metric, fire: f64, clear: f64, consecutive: u32, cooldown_s: u64) -> Rule {
        Rule::new(&RuleSettings {
            fire: Some(fire),
            clear: Some(clear),
            consecutive,
            cooldown_s,
            ..RuleSettings::new(metric)
        })
        .unwrap()
    }

    #[test]
    fn metric_names_round_trip() {
        for name in [
            "psi",
            "csi",
            "csi:mean radius",
            "accuracy",
            "precision",
            "recall",
            "false_positive_rate",
            "mae",
            "rmse",
            "estimated_accuracy",
            "js",
            "ks:mean radius",
            "wasserstein",
            "missing_ratio:x",
            "out_of_range_ratio",
            "unseen_category_ratio:colour",
        ] {
            assert_eq!(Metric::try_from(name.to_owned()).unwrap().to_string(), name);
        }
        assert!(Metric::try_from("csi:".to_owned()).is_err());
    }

    #[test]
    fn fires_after_consecutive_and_clears_below_clear() {
        let mut r = rule(Metric::Psi, 0.25, 0.1, 3, 3600);
        let mut t = 0;
        let mut feed = |r: &mut Rule, v: f64| {
            t += 5_000;
            r.observe(v, t)
        };
        assert_eq!(feed(&mut r, 0.3), None);
        assert_eq!(feed(&mut r, 0.3), None);
        assert_eq!(feed(&mut r, 0.2), None, "a dip resets the count");
        assert_eq!(feed(&mut r, 0.3), None);
        assert_eq!(feed(&mut r, 0.3), None);
        assert_eq!(feed(&mut r, 0.3), Some(Transition::Fired));
        for _ in 0..100 {
            assert_eq!(feed(&mut r, 0.5), None, "no storm while firing");
        }
        assert_eq!(feed(&mut r, 0.15), None, "between thresholds: still firing");
        assert_eq!(feed(&mut r, 0.1), Some(Transition::Cleared));
        assert_eq!(feed(&mut r, 0.05), None);
    }

    #[test]
    fn cooldown_suppresses_refiring() {
        let mut r = rule(Metric::Psi, 0.25, 0.1, 1, 60);
        assert_eq!(r.observe(0.3, 1_000), Some(Transition::Fired));
        assert_eq!(r.observe(0.0, 2_000), Some(Transition::Cleared));
        assert_eq!(r.observe(0.3, 30_000), None, "within the cooldown");
        assert_eq!(r.observe(0.3, 60_999), None);
        assert_eq!(r.observe(0.3, 61_000), Some(Transition::Fired));
    }

    #[test]
    fn lower_is_worse_for_accuracy() {
        let mut r = rule(Metric::Accuracy, 0.8, 0.85, 2, 0);
        assert_eq!(r.observe(0.9, 1), None);
        assert_eq!(r.observe(0.8, 2), None);
        assert_eq!(r.observe(0.7, 3), Some(Transition::Fired));
        assert_eq!(r.observe(0.84, 4), None);
        assert_eq!(r.observe(0.85, 5), Some(Transition::Cleared));
    }
}

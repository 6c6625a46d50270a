//! Performance estimation without labels for binary classifiers: confidence-based performance
//! estimation (CBPE, as NannyML does it) of accuracy.
//!
//! `keel baseline --label-column` fits a [`Calibration`] on the training rows: an isotonic
//! regression (pool-adjacent-violators, like scikit-learn's `IsotonicRegression` with
//! `out_of_bounds="clip"`) of the true label (1 for the positive class) on the model's
//! positive-class probability `p` (element `index` of output tensor `tensor`). Served rows are
//! predicted positive when `p >= threshold` (0.5); the calibrated confidence of the predicted class
//! is `c(p)` for a positive prediction and `1 - c(p)` for a negative one, and the estimated accuracy
//! of a window is the mean of that confidence over its rows. It is an unbiased estimate of the
//! accuracy as long as the relation between score and label (concept) is unchanged, whatever the
//! input drift.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::batch::{Element, RowBatch};
use crate::error::MonitorError;
use crate::record::FeatureValue;
use crate::window::Clock;

/// Default decision threshold on the positive-class probability.
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// Most points a calibration map may have (two per isotonic block at most).
pub const MAX_POINTS: usize = 65_536;

/// How the calibration map was fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMethod {
    /// Isotonic regression; the map interpolates linearly between `scores` and clips outside them.
    Isotonic,
}

/// The `calibration` object of `baseline.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub method: CalibrationMethod,
    /// Output tensor holding the positive-class probability.
    pub tensor: String,
    /// Element of that tensor's row (the breast-cancer model: `probabilities`, index 1).
    pub index: usize,
    /// A row is predicted positive when its probability is at or above this.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Labelled rows the map was fitted on.
    pub rows: u64,
    /// Accuracy measured on those rows (predicted class against the label).
    pub reference_accuracy: f64,
    /// Raw probabilities, strictly increasing.
    pub scores: Vec<f64>,
    /// The calibrated probability at each score, non-decreasing, in [0, 1].
    pub calibrated: Vec<f64>,
}

fn default_threshold() -> f64 {
    DEFAULT_THRESHOLD
}

impl Calibration {
    /// Fits the map on `(probability, is_positive)` pairs; NaN probabilities are left out.
    pub fn fit(
        tensor: &str,
        index: usize,
        threshold: f64,
        pairs: impl IntoIterator<Item = (f64, bool)>,
    ) -> Result<Calibration, MonitorError> {
        let mut pairs: Vec<(f64, bool)> = pairs.into_iter().filter(|(p, _)| !p.is_nan()).collect();
        if pairs.is_empty() {
            return Err(MonitorError::Baseline(
                "calibration: no rows with a probability".into(),
            ));
        }
        if let Some((p, _)) = pairs.iter().find(|(p, _)| !p.is_finite()) {
            return Err(MonitorError::Baseline(format!(
                "calibration: probability {p} is not finite"
            )));
        }
        let correct = pairs
            .iter()
            .filter(|&&(p, y)| (p >= threshold) == y)
            .count();
        let rows = pairs.len();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Blocks of (sum of labels, rows, lowest score, highest score); equal scores start pooled.
        let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new();
        for &(p, y) in &pairs {
            let y = f64::from(u8::from(y));
            match blocks.last_mut() {
                Some(last) if last.3 == p => {
                    last.0 += y;
                    last.1 += 1.0;
                }
                _ => blocks.push((y, 1.0, p, p)),
            }
            // Pool adjacent violators: merge while the previous block's mean is not below the last's.
            while blocks.len() >= 2 {
                let (b, a) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
                // Means compared by cross-multiplying integer-valued sums: exact. Equal means
                // merge too, which leaves the map unchanged and keeps it small.
                if a.0 * b.1 < b.0 * a.1 {
                    break;
                }
                blocks.pop();
                let a = blocks.last_mut().expect("two blocks");
                a.0 += b.0;
                a.1 += b.1;
                a.3 = b.3;
            }
        }
        let (mut scores, mut calibrated) = (Vec::new(), Vec::new());
        for &(sum, n, low, high) in &blocks {
            let value = (sum / n).clamp(0.0, 1.0);
            scores.push(low);
            calibrated.push(value);
            if high > low {
                scores.push(high);
                calibrated.push(value);
            }
        }
        let calibration = Calibration {
            method: CalibrationMethod::Isotonic,
            tensor: tensor.to_owned(),
            index,
            threshold,
            rows: rows as u64,
            reference_accuracy: correct as f64 / rows as f64,
            scores,
            calibrated,
        };
        calibration.validate()?;
        Ok(calibration)
    }

    /// Checks sizes, order and ranges.
    pub fn validate(&self) -> Result<(), MonitorError> {
        let bad = |m: String| Err(MonitorError::Baseline(format!("calibration: {m}")));
        if self.tensor.is_empty() {
            return bad("`tensor` is empty".into());
        }
        if !self.threshold.is_finite() {
            return bad(format!("threshold {} is not finite", self.threshold));
        }
        if self.scores.is_empty() || self.scores.len() != self.calibrated.len() {
            return bad(format!(
                "{} scores and {} calibrated values: need as many of each, at least one",
                self.scores.len(),
                self.calibrated.len()
            ));
        }
        if self.scores.len() > MAX_POINTS {
            return bad(format!(
                "{} points, more than the {MAX_POINTS} allowed",
                self.scores.len()
            ));
        }
        if self.scores.iter().any(|s| !s.is_finite())
            || self.scores.windows(2).any(|w| w[0] >= w[1])
        {
            return bad("scores must be finite and strictly increasing".into());
        }
        if self.calibrated.iter().any(|c| !(0.0..=1.0).contains(c))
            || self.calibrated.windows(2).any(|w| w[0] > w[1])
        {
            return bad("calibrated values must be in [0, 1] and non-decreasing".into());
        }
        if !(0.0..=1.0).contains(&self.reference_accuracy) {
            return bad(format!(
                "reference_accuracy {} is outside [0, 1]",
                self.reference_accuracy
            ));
        }
        Ok(())
    }

    /// The calibrated probability of the positive class: linear between the points, clipped to the
    /// first and last outside them; `None` for NaN.
    pub fn calibrate(&self, p: f64) -> Option<f64> {
        if p.is_nan() {
            return None;
        }
        let (s, c) = (&self.scores, &self.calibrated);
        let i = s.partition_point(|&x| x < p);
        Some(if i == 0 {
            c[0]
        } else if i == s.len() {
            c[s.len() - 1]
        } else if s[i] == p {
            c[i]
        } else {
            // numpy's `interp` (and scipy's `interp1d`) formula, so Python computes the same.
            let slope = (c[i] - c[i - 1]) / (s[i] - s[i - 1]);
            slope * (p - s[i - 1]) + c[i - 1]
        })
    }

    /// The calibrated probability that the predicted class (`p >= threshold`) is right.
    pub fn confidence(&self, p: f64) -> Option<f64> {
        let c = self.calibrate(p)?;
        Some(if p >= self.threshold { c } else { 1.0 - c })
    }
}

/// Estimated performance of a version's window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EstimatedPerformance {
    /// Rows with a usable probability in the window.
    pub rows: u64,
    /// Mean calibrated confidence of the predicted class; `None` below `min_samples` rows.
    pub accuracy: Option<f64>,
}

/// Per-bucket (rows, sum of confidence) over the same window scheme as drift.
pub(crate) struct EstimateWindow {
    clock: Clock,
    calibration: Calibration,
    buckets: Vec<(u64, f64)>,
}

impl EstimateWindow {
    pub fn new(window: Duration, buckets: u32, calibration: Calibration) -> EstimateWindow {
        let clock = Clock::new(window, buckets);
        let n = clock.buckets();
        EstimateWindow {
            clock,
            calibration,
            buckets: vec![(0, 0.0); n],
        }
    }

    pub fn advance(&mut self, now_ms: u64) {
        let buckets = &mut self.buckets;
        self.clock.advance(now_ms, |slot| buckets[slot] = (0, 0.0));
    }

    /// Counts one served row from its outputs; rows without the probability are not counted.
    pub fn add(&mut self, time_ms: u64, outputs: &[(String, Vec<FeatureValue>)]) {
        let c = &self.calibration;
        let p = match outputs
            .iter()
            .find(|(n, _)| *n == c.tensor)
            .and_then(|(_, v)| v.get(c.index))
        {
            Some(FeatureValue::Number(x)) => *x,
            Some(FeatureValue::Category(s)) => match s.trim().parse::<f64>() {
                Ok(x) => x,
                Err(_) => return,
            },
            None => return,
        };
        self.add_probability(time_ms, p);
    }

    /// Counts the logged rows of a request like [`EstimateWindow::add`] counts each row's record.
    pub fn add_batch(&mut self, batch: &RowBatch<'_>) {
        let c = &self.calibration;
        let Some(t) = batch.outputs.iter().find(|t| t.name == c.tensor) else {
            return;
        };
        if c.index >= t.width {
            return;
        }
        let index = c.index;
        for at in 0..t.complete_rows(batch.len()) {
            let p = match t.values.get(at * t.width + index) {
                Some(Element::Number(x)) => x,
                Some(Element::Text(b)) => match String::from_utf8_lossy(b).trim().parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => continue,
                },
                None => continue,
            };
            self.add_probability(batch.timestamp_ms, p);
        }
    }

    fn add_probability(&mut self, time_ms: u64, p: f64) {
        let Some(confidence) = self.calibration.confidence(p) else {
            return;
        };
        let buckets = &mut self.buckets;
        if let Ok(slot) = self.clock.place(time_ms, |slot| buckets[slot] = (0, 0.0)) {
            buckets[slot].0 += 1;
            buckets[slot].1 += confidence;
        }
    }

    /// The estimate over the window (sums recomputed from the buckets, as for feedback).
    pub fn estimate(&self, min_samples: u64) -> EstimatedPerformance {
        let (rows, sum) = self
            .buckets
            .iter()
            .fold((0u64, 0.0f64), |(r, s), b| (r + b.0, s + b.1));
        EstimatedPerformance {
            rows,
            accuracy: (rows >= min_samples && rows > 0).then(|| sum / rows as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pav_pools_violators_and_interpolates() {
        // Scores 0.1..0.6 with labels 0 1 0 1 1 1: (0.2, 0.3) pool to 0.5.
        let pairs = [
            (0.1, false),
            (0.2, true),
            (0.3, false),
            (0.4, true),
            (0.5, true),
            (0.6, true),
        ];
        let c = Calibration::fit("probabilities", 1, 0.5, pairs).unwrap();
        assert_eq!(c.scores, vec![0.1, 0.2, 0.3, 0.4, 0.6]);
        assert_eq!(c.calibrated, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(c.calibrate(0.0), Some(0.0));
        let near = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() < 1e-12;
        assert!(near(c.calibrate(0.15), 0.25));
        assert!(near(c.calibrate(0.35), 0.75));
        assert_eq!(c.calibrate(0.9), Some(1.0));
        assert_eq!(c.calibrate(f64::NAN), None);
        // Predicted negative below 0.5: the confidence is 1 - c.
        assert!(near(c.confidence(0.15), 0.75));
        assert_eq!(c.confidence(0.5), Some(1.0));
        assert!((c.reference_accuracy - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn ties_are_pooled_first() {
        let c = Calibration::fit("p", 0, 0.5, [(0.5, true), (0.5, false), (0.7, true)]).unwrap();
        assert_eq!(c.scores, vec![0.5, 0.7]);
        assert_eq!(c.calibrated, vec![0.5, 1.0]);
    }

    #[test]
    fn rejects_bad_maps() {
        assert!(Calibration::fit("p", 0, 0.5, []).is_err());
        assert!(Calibration::fit("p", 0, 0.5, [(f64::INFINITY, true)]).is_err());
        let mut c = Calibration::fit("p", 0, 0.5, [(0.1, false), (0.9, true)]).unwrap();
        c.validate().unwrap();
        c.calibrated.swap(0, 1);
        assert!(c.validate().is_err());
        c.calibrated = vec![0.0];
        assert!(c.validate().is_err());
    }

    #[test]
    fn window_mean_confidence() {
        let c = Calibration::fit("probabilities", 1, 0.5, [(0.0, false), (1.0, true)]).unwrap();
        let mut w = EstimateWindow::new(Duration::from_secs(600), 10, c);
        let row = |p: f64| {
            vec![(
                "probabilities".to_string(),
                vec![FeatureValue::Number(1.0 - p), FeatureValue::Number(p)],
            )]
        };
        w.add(1_000, &row(0.9)); // confidence 0.9
        w.add(1_000, &row(0.2)); // confidence 0.8
        w.add(1_000, &[]); // no probability: not counted
        assert_eq!(w.estimate(3).accuracy, None);
        let e = w.estimate(2);
        assert_eq!(e.rows, 2);
        assert!((e.accuracy.unwrap() - 0.85).abs() < 1e-12);
        w.advance(700_000);
        assert_eq!(w.estimate(1).rows, 0);
    }
}

//! Rolling classifier and regressor metrics over joined feedback, on the same bucket scheme as the
//! drift window.

use std::time::Duration;

use crate::feedback::Value;
use crate::report::FeedbackMetrics;
use crate::settings::Task;
use crate::window::Clock;

/// Confusion counts (one-vs-rest for the positive label) and error sums of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tally {
    rows: u64,
    correct: u64,
    true_pos: u64,
    false_pos: u64,
    true_neg: u64,
    false_neg: u64,
    abs_error: f64,
    sq_error: f64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.rows += other.rows;
        self.correct += other.correct;
        self.true_pos += other.true_pos;
        self.false_pos += other.false_pos;
        self.true_neg += other.true_neg;
        self.false_neg += other.false_neg;
        self.abs_error += other.abs_error;
        self.sq_error += other.sq_error;
    }
}

pub(crate) struct FeedbackWindow {
    clock: Clock,
    task: Task,
    positive: Value,
    buckets: Vec<Tally>,
}

/// Why a feedback item was not counted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Older than the window, or implausibly far in the future.
    Late,
    /// Not comparable (a string for a regressor).
    Invalid,
}

impl FeedbackWindow {
    pub fn new(window: Duration, buckets: u32, task: Task, positive: Value) -> FeedbackWindow {
        let clock = Clock::new(window, buckets);
        let n = clock.buckets();
        FeedbackWindow {
            clock,
            task,
            positive,
            buckets: vec![Tally::default(); n],
        }
    }

    pub fn advance(&mut self, now_ms: u64) {
        let buckets = &mut self.buckets;
        self.clock
            .advance(now_ms, |slot| buckets[slot] = Tally::default());
    }

    pub fn bounds(&self) -> (u64, u64) {
        self.clock.bounds()
    }

    /// Counts one joined (prediction, truth) pair at `time_ms`.
    pub fn add(&mut self, time_ms: u64, predicted: Value, truth: Value) -> Result<(), Skip> {
        let pair = match self.task {
            Task::Classifier => {
                let (p, t) = (predicted == self.positive, truth == self.positive);
                Tally {
                    rows: 1,
                    correct: u64::from(predicted == truth),
                    true_pos: u64::from(p && t),
                    false_pos: u64::from(p && !t),
                    true_neg: u64::from(!p && !t),
                    false_neg: u64::from(!p && t),
                    ..Tally::default()
                }
            }
            Task::Regressor => match (predicted, truth) {
                (Value::Number(p), Value::Number(t)) if (p - t).is_finite() => Tally {
                    rows: 1,
                    abs_error: (p - t).abs(),
                    sq_error: (p - t) * (p - t),
                    ..Tally::default()
                },
                _ => return Err(Skip::Invalid),
            },
        };
        let buckets = &mut self.buckets;
        let slot = self
            .clock
            .place(time_ms, |slot| buckets[slot] = Tally::default())
            .map_err(|_| Skip::Late)?;
        self.buckets[slot].add(&pair);
        Ok(())
    }

    /// Metrics over the window. Sums are recomputed from the buckets (a handful) rather than
    /// kept by subtraction, so float error cannot accumulate.
    pub fn metrics(&self) -> FeedbackMetrics {
        let mut t = Tally::default();
        for b in &self.buckets {
            t.add(b);
        }
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        let mut m = FeedbackMetrics {
            rows: t.rows,
            ..FeedbackMetrics::default()
        };
        match self.task {
            Task::Classifier => {
                m.accuracy = ratio(t.correct, t.rows);
                m.precision = ratio(t.true_pos, t.true_pos + t.false_pos);
                m.recall = ratio(t.true_pos, t.true_pos + t.false_neg);
                m.false_positive_rate = ratio(t.false_pos, t.false_pos + t.true_neg);
            }
            Task::Regressor if t.rows > 0 => {
                m.mae = Some(t.abs_error / t.rows as f64);
                m.rmse = Some((t.sq_error / t.rows as f64).sqrt());
            }
            Task::Regressor => {}
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Value = Value::Number(0.0);
    const P: Value = Value::Number(1.0);

    fn classifier() -> FeedbackWindow {
        FeedbackWindow::new(Duration::from_secs(600), 10, Task::Classifier, P)
    }

    #[test]
    fn confusion_metrics() {
        let mut w = classifier();
        // 3 TP, 1 FP, 4 TN, 2 FN.
        for (p, t, n) in [(P, P, 3), (P, N, 1), (N, N, 4), (N, P, 2)] {
            for _ in 0..n {
                w.add(1_000, p, t).unwrap();
            }
        }
        let m = w.metrics();
        assert_eq!(m.rows, 10);
        assert_eq!(m.accuracy, Some(0.7));
        assert_eq!(m.precision, Some(0.75));
        assert_eq!(m.recall, Some(0.6));
        assert_eq!(m.false_positive_rate, Some(0.2));
        assert_eq!(m.mae, None);
    }

    #[test]
    fn regressor_errors_and_window_eviction() {
        let mut w = FeedbackWindow::new(Duration::from_secs(600), 10, Task::Regressor, P);
        w.add(0, Value::Number(1.0), Value::Number(4.0)).unwrap();
        w.add(0, Value::Number(2.0), Value::Number(2.0)).unwrap();
        assert_eq!(
            w.add(0, Value::Number(2.0), Value::Text(7)),
            Err(Skip::Invalid)
        );
        let m = w.metrics();
        assert_eq!(m.mae, Some(1.5));
        assert_eq!(m.rmse, Some((4.5f64).sqrt()));
        w.advance(600_000);
        assert_eq!(w.metrics().rows, 0);
        assert_eq!(w.metrics().mae, None);
        assert_eq!(w.add(0, P, P), Err(Skip::Late));
    }
}

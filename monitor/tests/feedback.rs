//! The feedback join and rolling performance metrics through the public API.

mod common;

use std::time::Duration;

use common::{MINUTE, T0, baseline, config, in_distribution, metric, monitor};
use keel_monitor::{
    FeatureValue, FeedbackRecord, FeedbackSummary, Metric, ModelSpec, MonitorConfig,
    MonitorSettings, RuleSettings, Task, event,
};

fn classifier(rules: Vec<RuleSettings>) -> ModelSpec {
    ModelSpec {
        model: "m".into(),
        version: 1,
        baseline: Some(baseline("m", 1)),
        settings: MonitorSettings {
            task: Some(Task::Classifier),
            prediction_output: Some("label".into()),
            rules: Some(rules),
            ..MonitorSettings::default()
        },
    }
}

fn feedback(id: usize, truth: FeatureValue, time_ms: u64) -> FeedbackRecord {
    FeedbackRecord {
        model: "m".into(),
        request_id: format!("req-{id}"),
        row: 0,
        truth,
        timestamp_ms: time_ms,
    }
}

#[test]
fn thirty_percent_wrong_labels_give_accuracy_0_7() {
    let (monitor, registry, events) = monitor(config(1000));
    let accuracy_rule = RuleSettings {
        fire: Some(0.8),
        clear: Some(0.85),
        consecutive: 1,
        ..RuleSettings::new(Metric::Accuracy)
    };
    monitor
        .set_version(classifier(vec![accuracy_rule]))
        .unwrap();
    // A perfect model: the logged label is i % 2 ...
    monitor.ingest(&in_distribution("m", 1, T0, 0, 1000));
    // ... and the truth disagrees for 30% of rows. Even rows send the truth as a string, which
    // still compares numerically with the numeric prediction.
    let items: Vec<FeedbackRecord> = (0..1000)
        .map(|i| {
            let label = (i % 2) as f64;
            let truth = if i % 10 < 3 { 1.0 - label } else { label };
            let truth = if i % 2 == 0 {
                FeatureValue::Category(format!("{truth}"))
            } else {
                FeatureValue::Number(truth)
            };
            feedback(i, truth, T0 + 1000)
        })
        .chain((5000..5005).map(|i| feedback(i, FeatureValue::Number(1.0), T0 + 1000)))
        .collect();
    let summary = monitor.feedback(&items);
    assert_eq!(
        summary,
        FeedbackSummary {
            matched: 1000,
            unmatched: 5,
            invalid: 0
        }
    );
    // Each prediction joins once.
    assert_eq!(monitor.feedback(&items[..1]).unmatched, 1);
    // Unknown models are answered but get no series of their own (their names come from
    // clients): they all count under model="_unknown".
    for name in ["nope", "other"] {
        let mut stranger = items[1].clone();
        stranger.model = name.into();
        assert_eq!(monitor.feedback(&[stranger]).unmatched, 1);
        assert_eq!(
            common::series(&registry, "keel_feedback_total", "model", name),
            0
        );
    }
    assert_eq!(
        metric(
            &registry,
            "keel_feedback_total",
            &[("model", "_unknown"), ("outcome", "unmatched")]
        ),
        Some(2.0)
    );

    monitor.evaluate(T0 + 2000);
    let f = monitor.report("m", 1).unwrap().feedback;
    assert_eq!(f.rows, 1000);
    assert_eq!(f.accuracy, Some(0.7));
    // Predicted 1: 500 rows, 100 of them wrong. Truly 1: 400 predicted 1 + 200 predicted 0.
    assert_eq!(f.precision, Some(0.8));
    assert_eq!(f.recall, Some(400.0 / 600.0));
    assert_eq!(f.false_positive_rate, Some(0.25));
    assert_eq!((f.mae, f.rmse), (None, None));

    let mv = [("model", "m"), ("version", "1")];
    assert_eq!(metric(&registry, "keel_model_accuracy", &mv), Some(0.7));
    assert_eq!(
        metric(&registry, "keel_feedback_window_rows", &mv),
        Some(1000.0)
    );
    assert_eq!(metric(&registry, "keel_model_mae", &mv), None);
    let outcome = |o: &str| {
        metric(
            &registry,
            "keel_feedback_total",
            &[("model", "m"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("matched"), Some(1000.0));
    assert_eq!(outcome("unmatched"), Some(6.0));

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, event::PERFORMANCE_DEGRADED);
    assert_eq!(events[0].metric, "accuracy");
    assert_eq!(events[0].value, 0.7);
    assert_eq!(events[0].threshold, 0.8);
    assert_eq!(events[0].rows, 1000);
}

#[test]
fn feedback_rules_wait_for_min_feedback_and_recover() {
    let (monitor, _, events) = monitor(config(1000));
    let rule = RuleSettings {
        fire: Some(0.8),
        clear: Some(0.85),
        consecutive: 1,
        cooldown_s: 0,
        ..RuleSettings::new(Metric::Accuracy)
    };
    monitor.set_version(classifier(vec![rule])).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 200));
    // 99 wrong answers: below the default min_feedback of 100, no evaluation yet.
    let wrong: Vec<FeedbackRecord> = (0..99)
        .map(|i| feedback(i, FeatureValue::Number(((i + 1) % 2) as f64), T0))
        .collect();
    monitor.feedback(&wrong);
    monitor.evaluate(T0);
    assert!(events.lock().unwrap().is_empty());
    assert_eq!(monitor.report("m", 1).unwrap().feedback.accuracy, Some(0.0));
    monitor.feedback(&[feedback(99, FeatureValue::Number(0.0), T0)]);
    monitor.evaluate(T0);
    assert_eq!(events.lock().unwrap().len(), 1);
    // The wrong answers leave the window; right ones replace them.
    let right: Vec<FeedbackRecord> = (100..200)
        .map(|i| feedback(i, FeatureValue::Number((i % 2) as f64), T0 + 11 * MINUTE))
        .collect();
    monitor.evaluate(T0 + 11 * MINUTE);
    monitor.feedback(&right);
    monitor.evaluate(T0 + 11 * MINUTE);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].kind, event::PERFORMANCE_RECOVERED);
    assert_eq!(events[1].value, 1.0);
}

#[test]
fn regressor_errors() {
    let (monitor, registry, _) = monitor(config(1000));
    let mut spec = classifier(Vec::new());
    spec.settings.task = Some(Task::Regressor);
    spec.settings.prediction_output = Some("score".into());
    monitor.set_version(spec).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 100));
    let items: Vec<FeedbackRecord> = (0..100)
        .map(|i| {
            let error = if i % 2 == 0 { 1.0 } else { -3.0 };
            feedback(i, FeatureValue::Number(i as f64 + error), T0)
        })
        .chain([feedback(100, FeatureValue::Number(1.0), T0)])
        .collect();
    let mut items = items;
    items[0].truth = FeatureValue::Category("not a number".into());
    let summary = monitor.feedback(&items);
    assert_eq!(
        (summary.matched, summary.invalid, summary.unmatched),
        (99, 1, 1)
    );
    monitor.evaluate(T0);
    let f = monitor.report("m", 1).unwrap().feedback;
    // 49 errors of 1 and 50 of 3.
    assert_eq!(f.mae, Some((49.0 + 150.0) / 99.0));
    assert_eq!(f.rmse, Some(((49.0 + 450.0) / 99.0f64).sqrt()));
    assert_eq!(f.accuracy, None);
    let rmse = metric(&registry, "keel_model_rmse", &[("model", "m")]);
    assert_eq!(rmse, f.rmse);
}

#[test]
fn ttl_and_capacity_evictions_are_counted() {
    let (monitor, registry, _) = monitor(MonitorConfig {
        feedback_capacity: 10,
        feedback_ttl: Duration::from_secs(60),
        ..config(1000)
    });
    monitor.set_version(classifier(Vec::new())).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 15));
    let evicted = |reason: &str| {
        metric(
            &registry,
            "keel_feedback_evicted_total",
            &[("model", "m"), ("reason", reason)],
        )
    };
    assert_eq!(evicted("capacity"), Some(5.0));
    let one = |id| monitor.feedback(&[feedback(id, FeatureValue::Number(0.0), T0 + 1)]);
    assert_eq!(one(0).unmatched, 1, "req-0 was evicted by capacity");
    assert_eq!(one(5).matched, 1);
    monitor.evaluate(T0 + 61_000);
    assert_eq!(evicted("ttl"), Some(9.0));
    assert_eq!(one(6).unmatched, 1, "req-6 expired");
    let unmatched = metric(
        &registry,
        "keel_feedback_total",
        &[("outcome", "unmatched")],
    );
    assert_eq!(unmatched, Some(2.0));
}

#[test]
fn without_a_task_no_predictions_are_kept() {
    let (monitor, _, _) = monitor(config(1000));
    let mut spec = classifier(Vec::new());
    spec.settings.task = None;
    monitor.set_version(spec).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 3));
    let summary = monitor.feedback(&[feedback(0, FeatureValue::Number(0.0), T0)]);
    assert_eq!(summary.unmatched, 1);
    assert_eq!(monitor.report("m", 1).unwrap().feedback.rows, 0);
}

//! The drift monitor through its public API: windows, gating, versions, rules, bad input, metrics.

mod common;

use common::{MINUTE, T0, baseline, config, drifted, in_distribution, metric, monitor, series};
use keel_monitor::{
    FeatureValue, Metric, ModelSpec, Monitor, MonitorError, MonitorSettings, PredictionRecord,
    RuleSettings, event,
};
use prometheus::Registry;

fn spec(model: &str, version: u64, settings: MonitorSettings) -> ModelSpec {
    ModelSpec {
        model: model.into(),
        version,
        baseline: Some(baseline(model, version)),
        settings,
    }
}

fn no_rules() -> MonitorSettings {
    MonitorSettings {
        rules: Some(Vec::new()),
        ..MonitorSettings::default()
    }
}

fn csi(monitor: &Monitor, version: u64) -> Option<f64> {
    monitor.report("m", version).unwrap().features[0].value
}

#[test]
fn monitor_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Monitor>();
}

#[test]
fn window_slides_and_evicts_old_buckets() {
    let (monitor, registry, _) = monitor(config(100));
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 1000));
    monitor.evaluate(T0);
    assert_eq!(monitor.report("m", 1).unwrap().rows, 1000);
    assert_eq!(csi(&monitor, 1), Some(0.0), "exactly the baseline");

    monitor.ingest(&drifted("m", 1, T0 + 5 * MINUTE, 0, 1000));
    monitor.evaluate(T0 + 5 * MINUTE);
    let mixed = csi(&monitor, 1).unwrap();
    assert!(mixed > 0.25, "{mixed}");
    assert_eq!(monitor.report("m", 1).unwrap().rows, 2000);
    let gauge = metric(
        &registry,
        "keel_drift_csi",
        &[("feature", "x"), ("version", "1")],
    );
    assert_eq!(gauge, Some(mixed));

    // Ten minutes after T0 the first bucket leaves: only the drifted rows remain.
    monitor.evaluate(T0 + 10 * MINUTE);
    let report = monitor.report("m", 1).unwrap();
    assert_eq!(report.rows, 1000);
    assert_eq!(report.window_start_ms, T0 + MINUTE);
    assert_eq!(report.window_end_ms, T0 + 10 * MINUTE);
    assert!(report.features[0].value.unwrap() > mixed);

    monitor.evaluate(T0 + 15 * MINUTE);
    assert_eq!(monitor.report("m", 1).unwrap().rows, 0);
    assert_eq!(csi(&monitor, 1), None);
    assert_eq!(
        metric(&registry, "keel_drift_csi", &[("feature", "x")]),
        None
    );
    assert_eq!(
        metric(&registry, "keel_drift_window_rows", &[("model", "m")]),
        Some(0.0)
    );
}

#[test]
fn min_samples_gates_reporting() {
    let (monitor, registry, _) = monitor(config(1000));
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 999));
    monitor.evaluate(T0);
    let report = monitor.report("m", 1).unwrap();
    assert_eq!(
        (report.rows, report.psi, report.features[0].value),
        (999, None, None)
    );
    assert_eq!(
        metric(&registry, "keel_drift_psi", &[("output", "score")]),
        None
    );

    monitor.ingest(&in_distribution("m", 1, T0, 999, 1));
    monitor.evaluate(T0);
    assert_eq!(monitor.report("m", 1).unwrap().psi, Some(0.0));
    assert_eq!(
        metric(&registry, "keel_drift_psi", &[("output", "score")]),
        Some(0.0)
    );
}

#[test]
fn version_switch_starts_a_fresh_window() {
    let (monitor, registry, _) = monitor(config(100));
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    monitor.ingest(&in_distribution("m", 1, T0, 0, 1000));
    monitor.set_version(spec("m", 2, no_rules())).unwrap();
    monitor.ingest(&in_distribution("m", 3, T0, 0, 7));
    assert_eq!(monitor.report("m", 1).unwrap().rows, 1000);
    assert_eq!(monitor.report("m", 2).unwrap().rows, 0);
    assert_eq!(
        monitor.versions(),
        [("m".to_owned(), 1), ("m".to_owned(), 2)]
    );
    let ignored = [("model", "m"), ("reason", "unknown_version")];
    assert_eq!(
        metric(&registry, "keel_monitor_records_ignored_total", &ignored),
        Some(7.0)
    );
    // Records of models never monitored here carry client-chosen names: one series for them all.
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        monitor.ingest(&in_distribution(name, 1, T0, 0, i + 1));
        assert_eq!(
            series(
                &registry,
                "keel_monitor_records_ignored_total",
                "model",
                name
            ),
            0
        );
    }
    let unknown = [("model", "_unknown"), ("reason", "unknown_model")];
    assert_eq!(
        metric(&registry, "keel_monitor_records_ignored_total", &unknown),
        Some(6.0)
    );
    assert_eq!(
        series(
            &registry,
            "keel_monitor_records_ignored_total",
            "model",
            "_unknown"
        ),
        1
    );

    // Setting the same version again replaces it with an empty window.
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    assert_eq!(monitor.report("m", 1).unwrap().rows, 0);

    monitor.ingest(&in_distribution("m", 1, T0, 0, 10));
    monitor.evaluate(T0);
    assert!(series(&registry, "keel_drift_bin_rows_total", "version", "1") > 0);
    monitor.retire_version("m", 1);
    assert!(monitor.report("m", 1).is_none());
    for name in [
        "keel_drift_bin_rows_total",
        "keel_drift_baseline_proportion",
        "keel_drift_window_rows",
        "keel_monitor_records_total",
    ] {
        assert_eq!(series(&registry, name, "version", "1"), 0, "{name}");
        assert!(series(&registry, name, "version", "2") > 0, "{name}");
    }
}

#[test]
fn rules_fire_once_clear_once_and_respect_the_cooldown() {
    let (monitor, registry, events) = monitor(config(100));
    // No rules given: the default "psi" rule (0.25 / 0.1, 3 in a row, 1 h cooldown).
    monitor
        .set_version(spec("m", 1, MonitorSettings::default()))
        .unwrap();
    let minute = |m: u64, drift: bool| {
        let t = T0 + m * MINUTE;
        let start = (m * 100) as usize;
        let records = if drift {
            drifted("m", 1, t, start, 100)
        } else {
            in_distribution("m", 1, t, start, 100)
        };
        monitor.ingest(&records);
        monitor.evaluate(t);
        events.lock().unwrap().len()
    };
    assert_eq!(minute(0, true), 0);
    assert_eq!(minute(1, true), 0);
    assert_eq!(
        minute(2, true),
        1,
        "fires on the third evaluation over 0.25"
    );
    for m in 3..10 {
        assert_eq!(minute(m, true), 1, "no event per evaluation while firing");
    }
    let alert = [("rule", "psi"), ("version", "1")];
    assert_eq!(metric(&registry, "keel_drift_alert", &alert), Some(1.0));
    for m in 10..30 {
        minute(m, false);
    }
    assert_eq!(events.lock().unwrap().len(), 2, "cleared once");
    assert_eq!(metric(&registry, "keel_drift_alert", &alert), Some(0.0));
    for m in 30..62 {
        assert_eq!(minute(m, true), 2, "within the hour's cooldown");
    }
    assert_eq!(minute(62, true), 3, "fires again once the cooldown is over");
    for m in 63..70 {
        assert_eq!(minute(m, true), 3);
    }

    let events = events.lock().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            event::DRIFT_DETECTED,
            event::DRIFT_RESOLVED,
            event::DRIFT_DETECTED
        ]
    );
    let fired = &events[0];
    assert_eq!((fired.model.as_str(), fired.version), ("m", 1));
    assert_eq!((fired.rule.as_str(), fired.metric.as_str()), ("psi", "psi"));
    assert_eq!(fired.threshold, 0.25);
    assert!(fired.value >= 0.25);
    assert_eq!(fired.rows, 300);
    assert_eq!(fired.time_ms, T0 + 2 * MINUTE);
    assert_eq!(fired.window_start_ms, T0 - 7 * MINUTE);
    assert_eq!(fired.window_end_ms, T0 + 2 * MINUTE);
    assert_eq!(fired.top_features.len(), 1);
    assert_eq!(fired.top_features[0].0, "x");
    assert!(fired.files.is_empty());
    assert_eq!(events[1].threshold, 0.1);
    assert!(events[1].value <= 0.1);
    assert_eq!(events[2].time_ms, T0 + 62 * MINUTE);

    let report = monitor.report("m", 1).unwrap();
    assert_eq!(report.alerts.len(), 1);
    assert!(report.alerts[0].firing);
    assert_eq!(report.alerts[0].last_fired_ms, Some(T0 + 62 * MINUTE));
}

#[test]
fn csi_rules_watch_features() {
    let (monitor, _, events) = monitor(config(100));
    let rule = |metric: Metric| RuleSettings {
        consecutive: 1,
        ..RuleSettings::new(metric)
    };
    let settings = MonitorSettings {
        rules: Some(vec![
            rule(Metric::Csi),
            rule(Metric::CsiFeature("x".into())),
        ]),
        ..MonitorSettings::default()
    };
    monitor.set_version(spec("m", 1, settings)).unwrap();
    monitor.ingest(&drifted("m", 1, T0, 0, 100));
    monitor.evaluate(T0);
    let events = events.lock().unwrap();
    let rules: Vec<&str> = events.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(rules, ["csi", "csi:x"]);

    let unknown = MonitorSettings {
        rules: Some(vec![rule(Metric::CsiFeature("nope".into()))]),
        ..MonitorSettings::default()
    };
    let err = monitor.set_version(spec("m", 2, unknown)).unwrap_err();
    assert!(matches!(err, MonitorError::Settings(_)), "{err}");
    assert!(monitor.report("m", 2).is_none());
}

#[test]
fn bad_input_is_counted_and_skipped() {
    let (monitor, registry, _) = monitor(config(1));
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    let mut base = in_distribution("m", 1, T0, 0, 1).remove(0);
    base.request_id = "bad".into();
    let with = |f: &dyn Fn(&mut PredictionRecord)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    let records = [
        // No tensors at all: x, score and label are missing.
        with(&|r| {
            r.inputs.clear();
            r.outputs.clear();
        }),
        // An empty tensor.
        with(&|r| r.inputs[0].1.clear()),
        // NaN lands in its own bin.
        with(&|r| r.inputs[0].1[0] = FeatureValue::Number(f64::NAN)),
        // A numeric string is a number; a word in a numeric column is skipped.
        with(&|r| r.inputs[0].1[0] = FeatureValue::Category("12.5".into())),
        with(&|r| r.inputs[0].1[0] = FeatureValue::Category("abc".into())),
        // An unknown category is "other".
        with(&|r| r.outputs[1].1[0] = FeatureValue::Category("cat".into())),
        // Tensors renamed: their columns are missing.
        with(&|r| r.outputs[0].0 = "renamed".into()),
    ];
    monitor.ingest(&records);
    monitor.evaluate(T0);
    let report = monitor.report("m", 1).unwrap();
    assert_eq!(report.rows, 7);
    assert_eq!(report.features[0].rows, 4);
    let mv = [("model", "m"), ("version", "1")];
    assert_eq!(
        metric(&registry, "keel_monitor_records_total", &mv),
        Some(7.0)
    );
    assert_eq!(
        metric(&registry, "keel_monitor_values_skipped_total", &mv),
        Some(6.0)
    );
    let bin = |feature: &str, bin: &str| {
        metric(
            &registry,
            "keel_drift_bin_rows_total",
            &[("feature", feature), ("bin", bin)],
        )
    };
    assert_eq!(bin("x", "nan"), Some(1.0));
    assert_eq!(bin("label", "other"), Some(1.0));
    assert_eq!(bin("x", "0"), Some(3.0), "0 three times and 12.5");
}

#[test]
fn late_records_are_ignored() {
    let (monitor, registry, _) = monitor(config(1));
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    monitor.evaluate(T0 + 20 * MINUTE);
    monitor.ingest(&in_distribution("m", 1, T0, 0, 3));
    assert_eq!(monitor.report("m", 1).unwrap().rows, 0);
    let late = [("model", "m"), ("reason", "late")];
    assert_eq!(
        metric(&registry, "keel_monitor_records_ignored_total", &late),
        Some(3.0)
    );
}

#[test]
fn metrics_are_registered_once_and_labelled() {
    let (monitor, registry, _) = monitor(config(100));
    monitor
        .set_version(spec("m", 1, MonitorSettings::default()))
        .unwrap();
    let proportion = metric(
        &registry,
        "keel_drift_baseline_proportion",
        &[
            ("model", "m"),
            ("version", "1"),
            ("feature", "x"),
            ("bin", "3"),
        ],
    );
    assert_eq!(proportion, Some(0.1));
    let label_bins = series(
        &registry,
        "keel_drift_baseline_proportion",
        "feature",
        "label",
    );
    assert_eq!(label_bins, 4, "0, 1, other, nan");
    assert_eq!(
        series(&registry, "keel_drift_bin_rows_total", "model", "m"),
        11 + 11 + 4
    );
    assert_eq!(
        metric(&registry, "keel_drift_alert", &[("rule", "psi")]),
        Some(0.0)
    );
    monitor.retire_version("m", 1);
    assert_eq!(series(&registry, "keel_drift_alert", "model", "m"), 0);
    let again = Monitor::new(config(100), &registry, None);
    assert!(matches!(again, Err(MonitorError::Prometheus(_))));
}

#[test]
fn invalid_config_is_rejected() {
    let bad = keel_monitor::MonitorConfig {
        feedback_capacity: 0,
        ..config(1)
    };
    assert!(matches!(
        Monitor::new(bad, &Registry::new(), None),
        Err(MonitorError::Config(_))
    ));
}

#[tokio::test]
async fn run_evaluates_with_wall_clock_time() {
    let (monitor, registry, _) = monitor(keel_monitor::MonitorConfig {
        evaluate_every: std::time::Duration::from_millis(10),
        ..config(1)
    });
    monitor.set_version(spec("m", 1, no_rules())).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    monitor.ingest(&in_distribution("m", 1, now, 0, 5));
    let task = tokio::spawn(std::sync::Arc::clone(&monitor).run());
    let rows = || metric(&registry, "keel_drift_window_rows", &[("model", "m")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows() != Some(5.0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
    assert_eq!(rows(), Some(5.0));
    assert!(metric(&registry, "keel_drift_psi", &[("output", "score")]).is_some());
}

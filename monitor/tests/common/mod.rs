//! Helpers shared by the drift core's integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_monitor::{
    AlertEvent, AlertSink, Baseline, Column, FeatureValue, Kind, Monitor, MonitorConfig,
    PredictionRecord,
};
use prometheus::Registry;

pub const MINUTE: u64 = 60_000;
/// A minute-aligned start time, so buckets line up with whole minutes.
pub const T0: u64 = 1_700_000_040_000;

pub fn config(min_samples: u64) -> MonitorConfig {
    MonitorConfig {
        window: Duration::from_secs(600),
        buckets: 10,
        min_samples,
        ..MonitorConfig::default()
    }
}

/// A monitor with an event collector.
pub fn monitor(config: MonitorConfig) -> (Arc<Monitor>, Registry, Arc<Mutex<Vec<AlertEvent>>>) {
    let registry = Registry::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = Arc::clone(&events);
    let sink: AlertSink = Arc::new(move |e| sink_events.lock().unwrap().push(e));
    let monitor = Monitor::new(config, &registry, Some(sink)).unwrap();
    (monitor, registry, events)
}

pub fn numbers(values: impl IntoIterator<Item = f64>) -> Vec<FeatureValue> {
    values.into_iter().map(FeatureValue::Number).collect()
}

/// A baseline with numeric input feature "x" (tensor "input", element 0) and numeric output
/// "score" (tensor "score"), both distributed like `0, 1, ..., 999`, plus a categorical output
/// "label" (tensor "label") of `i % 2`.
pub fn baseline(model: &str, version: u64) -> Baseline {
    let values = numbers((0..1000).map(f64::from));
    let column = |name: &str, tensor: &str, kind, values: Vec<FeatureValue>| Column {
        name: name.into(),
        tensor: tensor.into(),
        index: 0,
        kind,
        values,
    };
    Baseline::compute(
        model,
        version,
        &[column("x", "input", None, values.clone())],
        &[
            column("score", "score", None, values),
            column(
                "label",
                "label",
                Some(Kind::Categorical),
                numbers((0..1000).map(|i| f64::from(i % 2))),
            ),
        ],
        10,
    )
    .unwrap()
}

/// A record with feature `x`, output `score` = `x` and label `label`.
pub fn record(
    model: &str,
    version: u64,
    time_ms: u64,
    id: usize,
    x: f64,
    label: f64,
) -> PredictionRecord {
    PredictionRecord {
        model: model.into(),
        version,
        request_id: format!("req-{id}"),
        row: 0,
        timestamp_ms: time_ms,
        inputs: vec![("input".into(), numbers([x]))],
        outputs: vec![
            ("score".into(), numbers([x])),
            ("label".into(), numbers([label])),
        ],
    }
}

/// `n` records distributed exactly like the baseline when `n` is a multiple of 1000 (and close
/// otherwise): x cycles through 0..1000 starting at `start`.
pub fn in_distribution(
    model: &str,
    version: u64,
    time_ms: u64,
    start: usize,
    n: usize,
) -> Vec<PredictionRecord> {
    (start..start + n)
        .map(|i| {
            record(
                model,
                version,
                time_ms,
                i,
                (i % 1000) as f64,
                (i % 2) as f64,
            )
        })
        .collect()
}

/// `n` records far above the training range.
pub fn drifted(
    model: &str,
    version: u64,
    time_ms: u64,
    start: usize,
    n: usize,
) -> Vec<PredictionRecord> {
    (start..start + n)
        .map(|i| record(model, version, time_ms, i, 5000.0 + i as f64, 1.0))
        .collect()
}

/// Series of `name` in the text exposition whose labels include all of `labels`, as values.
fn matching(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// The value of the series of `name` whose labels include all of `labels`, if it exists.
pub fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    matching(registry, name, labels).first().copied()
}

/// Number of series of `name` with label `key` = `value`.
pub fn series(registry: &Registry, name: &str, key: &str, value: &str) -> usize {
    matching(registry, name, &[(key, value)]).len()
}

/// A fixture under `tests/fixtures/`, written by a numpy/scipy reference script.
pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture's value: JSON null is NaN (JSON has no NaN), numbers are numbers, strings are categories.
pub fn fixture_value(v: &serde_json::Value) -> FeatureValue {
    match v {
        serde_json::Value::Null => FeatureValue::Number(f64::NAN),
        serde_json::Value::Number(n) => FeatureValue::Number(n.as_f64().unwrap()),
        serde_json::Value::String(s) => FeatureValue::Category(s.clone()),
        other => panic!("unexpected fixture value {other}"),
    }
}

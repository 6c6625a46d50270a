//! Drift monitor ingest: breast-cancer-shaped prediction records (30 numeric features, one numeric
//! output monitored) binned into the rolling window, with and without logging predictions for
//! the feedback join; and one evaluation (PSI/CSI, gauges, rules) of that version.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel_monitor::{
    Baseline, Column, FeatureValue, ModelSpec, Monitor, MonitorConfig, MonitorSettings,
    PredictionRecord, Task,
};
use prometheus::Registry;

const FEATURES: usize = 30;
const RECORDS: usize = 4096;
const T0: u64 = 1_700_000_040_000;

/// Deterministic values spread over a few units, different per feature.
fn value(row: usize, feature: usize) -> f64 {
    ((row * 31 + feature * 17) as f64 * 0.37).sin() * (1.0 + feature as f64)
}

fn baseline() -> Baseline {
    let column = |name: String, tensor: &str, index, values: Vec<f64>| Column {
        name,
        tensor: tensor.into(),
        index,
        kind: None,
        values: values.into_iter().map(FeatureValue::Number).collect(),
    };
    let features: Vec<Column> = (0..FEATURES)
        .map(|f| {
            let values = (0..10_000).map(|r| value(r, f)).collect();
            column(format!("f{f}"), "input", f, values)
        })
        .collect();
    let probability = (0..10_000).map(|r| value(r, 99).abs() / 100.0).collect();
    let outputs = [column("probability".into(), "probability", 0, probability)];
    Baseline::compute("breast-cancer", 1, &features, &outputs, 10).unwrap()
}

fn records() -> Vec<PredictionRecord> {
    (0..RECORDS)
        .map(|r| {
            let p = value(r + 7, 99).abs() / 100.0;
            PredictionRecord {
                model: "breast-cancer".into(),
                version: 1,
                request_id: format!("request-{r:08}"),
                row: 0,
                timestamp_ms: T0 + r as u64,
                inputs: vec![(
                    "input".into(),
                    (0..FEATURES)
                        .map(|f| FeatureValue::Number(value(r + 3, f) * 1.1))
                        .collect(),
                )],
                outputs: vec![
                    (
                        "label".into(),
                        vec![FeatureValue::Number(f64::from(p > 0.5))],
                    ),
                    ("probability".into(), vec![FeatureValue::Number(p)]),
                ],
            }
        })
        .collect()
}

fn monitor(task: Option<Task>) -> std::sync::Arc<Monitor> {
    let monitor = Monitor::new(MonitorConfig::default(), &Registry::new(), None).unwrap();
    monitor
        .set_version(ModelSpec {
            model: "breast-cancer".into(),
            version: 1,
            baseline: Some(baseline()),
            settings: MonitorSettings {
                task,
                prediction_output: Some("label".into()),
                ..MonitorSettings::default()
            },
        })
        .unwrap();
    monitor
}

fn bench(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("monitor");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, task) in [
        ("drift", None),
        ("drift_and_feedback_log", Some(Task::Classifier)),
    ] {
        let monitor = monitor(task);
        group.bench_with_input(BenchmarkId::new("ingest", name), &records, |b, records| {
            b.iter(|| monitor.ingest(records))
        });
    }
    let monitor = monitor(None);
    monitor.ingest(&records);
    group.throughput(Throughput::Elements(1));
    group.bench_function("evaluate", |b| b.iter(|| monitor.evaluate(T0 + 5_000)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

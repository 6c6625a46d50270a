//! Drift monitor ingest: breast-cancer-shaped prediction records (30 numeric features, one numeric
//! output monitored) binned into the rolling window, with and without logging predictions for
//! the feedback join; the same rows as columnar batches of 256-row requests (what the drain hands
//! the embedded monitor), and expanded into records first (what it did before); as batches of
//! single-row requests (the usual traffic, the drain's per-request path); and one
//! evaluation (PSI/CSI, gauges, rules) of that version.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel_monitor::{
    Baseline, Column, FeatureValue, ModelSpec, Monitor, MonitorConfig, MonitorSettings,
    PredictionRecord, RowBatch, Task, TensorRows, Values,
};
use prometheus::Registry;

const FEATURES: usize = 30;
const RECORDS: usize = 4096;
/// Rows per request of the columnar batches.
const REQUEST_ROWS: usize = 256;
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

/// The records' rows as requests of `per_request` rows, tensors as the server copies them:
/// input `[rows, 30]` FP32, label `[rows]` INT64, probability `[rows, 1]` FP32.
struct Request {
    id: String,
    time_ms: u64,
    rows: Vec<u32>,
    input: Vec<f32>,
    label: Vec<i64>,
    probability: Vec<f32>,
}

fn requests(per_request: usize) -> Vec<Request> {
    (0..RECORDS / per_request)
        .map(|q| {
            let first = q * per_request;
            let rows = first..first + per_request;
            let p = |r: usize| value(r + 7, 99).abs() / 100.0;
            Request {
                id: format!("request-{q:08}"),
                time_ms: T0 + first as u64,
                rows: (0..per_request as u32).collect(),
                input: rows
                    .clone()
                    .flat_map(|r| (0..FEATURES).map(move |f| (value(r + 3, f) * 1.1) as f32))
                    .collect(),
                label: rows.clone().map(|r| i64::from(p(r) > 0.5)).collect(),
                probability: rows.map(|r| p(r) as f32).collect(),
            }
        })
        .collect()
}

fn batch(r: &Request) -> RowBatch<'_> {
    RowBatch {
        model: "breast-cancer",
        version: 1,
        request_id: &r.id,
        timestamp_ms: r.time_ms,
        rows: &r.rows,
        inputs: vec![TensorRows {
            name: "input",
            width: FEATURES,
            values: Values::F32(&r.input),
        }]
        .into(),
        outputs: vec![
            TensorRows {
                name: "label",
                width: 1,
                values: Values::I64(&r.label),
            },
            TensorRows {
                name: "probability",
                width: 1,
                values: Values::F32(&r.probability),
            },
        ]
        .into(),
    }
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
    let large = requests(REQUEST_ROWS);
    for (name, task) in [
        ("drift", None),
        ("drift_and_feedback_log", Some(Task::Classifier)),
    ] {
        let monitor = monitor(task);
        group.bench_with_input(
            BenchmarkId::new("ingest_batches", name),
            &large,
            |b, requests| {
                b.iter(|| {
                    let batches: Vec<RowBatch<'_>> = requests.iter().map(batch).collect();
                    monitor.ingest_batches(&batches);
                })
            },
        );
        // The drain before columnar ingest: one record per row, then the record path.
        group.bench_with_input(
            BenchmarkId::new("records_then_ingest", name),
            &large,
            |b, requests| {
                b.iter(|| {
                    let records: Vec<PredictionRecord> = requests
                        .iter()
                        .flat_map(|r| batch(r).records().collect::<Vec<_>>())
                        .collect();
                    monitor.ingest(&records);
                })
            },
        );
    }
    // Single-row requests, the usual traffic: the drain's per-request path.
    let single = requests(1);
    let drift = monitor(None);
    group.bench_with_input(
        BenchmarkId::new("ingest_batches_1_row", "drift"),
        &single,
        |b, requests| {
            b.iter(|| {
                let batches: Vec<RowBatch<'_>> = requests.iter().map(batch).collect();
                drift.ingest_batches(&batches);
            })
        },
    );
    let monitor = monitor(None);
    monitor.ingest(&records);
    group.throughput(Throughput::Elements(1));
    group.bench_function("evaluate", |b| b.iter(|| monitor.evaluate(T0 + 5_000)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

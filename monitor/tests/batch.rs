//! Columnar ingest (`Monitor::ingest_batches`) against the record path (`Monitor::ingest`) on the
//! same rows: the windows, the feedback join, the estimate and every metric must come out the same.

mod common;

use common::{MINUTE, T0, config, monitor};
use keel_monitor::{
    Baseline, Calibration, Column, FeatureValue, FeedbackRecord, Kind, ModelSpec, Monitor,
    MonitorSettings, PredictionRecord, RowBatch, Task, TensorRows, Values,
};
use prometheus::Registry;

/// A tensor's logged rows, owned (the server's copied tensors).
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<half::f16>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

struct Tensor {
    name: &'static str,
    width: usize,
    data: Data,
}

impl Tensor {
    fn rows(&self) -> TensorRows<'_> {
        let values = match &self.data {
            Data::F32(v) => Values::F32(v),
            Data::F64(v) => Values::F64(v),
            Data::F16(v) => Values::F16(v),
            Data::I64(v) => Values::I64(v),
            Data::U8(v) => Values::U8(v),
            Data::Bool(v) => Values::Bool(v),
            Data::Bytes(v) => Values::Bytes(v),
        };
        TensorRows {
            name: self.name,
            width: self.width,
            values,
        }
    }
}

struct Request {
    model: &'static str,
    version: u64,
    id: String,
    time_ms: u64,
    rows: Vec<u32>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

impl Request {
    fn batch(&self) -> RowBatch<'_> {
        RowBatch {
            model: self.model,
            version: self.version,
            request_id: &self.id,
            timestamp_ms: self.time_ms,
            rows: &self.rows,
            inputs: self.inputs.iter().map(Tensor::rows).collect(),
            outputs: self.outputs.iter().map(Tensor::rows).collect(),
        }
    }
}

fn numbers(values: impl IntoIterator<Item = f64>) -> Vec<FeatureValue> {
    values.into_iter().map(FeatureValue::Number).collect()
}

fn column(name: &str, tensor: &str, index: usize, kind: Kind, values: Vec<FeatureValue>) -> Column {
    Column {
        name: name.into(),
        tensor: tensor.into(),
        index,
        kind: Some(kind),
        values,
    }
}

/// Every kind of column the monitor bins: numeric features with a training range (values below,
/// above, NaN, infinite), one past a truncated row's width, one from a tensor never sent, numbers
/// sent as strings (some not numbers), FP16 and boolean features, categories by name and by
/// number, and outputs with a calibration and a predicted label for the feedback join.
fn baseline(version: u64) -> Baseline {
    let n = 1000;
    let range = |scale: f64| numbers((0..n).map(move |i| f64::from(i) * scale));
    let features = [
        column("a", "input", 0, Kind::Numeric, range(1.0)),
        column("b", "input", 2, Kind::Numeric, range(0.01)),
        // Rows are logged 4 elements wide: never there.
        column("c", "input", 5, Kind::Numeric, range(1.0)),
        column("absent", "absent", 0, Kind::Numeric, range(1.0)),
        column("text_number", "text_number", 0, Kind::Numeric, range(0.1)),
        column("half", "half", 0, Kind::Numeric, range(0.01)),
        column(
            "flag",
            "flag",
            0,
            Kind::Numeric,
            numbers((0..n).map(|i| f64::from(i % 2))),
        ),
        column(
            "color",
            "color",
            0,
            Kind::Categorical,
            (0..n)
                .map(|i| {
                    FeatureValue::Category(["red", "green", "blue", "7"][i as usize % 4].into())
                })
                .collect(),
        ),
        column(
            "code",
            "code",
            1,
            Kind::Categorical,
            numbers((0..n).map(|i| f64::from(i % 3))),
        ),
    ];
    let p: Vec<f64> = (0..n).map(|i| f64::from(i) / f64::from(n)).collect();
    let outputs = [
        column("p1", "probabilities", 1, Kind::Numeric, numbers(p.clone())),
        column(
            "label",
            "label",
            0,
            Kind::Categorical,
            numbers(p.iter().map(|&p| f64::from(u8::from(p >= 0.5)))),
        ),
    ];
    let mut b = Baseline::compute("m", version, &features, &outputs, 10).unwrap();
    let pairs = p.iter().enumerate().map(|(i, &p)| (p, i % 3 != 0));
    b.calibration = Some(Calibration::fit("probabilities", 1, 0.5, pairs).unwrap());
    b
}

fn spec(version: u64) -> ModelSpec {
    ModelSpec {
        model: "m".into(),
        version,
        baseline: Some(baseline(version)),
        settings: MonitorSettings {
            task: Some(Task::Classifier),
            prediction_output: Some("label".into()),
            positive_label: FeatureValue::Number(1.0),
            rules: Some(Vec::new()),
            ..MonitorSettings::default()
        },
    }
}

/// A number with the odd ones the monitor must handle alike on both paths.
fn number(rng: &mut fastrand::Rng, scale: f64) -> f64 {
    match rng.u32(0..40) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => -rng.f64() * scale,
        4 => (1.0 + rng.f64()) * 1000.0 * scale,
        _ => rng.f64() * 1000.0 * scale,
    }
}

/// A request of `rows` rows, `sampled` of them logged, `version` 2's labels as strings.
fn request(rng: &mut fastrand::Rng, i: usize, version: u64, time_ms: u64, rows: u32) -> Request {
    let sampled: Vec<u32> = (0..rows).filter(|_| rng.u32(0..4) != 0).collect();
    let n = sampled.len();
    let input = (0..n * 4)
        .map(|k| number(rng, if k % 4 == 2 { 0.01 } else { 1.0 }) as f32)
        .collect();
    let text = (0..n)
        .map(|_| match rng.u32(0..5) {
            0 => b"abc".to_vec(),
            1 => format!(" {} ", rng.u32(0..200)).into_bytes(),
            2 => vec![0xff, b'1'],
            _ => format!("{}", number(rng, 0.1)).into_bytes(),
        })
        .collect();
    let colors = ["red", "green", "blue", "7", "7.0", "purple", "other", "nan"];
    let color = (0..n)
        .map(|_| colors[rng.usize(..colors.len())].as_bytes().to_vec())
        .collect();
    let p: Vec<f64> = (0..n)
        .map(|_| match rng.u32(0..30) {
            0 => f64::NAN,
            _ => rng.f64(),
        })
        .collect();
    let labels = p.iter().map(|&p| i64::from(p >= 0.5));
    let label = if version == 2 {
        Data::Bytes(labels.map(|l| l.to_string().into_bytes()).collect())
    } else {
        Data::I64(labels.collect())
    };
    Request {
        model: "m",
        version,
        id: format!("req-{i}"),
        time_ms,
        rows: sampled,
        inputs: vec![
            Tensor {
                name: "input",
                width: 4,
                data: Data::F32(input),
            },
            Tensor {
                name: "text_number",
                width: 1,
                data: Data::Bytes(text),
            },
            Tensor {
                name: "half",
                width: 1,
                data: Data::F16(
                    (0..n)
                        .map(|_| half::f16::from_f64(number(rng, 0.01)))
                        .collect(),
                ),
            },
            Tensor {
                name: "flag",
                width: 1,
                data: Data::Bool((0..n).map(|_| rng.bool()).collect()),
            },
            Tensor {
                name: "color",
                width: 1,
                data: Data::Bytes(color),
            },
            Tensor {
                name: "code",
                width: 2,
                data: Data::U8((0..2 * n).map(|_| rng.u8(0..5)).collect()),
            },
        ],
        outputs: vec![
            Tensor {
                name: "probabilities",
                width: 2,
                data: Data::F64(p.iter().flat_map(|&p| [1.0 - p, p]).collect()),
            },
            Tensor {
                name: "label",
                width: 1,
                data: label,
            },
        ],
    }
}

/// Requests over a few minutes, with late and far-future ones, an unknown version and model, a
/// short tensor (its last rows missing) and an empty request.
fn requests(seed: u64) -> Vec<Request> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out: Vec<Request> = (0..160)
        .map(|i| {
            let version = [1, 1, 2][i % 3];
            let time = T0 + 15 * MINUTE + (i as u64 % 7) * MINUTE + rng.u64(0..1000);
            let rows = [1, 3, 64, 256][i % 4];
            request(&mut rng, i, version, time, rows)
        })
        .collect();
    out.push(request(&mut rng, 100, 1, T0, 32)); // late: before the window
    out.push(request(&mut rng, 101, 2, T0 + 30 * 24 * 60 * MINUTE, 32)); // future
    out.push(request(&mut rng, 102, 3, T0 + 16 * MINUTE, 8)); // unknown version
    let mut unknown = request(&mut rng, 103, 1, T0 + 16 * MINUTE, 8);
    unknown.model = "nobody";
    out.push(unknown);
    let mut short = request(&mut rng, 104, 1, T0 + 17 * MINUTE, 16);
    if let Data::F32(v) = &mut short.inputs[0].data {
        v.truncate(v.len() - 10);
    }
    out.push(short);
    out.push(request(&mut rng, 105, 1, T0 + 17 * MINUTE, 0));
    out
}

fn exposition(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap()
}

fn setup() -> (std::sync::Arc<Monitor>, Registry) {
    let (monitor, registry, _) = monitor(config(10));
    monitor.set_version(spec(1)).unwrap();
    monitor.set_version(spec(2)).unwrap();
    (monitor, registry)
}

fn reports(monitor: &Monitor) -> String {
    let reports: Vec<_> = [1, 2]
        .iter()
        .map(|&v| monitor.report("m", v).unwrap())
        .collect();
    // JSON: NaN-free comparison of every field, floats included.
    serde_json::to_string(&reports).unwrap()
}

#[test]
fn columnar_ingest_counts_what_records_count() {
    for seed in 0..4 {
        let requests = requests(seed);
        let batches: Vec<RowBatch<'_>> = requests.iter().map(Request::batch).collect();
        let records: Vec<PredictionRecord> = batches.iter().flat_map(|b| b.records()).collect();
        assert!(records.len() > 2000, "{}", records.len());

        let (by_records, by_records_registry) = setup();
        // Runs of the same (model, version), as the drain hands them over.
        by_records.ingest(&records);
        let (by_batches, by_batches_registry) = setup();
        for run in batches.chunks(10) {
            by_batches.ingest_batches(run);
        }
        // All at once: enough rows that two threads tally them.
        let (at_once, at_once_registry) = setup();
        assert!(records.len() > 8192, "{}", records.len());
        at_once.ingest_batches(&batches);

        let now = T0 + 22 * MINUTE;
        by_records.evaluate(now);
        by_batches.evaluate(now);
        at_once.evaluate(now);
        let report = reports(&by_batches);
        assert_eq!(reports(&by_records), report, "seed {seed}");
        assert_eq!(reports(&at_once), report, "seed {seed}");
        let text = exposition(&by_batches_registry);
        assert_eq!(exposition(&by_records_registry), text, "seed {seed}");
        assert_eq!(exposition(&at_once_registry), text, "seed {seed}");
        for needle in [
            "keel_monitor_values_skipped_total",
            "reason=\"late\"",
            "reason=\"future\"",
            "reason=\"unknown_version\"",
            "reason=\"unknown_model\"",
            "keel_model_estimated_accuracy",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }

        // The feedback join finds the same predictions, by request id and row.
        let feedback: Vec<FeedbackRecord> = records
            .iter()
            .step_by(3)
            .map(|r| FeedbackRecord {
                model: r.model.clone(),
                request_id: r.request_id.clone(),
                row: r.row,
                truth: FeatureValue::Number(f64::from(r.row % 2 == 0)),
                timestamp_ms: now,
            })
            .chain(std::iter::once(FeedbackRecord {
                model: "m".into(),
                request_id: "req-0".into(),
                row: 999,
                truth: FeatureValue::Number(1.0),
                timestamp_ms: now,
            }))
            .collect();
        let summary = by_batches.feedback(&feedback);
        assert_eq!(by_records.feedback(&feedback), summary, "seed {seed}");
        assert!(
            summary.matched > 100 && summary.unmatched > 0,
            "{summary:?}"
        );
        by_records.evaluate(now + 1);
        by_batches.evaluate(now + 1);
        assert_eq!(reports(&by_records), reports(&by_batches), "seed {seed}");
        assert_eq!(
            exposition(&by_records_registry),
            exposition(&by_batches_registry),
            "seed {seed}"
        );
    }
}

/// The ids of this process's threads named `name` (Linux: `/proc/self/task/*/comm`, which keeps a
/// name's first 15 bytes).
fn threads_named(name: &str) -> Vec<String> {
    let name = &name[..name.len().min(15)];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut ids: Vec<String> = tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| task.file_name().to_string_lossy().into_owned())
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn large_runs_share_one_long_lived_tally_thread() {
    if !std::path::Path::new("/proc/self/task").exists() {
        return;
    }
    // A thread started and ended per run made mimalloc fault fresh huge pages into the serving
    // threads; the helper must be the same thread, still there between runs.
    let several = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let mut seen = Vec::new();
    for seed in 0..3 {
        let requests = requests(seed);
        let batches: Vec<RowBatch<'_>> = requests.iter().map(Request::batch).collect();
        let (monitor, _registry) = setup();
        monitor.ingest_batches(&batches);
        let helpers = threads_named("keel-monitor-tally");
        assert_eq!(
            helpers.len(),
            usize::from(several),
            "seed {seed}: {helpers:?}"
        );
        if seed > 0 {
            assert_eq!(helpers, seen, "seed {seed}: a new tally thread");
        }
        seen = helpers;
    }
}

#[test]
fn records_of_a_batch_split_its_columns_by_row() {
    let input = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let names = [b"a".to_vec(), b"b".to_vec()];
    let batch = RowBatch {
        model: "m",
        version: 3,
        request_id: "r",
        timestamp_ms: 7,
        rows: &[1, 4],
        inputs: vec![TensorRows {
            name: "x",
            width: 3,
            values: Values::F32(&input),
        }]
        .into(),
        outputs: vec![TensorRows {
            name: "label",
            width: 1,
            values: Values::Bytes(&names),
        }]
        .into(),
    };
    let records: Vec<_> = batch.records().collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[1].row, records[1].version, records[1].timestamp_ms),
        (4, 3, 7)
    );
    assert_eq!(
        records[1].inputs,
        vec![("x".into(), numbers([4.0, 5.0, 6.0]))]
    );
    assert_eq!(
        records[1].outputs,
        vec![("label".into(), vec![FeatureValue::Category("b".into())])]
    );
}

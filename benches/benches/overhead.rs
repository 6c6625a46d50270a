//! Keel's serving core against the backend it wraps, per shipped model (`models/`) that ONNX Runtime
//! runs, at 1, 32 and 256 rows per request and concurrency 1:
//!
//! - `raw`: the ONNX Runtime backend alone, `Backend::infer` in a loop on this thread;
//! - `keel`: `ServedVersion::infer` on a multi-thread tokio runtime, the version loaded as `keel serve`
//!   loads it (signature checks, scheduler or direct run, metrics, statistics), monitoring off;
//! - `keel+log`: the same with the prediction log and the embedded drift monitor on (the default of
//!   `keel serve`), so each request's rows are captured and drained to the monitor.
//!
//! Criterion reports time per request and rows per second; Keel's overhead per request is `keel` (or
//! `keel+log`) minus `raw` at the same rows. Only the call is timed: building the request's tensors and
//! dropping the response are outside the clock in every variant, as a front end's decode and encode are
//! not the core's cost.
//!
//! Skips (exit 0) when ONNX Runtime cannot be loaded: set ORT_DYLIB_PATH to libonnxruntime.so, or create
//! `.venv` with `make serve`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use keel_server::ServeConfig;
use keel_server::backend::{BackendKind, onnxruntime};
use keel_server::config::MonitorMode;
use keel_server::infer::InferRequest;
use keel_server::metrics::{Metrics, Protocol};
use keel_server::monitoring::Monitoring;
use keel_server::repository::{Hooks, MODEL_FILE, Repository, ServedVersion, VersionObserver};
use keel_server::tensor::{DataType, Tensor, TensorData};
use tokio::runtime::Runtime;

// The allocator `keel serve` runs with: allocation is part of both the backend's and Keel's cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: [usize; 3] = [1, 32, 256];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A repository over `models/` loaded as `keel serve` loads it, with monitoring as `monitor` says. The
/// monitoring handle is returned so its drain and evaluator live as long as the repository.
fn load(rt: &Runtime, monitor: MonitorMode) -> (Arc<Repository>, Option<Arc<Monitoring>>) {
    let mut config = ServeConfig::local(workspace().join("models"));
    config.monitor = monitor;
    let settings = config.repository_settings().expect("repository settings");
    rt.block_on(async {
        let metrics = Metrics::new();
        let monitoring = Monitoring::start(&config, metrics.registry()).expect("monitoring starts");
        let hooks = Hooks {
            log: monitoring.as_ref().map(|m| m.log().clone()),
            observer: monitoring.clone().map(|m| m as Arc<dyn VersionObserver>),
            decode_request: Some(keel_server::server::decode_warmup_request),
        };
        let repository = Repository::load(settings, metrics, hooks)
            .await
            .expect("the models directory is readable");
        (Arc::new(repository), monitoring)
    })
}

/// Rows of the breast-cancer training set (30 features), so trees take the paths real traffic takes and
/// the drift monitor bins realistic values.
fn dataset() -> Vec<Vec<f64>> {
    let path = workspace().join("tests/data/breast_cancer_train.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| line.split(',').map(|v| v.trim().parse().ok()).collect())
        .collect()
}

/// One request of `rows` rows for `served`'s signature: dataset rows where the input is that wide,
/// deterministic values otherwise. `None` for a datatype this bench does not generate.
fn request(served: &ServedVersion, rows: usize, dataset: &[Vec<f64>]) -> Option<Vec<Tensor>> {
    let batched = served.signature.max_batch_size > 0;
    if !batched && rows > 1 {
        return None;
    }
    served
        .signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, d) {
                    (0, _) if batched => rows,
                    (_, -1) => 1,
                    (_, d) => d as usize,
                })
                .collect();
            let width: usize = shape.iter().skip(usize::from(batched)).product();
            let count = shape.iter().product::<usize>();
            let value = |i: usize| {
                let (row, column) = (i / width.max(1), i % width.max(1));
                match dataset.get(row % dataset.len().max(1)) {
                    Some(r) if r.len() >= width => r[column],
                    _ => ((i * 31) as f64 * 0.37).sin(),
                }
            };
            let values = (0..count).map(value);
            let data = match spec.datatype {
                DataType::Fp32 => TensorData::Fp32(values.map(|v| v as f32).collect()),
                DataType::Fp64 => TensorData::Fp64(values.collect()),
                DataType::Int64 => TensorData::Int64(values.map(|v| v as i64).collect()),
                DataType::Int32 => TensorData::Int32(values.map(|v| v as i32).collect()),
                _ => return None,
            };
            Some(Tensor {
                name: spec.name.clone(),
                shape,
                data,
            })
        })
        .collect()
}

/// Times `served.infer` one request after another on a runtime worker, as a connection task runs it.
fn keel_loop(rt: &Runtime, served: &Arc<ServedVersion>, inputs: &[Tensor], iters: u64) -> Duration {
    let (served, inputs) = (served.clone(), inputs.to_vec());
    let task = rt.spawn(async move {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let request = InferRequest {
                inputs: inputs.clone(),
                ..Default::default()
            };
            let start = Instant::now();
            let response = served.infer(request, Protocol::Http).await;
            total += start.elapsed();
            black_box(response.expect("inference"));
        }
        total
    });
    rt.block_on(task).expect("the bench task")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (plain, _) = load(&rt, MonitorMode::Off);
    let (logged, _monitoring) = load(&rt, MonitorMode::Embedded);
    let dataset = dataset();
    for entry in plain.models().values() {
        if let Some(why) = &entry.error {
            eprintln!("overhead: skipping model {}: {why}", entry.name);
        }
        for served in entry.ready_versions() {
            let name = format!("{}-v{}", served.model, served.version);
            if served.backend != BackendKind::OnnxRuntime {
                eprintln!(
                    "overhead: skipping {name}: served by {}",
                    served.backend.name()
                );
                continue;
            }
            let path = served.dir.join(MODEL_FILE);
            let mut raw = BackendKind::OnnxRuntime
                .load(&path, &served.signature, &served.config)
                .expect("the raw backend loads what Keel loaded");
            let with_log = logged
                .ready_version(&served.model, Some(served.version))
                .expect("both repositories load the same versions");
            let mut group = c.benchmark_group(format!("overhead/{name}"));
            for rows in ROWS {
                let Some(inputs) = request(served, rows, &dataset) else {
                    eprintln!("overhead: skipping {name} at {rows} rows: cannot build its inputs");
                    continue;
                };
                group.throughput(Throughput::Elements(rows as u64));
                group.bench_function(BenchmarkId::new("raw", rows), |b| {
                    b.iter_custom(|iters| {
                        // On a fresh thread of its own, as an instance runs its backend, so neither
                        // side gets the bench's main thread and its state.
                        std::thread::scope(|s| {
                            s.spawn(|| {
                                let mut total = Duration::ZERO;
                                for _ in 0..iters {
                                    let batch = inputs.clone();
                                    let start = Instant::now();
                                    let result = raw.infer(batch);
                                    total += start.elapsed();
                                    black_box(result.expect("inference"));
                                }
                                total
                            })
                            .join()
                            .expect("the raw loop")
                        })
                    })
                });
                group.bench_function(BenchmarkId::new("keel", rows), |b| {
                    b.iter_custom(|iters| keel_loop(&rt, served, &inputs, iters))
                });
                group.bench_function(BenchmarkId::new("keel+log", rows), |b| {
                    b.iter_custom(|iters| keel_loop(&rt, &with_log, &inputs, iters))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);

// criterion_main!, preceded by the check that lets the bench skip where ONNX Runtime is missing.
fn main() {
    if let Err(why) = onnxruntime::init(None) {
        eprintln!("overhead: skipped, ONNX Runtime is unavailable: {why}");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

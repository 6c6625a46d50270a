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
//! With `KEEL_OVERHEAD_BLOCKS=N` (and an optional `KEEL_OVERHEAD_FILTER`, a substring of
//! `model-vN/rows`) it runs no criterion and alternates instead blocks of [`BLOCK_CALLS`] calls of the
//! three variants, N blocks each, printing the medians of each block's difference from the raw block
//! before it. On a shared VM the variants measured one after another (criterion) drift apart by more
//! than the overhead; paired blocks see the same neighbours.
//!
//! Skips (exit 0) when ONNX Runtime cannot be loaded: set ORT_DYLIB_PATH to libonnxruntime.so, or create
//! `.venv` with `make serve`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use keel_server::ServeConfig;
use keel_server::backend::{Backend, BackendKind, onnxruntime};
use keel_server::config::MonitorMode;
use keel_server::infer::InferRequest;
use keel_server::metrics::{Metrics, Protocol};
use keel_server::monitoring::Monitoring;
use keel_server::repository::{Hooks, MODEL_FILE, Repository, ServedVersion, VersionObserver};
use keel_server::tensor::{DataType, Tensor, TensorData};
use tokio::runtime::Runtime;

// The allocator `keel serve` runs with: allocation is part of both the backend's and Keel's cost.
#[global_allocator]
static GLOBAL: keel_server::alloc::Allocator = keel_server::alloc::Allocator;

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

/// Times `raw.infer` one request after another on a fresh thread of its own, as an instance runs its
/// backend, so neither side gets the bench's main thread and its state.
fn raw_loop(raw: &mut Box<dyn Backend>, inputs: &[Tensor], iters: u64) -> Duration {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = inputs.to_vec();
                let start = Instant::now();
                let result = raw.infer(&batch);
                // Inside the clock, as Keel's variants free their request's inputs.
                drop(batch);
                total += start.elapsed();
                black_box(result.expect("inference"));
            }
            total
        })
        .join()
        .expect("the raw loop")
    })
}

/// One model version at one size, with everything the three variants need.
struct Case<'a> {
    name: String,
    rows: usize,
    raw: &'a mut Box<dyn Backend>,
    plain: &'a Arc<ServedVersion>,
    logged: &'a Arc<ServedVersion>,
    inputs: Vec<Tensor>,
}

/// Loads what both modes measure and calls `each` per model version and size: every version ONNX
/// Runtime serves, with the raw backend loaded from the same file.
fn cases(rt: &Runtime, mut each: impl FnMut(Case<'_>)) {
    let (plain, _) = load(rt, MonitorMode::Off);
    let (logged, _monitoring) = load(rt, MonitorMode::Embedded);
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
            for rows in ROWS {
                let Some(inputs) = request(served, rows, &dataset) else {
                    eprintln!("overhead: skipping {name} at {rows} rows: cannot build its inputs");
                    continue;
                };
                each(Case {
                    name: name.clone(),
                    rows,
                    raw: &mut raw,
                    plain: served,
                    logged: &with_log,
                    inputs,
                });
            }
        }
    }
}

/// Calls per block in the paired mode: long enough to average out a tick, short enough that the
/// neighbours of a raw block and the Keel blocks after it are the same.
const BLOCK_CALLS: u64 = 200;

/// The paired mode (`KEEL_OVERHEAD_BLOCKS`, see the module's documentation).
fn blocks(rt: &Runtime, blocks: usize, filter: Option<&str>) {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
    cases(rt, |case| {
        let label = format!("{}/{}", case.name, case.rows);
        if filter.is_some_and(|f| !label.contains(f)) {
            return;
        }
        let per_call = |d: Duration| d.as_secs_f64() * 1e6 / BLOCK_CALLS as f64;
        let (mut raw, mut plain, mut logged) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..blocks {
            let r = per_call(raw_loop(case.raw, &case.inputs, BLOCK_CALLS));
            let k = per_call(keel_loop(rt, case.plain, &case.inputs, BLOCK_CALLS));
            let l = per_call(keel_loop(rt, case.logged, &case.inputs, BLOCK_CALLS));
            raw.push(r);
            plain.push(k - r);
            logged.push(l - r);
        }
        println!(
            "{label}: raw {:.1} µs, keel {:+.1}, keel+log {:+.1} (medians of {blocks} paired blocks)",
            median(raw),
            median(plain),
            median(logged)
        );
    });
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    cases(&rt, |case| {
        let Case {
            name,
            rows,
            raw,
            plain,
            logged,
            inputs,
        } = case;
        let mut group = c.benchmark_group(format!("overhead/{name}"));
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new("raw", rows), |b| {
            b.iter_custom(|iters| raw_loop(raw, &inputs, iters))
        });
        group.bench_function(BenchmarkId::new("keel", rows), |b| {
            b.iter_custom(|iters| keel_loop(&rt, plain, &inputs, iters))
        });
        group.bench_function(BenchmarkId::new("keel+log", rows), |b| {
            b.iter_custom(|iters| keel_loop(&rt, logged, &inputs, iters))
        });
        group.finish();
    });
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

criterion_group!(benches, bench);

// criterion_main!, preceded by the check that lets the bench skip where ONNX Runtime is missing.
fn main() {
    if let Err(why) = onnxruntime::init(None) {
        eprintln!("overhead: skipped, ONNX Runtime is unavailable: {why}");
        return;
    }
    if let Some(n) = std::env::var("KEEL_OVERHEAD_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let filter = std::env::var("KEEL_OVERHEAD_FILTER").ok();
        return blocks(&runtime(), n, filter.as_deref());
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

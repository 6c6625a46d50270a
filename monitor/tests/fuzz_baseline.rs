//! Fuzz/property target for `baseline.json` (docs/fuzzing.md): what `Baseline::load` does after reading
//! the file (`serde_json` into [`Baseline`], then [`Baseline::validate`]), and, for every baseline it
//! accepts, what the monitor does with one: start a version on it, count records against it, evaluate and
//! report. Properties: no panic; a refusal is an `Err`; the heap used stays under `FACTOR * input + SLACK`
//! (measured by a peak-live-bytes counter over the System allocator, this test binary only); a baseline
//! generated valid is accepted.
//!
//! `KEEL_FUZZ_CASES` (default 256) cases from `KEEL_FUZZ_SEED` (default fixed); `make fuzz` runs a million.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use keel_monitor::{
    Baseline, BaselineColumn, Distribution, FeatureValue, ModelSpec, Monitor, MonitorConfig,
    MonitorSettings, PredictionRecord,
};
use peak_alloc::PeakAlloc;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// One test at a time: the allocation counter is process-wide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SLACK: usize = 64 * 1024;
/// serde's internally tagged, flattened enum buffers every column as a generic `Content` tree before it
/// becomes typed (32 bytes per scalar; an edge written `0,` is 2 bytes), and the monitor then builds its
/// bins from the baseline.
const FACTOR: usize = 64;
const T0: u64 = 1_700_000_040_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn check_bound(
    what: &str,
    input: usize,
    peak: usize,
    worst: &AtomicU64,
) -> Result<(), TestCaseError> {
    if input >= 4096 {
        worst.fetch_max(
            (peak as u128 * 1000 / input as u128) as u64,
            Ordering::Relaxed,
        );
    }
    let limit = FACTOR * input + SLACK;
    // KEEL_FUZZ_BOUND=off (triage only): report the amplification without failing on it.
    let off = std::env::var("KEEL_FUZZ_BOUND").is_ok_and(|v| v == "off");
    prop_assert!(
        off || peak <= limit,
        "{what}: allocated {peak} bytes at peak for {input} bytes of baseline.json, over the bound \
         {FACTOR} x input + {SLACK} = {limit} ({:.1}x)",
        peak as f64 / input as f64
    );
    Ok(())
}

fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let out = f();
    (out, ALLOC.peak_usage().saturating_sub(base))
}

#[derive(Clone)]
struct Case {
    bytes: Vec<u8>,
    valid: bool,
    origin: String,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes.len() <= 4096 {
            write!(
                f,
                "b\"{}\" (valid: {})",
                self.bytes.escape_ascii(),
                self.valid
            )
        } else {
            write!(f, "<{} bytes from {}>", self.bytes.len(), self.origin)
        }
    }
}

fn name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => select(vec!["mean radius", "label", "score", "", "x", "é", "a\u{0}b"]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn float() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        select(vec![
            0.0,
            -0.0,
            0.5,
            1.0,
            1.0001,
            -1e-9,
            1e308,
            -1e308,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]),
        any::<f64>(),
    ]
}

/// A numeric or categorical column whose proportions sum to 1.
fn valid_column() -> impl Strategy<Value = BaselineColumn> + Clone {
    let numeric = (vec(-1e6f64..1e6, 0..12), 0.0f64..0.5).prop_map(|(mut edges, nan)| {
        edges.sort_by(f64::total_cmp);
        edges.dedup();
        let k = edges.len() + 1;
        Distribution::Numeric {
            edges,
            proportions: vec![(1.0 - nan) / k as f64; k],
            nan_proportion: nan,
            min: None,
            max: None,
        }
    });
    let categorical = (
        btree_map(name(), Just(()), 0..8),
        0.0f64..0.5,
        any::<bool>(),
    )
        .prop_map(|(cats, nan, other)| {
            let k = cats.len() + usize::from(other || cats.is_empty());
            let share = (1.0 - nan) / k as f64;
            Distribution::Categorical {
                other: if other || cats.is_empty() { share } else { 0.0 },
                categories: cats.into_keys().map(|c| (c, share)).collect(),
                nan_proportion: nan,
            }
        });
    (
        select(vec!["input", "label", "probabilities"]),
        0usize..4,
        prop_oneof![numeric, categorical],
    )
        .prop_map(|(tensor, index, distribution)| BaselineColumn {
            name: String::new(),
            tensor: tensor.into(),
            index,
            distribution,
        })
}

fn valid_baseline() -> impl Strategy<Value = Baseline> + Clone {
    (
        vec(valid_column(), 0..5),
        vec(valid_column(), 0..3),
        any::<u64>(),
    )
        .prop_map(|(mut features, mut outputs, rows)| {
            for (i, c) in features.iter_mut().chain(outputs.iter_mut()).enumerate() {
                c.name = format!("c{i}");
            }
            Baseline {
                schema_version: 1,
                model: "m".into(),
                version: 1,
                rows,
                features,
                outputs,
                calibration: None,
            }
        })
}

fn json_any() -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        name().prop_map(Value::String),
        select(vec!["numeric", "categorical", "other"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(
                select(vec![
                    "kind",
                    "edges",
                    "proportions",
                    "nan_proportion",
                    "categories",
                    "other",
                    "name",
                    "tensor",
                    "index",
                ])
                .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Edit {
    Top(&'static str, Value),
    Column(bool, usize, &'static str, Value),
    Remove(bool, usize, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> + Clone {
    let top = select(vec![
        "schema_version",
        "model",
        "version",
        "rows",
        "features",
        "outputs",
        "extra",
    ]);
    let field = select(vec![
        "name",
        "tensor",
        "index",
        "kind",
        "edges",
        "proportions",
        "nan_proportion",
        "categories",
        "other",
        "extra",
    ]);
    prop_oneof![
        1 => (top, json_any()).prop_map(|(k, v)| Edit::Top(k, v)),
        3 => (any::<bool>(), any::<usize>(), field.clone(), json_any())
            .prop_map(|(o, i, k, v)| Edit::Column(o, i, k, v)),
        1 => (any::<bool>(), any::<usize>(), field).prop_map(|(o, i, k)| Edit::Remove(o, i, k)),
    ]
}

fn apply(doc: &mut Value, e: &Edit) {
    let (outputs, i, k) = match e {
        Edit::Top(k, v) => {
            doc[*k] = v.clone();
            return;
        }
        Edit::Column(outputs, i, k, _) | Edit::Remove(outputs, i, k) => (*outputs, *i, *k),
    };
    let key = if outputs { "outputs" } else { "features" };
    let Some(list) = doc.get_mut(key).and_then(Value::as_array_mut) else {
        return;
    };
    let len = list.len();
    let Some(obj) = list.get_mut(i % len.max(1)).and_then(Value::as_object_mut) else {
        return;
    };
    match e {
        Edit::Column(.., v) => {
            obj.insert(k.into(), v.clone());
        }
        _ => {
            obj.remove(k);
        }
    }
}

fn mutate(bytes: &mut Vec<u8>, ops: &[(u8, usize, u8)]) {
    const TOKENS: &[&[u8]] = &[
        b"[", b"]", b"{", b"}", b"\"", b",", b"null", b"-1", b"1e999", b"NaN", b"\xff", b"0",
    ];
    for &(kind, pos, byte) in ops {
        let len = bytes.len();
        let at = if len == 0 { 0 } else { pos % (len + 1) };
        match kind % 4 {
            0 if len > 0 => bytes[pos % len] ^= byte | 1,
            1 => {
                let token = TOKENS[byte as usize % TOKENS.len()];
                bytes.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + 1 + byte as usize % 16).min(len);
                bytes.drain(at..end);
            }
            _ => bytes.truncate(at),
        }
    }
}

fn bulky() -> impl Strategy<Value = Case> {
    (0u8..4, select(vec![2_000usize, 20_000, 100_000])).prop_map(|(kind, n)| {
        let zeros = || {
            let mut s = String::from("[");
            for i in 0..n {
                s.push_str(if i == 0 { "0" } else { ",0" });
            }
            s.push(']');
            s
        };
        let column = |distribution: String| {
            format!(r#"{{"name":"x","tensor":"input","index":0,{distribution}}}"#)
        };
        let body = match kind {
            // n equal edges (refused: not increasing), n proportions, n categories, n columns.
            0 => column(format!(
                r#""kind":"numeric","edges":{},"proportions":[1],"nan_proportion":0"#,
                zeros()
            )),
            1 => column(format!(
                r#""kind":"numeric","edges":[],"proportions":{},"nan_proportion":1"#,
                zeros()
            )),
            2 => {
                let cats: Vec<String> = (0..n).map(|i| format!(r#""{i}":0"#)).collect();
                column(format!(
                    r#""kind":"categorical","categories":{{{}}},"other":1,"nan_proportion":0"#,
                    cats.join(",")
                ))
            }
            _ => {
                let cols: Vec<String> = (0..n / 50)
                    .map(|i| {
                        format!(
                            r#"{{"name":"c{i}","tensor":"input","index":{i},"kind":"numeric","edges":[],"proportions":[1],"nan_proportion":0}}"#
                        )
                    })
                    .collect();
                cols.join(",")
            }
        };
        let text = format!(
            r#"{{"schema_version":1,"model":"m","version":1,"rows":1,"features":[{body}],"outputs":[]}}"#
        );
        Case {
            bytes: text.into_bytes(),
            valid: false,
            origin: format!("bulk kind {kind} x {n}"),
        }
    })
}

fn case() -> impl Strategy<Value = Case> {
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/breast-cancer/1/baseline.json"
    ))
    .expect("the shipped baseline");
    let valid = valid_baseline().prop_map(|b| Case {
        bytes: serde_json::to_vec(&b).unwrap(),
        valid: true,
        origin: "valid".into(),
    });
    let edited = (valid_baseline(), vec(edit(), 1..4)).prop_map(|(b, edits)| {
        let mut doc = serde_json::to_value(&b).unwrap();
        for e in &edits {
            apply(&mut doc, e);
        }
        Case {
            bytes: serde_json::to_vec(&doc).unwrap(),
            valid: false,
            origin: format!("edits {edits:?}"),
        }
    });
    let shipped = vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6).prop_map(move |ops| {
        let mut bytes = seed.clone();
        mutate(&mut bytes, &ops);
        Case {
            valid: ops.is_empty(),
            bytes,
            origin: format!("shipped baseline, ops {ops:?}"),
        }
    });
    let mutated = (
        valid_baseline(),
        vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
    )
        .prop_map(|(b, ops)| {
            let mut bytes = serde_json::to_vec(&b).unwrap();
            mutate(&mut bytes, &ops);
            Case {
                bytes,
                valid: false,
                origin: format!("ops {ops:?}"),
            }
        });
    let random = vec(any::<u8>(), 0..200).prop_map(|bytes| Case {
        bytes,
        valid: false,
        origin: "random".into(),
    });
    prop_oneof![3 => valid, 4 => edited, 1 => shipped, 3 => mutated, 1 => bulky(), 1 => random]
}

fn values() -> impl Strategy<Value = Vec<FeatureValue>> + Clone {
    vec(
        prop_oneof![
            float().prop_map(FeatureValue::Number),
            name().prop_map(FeatureValue::Category),
        ],
        0..5,
    )
}

#[test]
fn fuzz_baseline_json() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cases = env_u64("KEEL_FUZZ_CASES")
        .unwrap_or(256)
        .min(u32::MAX as u64) as u32;
    let seed = env_u64("KEEL_FUZZ_SEED").unwrap_or(0x6b65_656c);
    let mut seed_bytes = [0u8; 16];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    seed_bytes[8..].copy_from_slice(&(!seed).to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::XorShift, &seed_bytes),
    );
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(MonitorConfig::default(), &registry, None).unwrap();
    let (ok, err, worst) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    // Calls of the property (cases, then shrinking steps) and the first that failed.
    let (calls, first_failure) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    let result = runner.run(
        &(case(), vec((values(), values(), values()), 0..4)),
        |(case, rows)| {
            let call = calls.fetch_add(1, Ordering::Relaxed) + 1;
            let outcome = property(&monitor, case, rows, &ok, &err, &worst);
            if matches!(outcome, Err(TestCaseError::Fail(_))) {
                let _ =
                    first_failure.compare_exchange(0, call, Ordering::Relaxed, Ordering::Relaxed);
            }
            outcome
        },
    );
    let secs = start.elapsed().as_secs_f64();
    let ran = match first_failure.load(Ordering::Relaxed) {
        0 => format!("{cases} cases"),
        n => format!("failed at case {n} of {cases}"),
    };
    eprintln!(
        "fuzz baseline_json: {ran} in {secs:.1} s ({:.0} cases/s), seed {seed}, {} accepted / {} \
         refused, worst amplification {:.2}x",
        calls.load(Ordering::Relaxed) as f64 / secs.max(1e-9),
        ok.load(Ordering::Relaxed),
        err.load(Ordering::Relaxed),
        worst.load(Ordering::Relaxed) as f64 / 1000.0,
    );
    if let Err(e) = result {
        panic!("fuzz target baseline_json failed (seed {seed}): {e}");
    }
}

fn property(
    monitor: &Monitor,
    case: Case,
    rows: Vec<(Vec<FeatureValue>, Vec<FeatureValue>, Vec<FeatureValue>)>,
    ok: &AtomicU64,
    err: &AtomicU64,
    worst: &AtomicU64,
) -> Result<(), TestCaseError> {
    {
        // Two stages, each bounded: what `Baseline::load` does with the file's bytes, and what the
        // monitor builds from the baseline it accepted.
        let input = case.bytes.len();
        let (parsed, peak) = measured(|| {
            serde_json::from_slice::<Baseline>(&case.bytes)
                .map_err(|e| e.to_string())
                .and_then(|b| b.validate().map(|()| b).map_err(|e| e.to_string()))
        });
        check_bound("serde_json + Baseline::validate", input, peak, worst)?;
        let result = match parsed {
            Err(e) => Err(e),
            Ok(baseline) => {
                // KEEL_FUZZ_SKIP_KNOWN=1 (triage only): fixed_baseline_categories_are_unbounded.
                let many_categories = baseline.features.iter().chain(&baseline.outputs).any(|c| {
                    matches!(&c.distribution, Distribution::Categorical { categories, .. }
                        if categories.len() > keel_monitor::baseline::MAX_CATEGORIES)
                });
                if many_categories && std::env::var("KEEL_FUZZ_SKIP_KNOWN").is_ok_and(|v| v == "1")
                {
                    return Err(TestCaseError::reject(
                        "fixed_baseline_categories_are_unbounded",
                    ));
                }
                let spec = ModelSpec {
                    model: "m".into(),
                    version: 1,
                    baseline: Some(baseline),
                    settings: MonitorSettings::default(),
                };
                let (result, peak) = measured(|| monitor.set_version(spec));
                check_bound("Monitor::set_version", input, peak, worst)?;
                result.map_err(|e| e.to_string())
            }
        };
        match &result {
            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                prop_assert!(!case.valid, "a valid baseline was refused: {e}");
                err.fetch_add(1, Ordering::Relaxed)
            }
        };
        if result.is_ok() {
            let records: Vec<PredictionRecord> = rows
                .into_iter()
                .enumerate()
                .map(|(i, (input, label, probabilities))| PredictionRecord {
                    model: "m".into(),
                    version: 1,
                    request_id: format!("r{i}"),
                    row: i as u32,
                    timestamp_ms: T0 + i as u64,
                    inputs: vec![("input".into(), input)],
                    outputs: vec![
                        ("label".into(), label),
                        ("probabilities".into(), probabilities),
                    ],
                })
                .collect();
            monitor.ingest(&records);
            monitor.evaluate(T0 + 10_000);
            let report = monitor.report("m", 1);
            prop_assert!(report.is_some());
            let _ = serde_json::to_vec(&report);
        }
        Ok(())
    }
}

/// FIXED BUG (a regression test now), minimized from `fuzz_baseline_json` (seed 1801807212): a categorical column may hold any
/// number of categories. `Baseline::compute` keeps at most `MAX_CATEGORIES` (50), "which bounds the bins
/// (and Prometheus series)", but `Baseline::validate` (monitor/src/baseline.rs) does not hold a loaded
/// baseline to it, so `Monitor::set_version` (monitor/src/version.rs) builds bins and a series per
/// category: 20,000 categories in a 189 KB baseline.json take about 30 MB (160x). Fails until `validate`
/// refuses more than `MAX_CATEGORIES` (or the monitor stops building per category what it cannot bound).
#[test]
fn fixed_baseline_categories_are_unbounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let categories: Vec<String> = (0..20_000).map(|i| format!(r#""{i}":0"#)).collect();
    let text = format!(
        r#"{{"schema_version":1,"model":"m","version":1,"rows":1,"features":[{{"name":"x","tensor":"input",
        "index":0,"kind":"categorical","categories":{{{}}},"other":1,"nan_proportion":0}}],"outputs":[]}}"#,
        categories.join(",")
    );
    let Ok(baseline) = serde_json::from_slice::<Baseline>(text.as_bytes()) else {
        panic!("the baseline parses");
    };
    if baseline.validate().is_err() {
        return; // Refused: fixed.
    }
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(MonitorConfig::default(), &registry, None).unwrap();
    let spec = ModelSpec {
        model: "m".into(),
        version: 1,
        baseline: Some(baseline),
        settings: MonitorSettings::default(),
    };
    let (result, peak) = measured(|| monitor.set_version(spec));
    let limit = FACTOR * text.len() + SLACK;
    assert!(
        result.is_err() || peak <= limit,
        "set_version allocated {peak} bytes for a {} byte baseline.json (bound {limit})",
        text.len()
    );
}

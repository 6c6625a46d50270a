//! Jensen-Shannon, binned KS and Wasserstein-1, and the data-quality ratios against an independent
//! numpy/scipy computation (fixtures/stats_reference.json, written by stats_reference.py): the
//! monitor's values match numpy's on the same bins to 1e-9, and lie within the documented bounds
//! of the exact statistics on the raw values.

mod common;

use keel_monitor::{
    Baseline, Column, ColumnDrift, Distribution, FeatureValue, Kind, Metric, ModelSpec,
    MonitorSettings, PredictionRecord, RuleSettings,
};
use serde::Deserialize;

const TOLERANCE: f64 = 1e-9;
const NUMERIC: [&str; 4] = ["missing", "above", "shift", "same"];

#[derive(Deserialize)]
struct Fixture {
    bins: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    train: Vec<serde_json::Value>,
    current: Vec<serde_json::Value>,
    #[serde(default)]
    edges: Vec<f64>,
    min: Option<f64>,
    max: Option<f64>,
    missing_ratio: Option<f64>,
    out_of_range_ratio: Option<f64>,
    unseen_category_ratio: Option<f64>,
    js: Option<f64>,
    ks: Option<f64>,
    wasserstein: Option<f64>,
    ks_exact: Option<f64>,
    ks_bound: Option<f64>,
    wasserstein_exact: Option<f64>,
    wasserstein_bound: Option<f64>,
}

fn fixture() -> Fixture {
    common::fixture("stats_reference.json")
}

fn close(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (Some(a), Some(e)) => assert!(
            (a - e).abs() <= TOLERANCE * e.abs().max(1.0),
            "{what}: {a} vs numpy {e}"
        ),
        (a, e) => assert_eq!(a, e, "{what}"),
    }
}

/// Numeric cases are elements 0..4 of tensor "x"; the categorical one is tensor "colour".
fn place(case: &Case) -> (&'static str, usize) {
    match NUMERIC.iter().position(|n| *n == case.name) {
        Some(i) => ("x", i),
        None => ("colour", 0),
    }
}

fn baseline(fixture: &Fixture) -> Baseline {
    let columns: Vec<Column> = fixture
        .cases
        .iter()
        .map(|case| {
            let (tensor, index) = place(case);
            Column {
                name: case.name.clone(),
                tensor: tensor.into(),
                index,
                kind: Some(if case.kind == "numeric" {
                    Kind::Numeric
                } else {
                    Kind::Categorical
                }),
                values: case.train.iter().map(common::fixture_value).collect(),
            }
        })
        .collect();
    Baseline::compute("stats", 1, &columns, &[], fixture.bins).unwrap()
}

fn records(fixture: &Fixture) -> Vec<PredictionRecord> {
    let n = fixture.cases[0].current.len();
    (0..n)
        .map(|i| {
            let mut x = vec![FeatureValue::Number(0.0); NUMERIC.len()];
            let mut colour = Vec::new();
            for case in &fixture.cases {
                match place(case) {
                    ("x", index) => x[index] = common::fixture_value(&case.current[i]),
                    _ => colour.push(common::fixture_value(&case.current[i])),
                }
            }
            PredictionRecord {
                model: "stats".into(),
                version: 1,
                request_id: i.to_string(),
                row: 0,
                timestamp_ms: common::T0,
                inputs: vec![("x".into(), x), ("colour".into(), colour)],
                outputs: Vec::new(),
            }
        })
        .collect()
}

#[test]
fn baseline_records_the_training_range() {
    let fixture = fixture();
    let b = baseline(&fixture);
    for (column, case) in b.features.iter().zip(&fixture.cases) {
        if let Distribution::Numeric {
            edges, min, max, ..
        } = &column.distribution
        {
            assert_eq!(edges.len(), case.edges.len(), "{}", case.name);
            for (a, e) in edges.iter().zip(&case.edges) {
                close(Some(*a), Some(*e), &format!("{} edges", case.name));
            }
            assert_eq!((*min, *max), (case.min, case.max), "{}", case.name);
        }
    }
    // Older baselines without min/max still load; they get no range statistics.
    let mut json = serde_json::to_value(&b).unwrap();
    let first = json["features"][0].as_object_mut().unwrap();
    assert!(first.remove("min").is_some() && first.remove("max").is_some());
    let old: Baseline = serde_json::from_value(json).unwrap();
    old.validate().unwrap();
    assert!(matches!(
        old.features[0].distribution,
        Distribution::Numeric {
            min: None,
            max: None,
            ..
        }
    ));
}

fn rule(metric: &str, fire: f64, clear: f64) -> RuleSettings {
    RuleSettings {
        fire: Some(fire),
        clear: Some(clear),
        consecutive: 1,
        ..RuleSettings::new(Metric::try_from(metric.to_owned()).unwrap())
    }
}

#[test]
fn statistics_match_numpy_and_scipy_bounds() {
    let fixture = fixture();
    let (monitor, registry, events) = common::monitor(common::config(1));
    monitor
        .set_version(ModelSpec {
            model: "stats".into(),
            version: 1,
            baseline: Some(baseline(&fixture)),
            settings: MonitorSettings {
                rules: Some(vec![
                    rule("missing_ratio", 0.05, 0.01),
                    rule("out_of_range_ratio:above", 0.15, 0.05),
                    rule("unseen_category_ratio", 0.1, 0.05),
                    rule("ks:shift", 0.2, 0.1),
                    rule("js:same", 0.01, 0.005),
                ]),
                ..MonitorSettings::default()
            },
        })
        .unwrap();
    monitor.ingest(&records(&fixture));
    monitor.evaluate(common::T0);
    let report = monitor.report("stats", 1).unwrap();

    for (c, case) in report.features.iter().zip(&fixture.cases) {
        let ColumnDrift { name, .. } = c;
        assert_eq!(name, &case.name);
        close(
            c.missing_ratio,
            case.missing_ratio,
            &format!("{name} missing"),
        );
        close(
            c.out_of_range_ratio,
            case.out_of_range_ratio,
            &format!("{name} out of range"),
        );
        close(
            c.unseen_category_ratio,
            case.unseen_category_ratio,
            &format!("{name} unseen"),
        );
        close(c.js, case.js, &format!("{name} JS"));
        close(c.ks, case.ks, &format!("{name} KS"));
        close(c.wasserstein, case.wasserstein, &format!("{name} W1"));
        // The documented bounds against the exact statistics on the raw values.
        if let (Some(ks), Some(exact), Some(bound)) = (c.ks, case.ks_exact, case.ks_bound) {
            assert!(
                ks - 1e-12 <= exact && exact <= ks + bound + 1e-12,
                "{name}: exact KS {exact} outside [{ks}, {ks} + {bound}]"
            );
        }
        if let (Some(w1), Some(exact), Some(bound)) = (
            c.wasserstein,
            case.wasserstein_exact,
            case.wasserstein_bound,
        ) {
            assert!(
                (w1 - exact).abs() <= bound + 1e-12,
                "{name}: exact W1 {exact} further than {bound} from {w1}"
            );
        }
        // The gauges carry the same values.
        for (family, value) in [
            ("keel_data_missing_ratio", c.missing_ratio),
            ("keel_data_out_of_range_ratio", c.out_of_range_ratio),
            ("keel_data_unseen_category_ratio", c.unseen_category_ratio),
            ("keel_drift_js", c.js),
            ("keel_drift_ks", c.ks),
            ("keel_drift_wasserstein", c.wasserstein),
        ] {
            let labels = [
                ("model", "stats"),
                ("version", "1"),
                ("feature", name.as_str()),
            ];
            let gauge = common::metric(&registry, family, &labels);
            match value {
                Some(v) => assert!(
                    gauge.is_some_and(|g| (g - v).abs() <= 1e-12 * v.abs().max(1.0)),
                    "{family} {name}: {gauge:?} vs {v}"
                ),
                None => assert_eq!(gauge, None, "{family} {name}: not applicable"),
            }
        }
    }
    let by_name = |n: &str| report.features.iter().find(|c| c.name == n).unwrap();
    assert_eq!(by_name("missing").missing_ratio, Some(0.1));
    assert_eq!(by_name("above").out_of_range_ratio, Some(0.2));
    assert_eq!(by_name("colour").unseen_category_ratio, Some(0.15));
    assert!(by_name("same").js.is_some_and(|js| js < 1e-12));
    assert!(by_name("same").ks.is_some_and(|ks| ks < 1e-12));
    assert!(by_name("same").wasserstein.is_some_and(|w| w < 1e-12));

    // Rules on the new metrics fire like the csi rule: the per-feature ones on that feature, the
    // others when any column breaches; "js:same" stays quiet.
    let fired: Vec<(String, String, f64)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.rule.clone(), e.kind.clone(), e.value))
        .collect();
    let rules: Vec<&str> = fired.iter().map(|(r, ..)| r.as_str()).collect();
    assert_eq!(
        rules,
        [
            "missing_ratio",
            "out_of_range_ratio:above",
            "unseen_category_ratio",
            "ks:shift"
        ],
        "{fired:?}"
    );
    assert!(
        fired
            .iter()
            .all(|(_, kind, _)| kind == "dev.keel.drift.detected")
    );
    assert_eq!(fired[0].2, 0.1);
    assert_eq!(fired[1].2, 0.2);
}

#[test]
fn column_rules_name_a_known_column() {
    let fixture = fixture();
    let (monitor, _registry, _events) = common::monitor(common::config(1));
    let err = monitor
        .set_version(ModelSpec {
            model: "stats".into(),
            version: 1,
            baseline: Some(baseline(&fixture)),
            settings: MonitorSettings {
                rules: Some(vec![rule("wasserstein:nope", 1.0, 0.5)]),
                ..MonitorSettings::default()
            },
        })
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

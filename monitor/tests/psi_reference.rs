//! Baselines and PSI/CSI against an independent numpy computation
//! (fixtures/psi_reference.json, written by psi_reference.py).

mod common;

use std::collections::BTreeMap;

use keel_monitor::{
    Baseline, Column, Distribution, Kind, ModelSpec, MonitorSettings, PredictionRecord,
};
use serde::Deserialize;

const TOLERANCE: f64 = 1e-9;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    bins: usize,
    baseline: Vec<serde_json::Value>,
    current: Vec<serde_json::Value>,
    #[serde(default)]
    edges: Vec<f64>,
    #[serde(default)]
    proportions: Vec<f64>,
    #[serde(default)]
    categories: BTreeMap<String, f64>,
    #[serde(default)]
    other: f64,
    nan_proportion: f64,
    psi: f64,
}

fn fixture() -> Fixture {
    common::fixture("psi_reference.json")
}

fn close(actual: f64, expected: f64, what: &str) {
    let ok = if expected == 0.0 {
        actual.abs() <= 1e-15
    } else {
        ((actual - expected) / expected).abs() <= TOLERANCE
    };
    assert!(ok, "{what}: {actual} vs numpy {expected}");
}

fn close_all(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {actual:?} vs {expected:?}"
    );
    for (a, e) in actual.iter().zip(expected) {
        close(*a, *e, what);
    }
}

fn column(case: &Case, name: &str, tensor: &str) -> Column {
    Column {
        name: name.into(),
        tensor: tensor.into(),
        index: 0,
        kind: Some(match case.kind.as_str() {
            "numeric" => Kind::Numeric,
            _ => Kind::Categorical,
        }),
        values: case.baseline.iter().map(common::fixture_value).collect(),
    }
}

#[test]
fn baselines_match_numpy() {
    for case in fixture().cases {
        let b = Baseline::compute("ref", 1, &[column(&case, "f", "x")], &[], case.bins).unwrap();
        match &b.features[0].distribution {
            Distribution::Numeric {
                edges,
                proportions,
                nan_proportion,
                ..
            } => {
                close_all(edges, &case.edges, &format!("{} edges", case.name));
                close_all(
                    proportions,
                    &case.proportions,
                    &format!("{} proportions", case.name),
                );
                close(*nan_proportion, case.nan_proportion, &case.name);
            }
            Distribution::Categorical {
                categories,
                other,
                nan_proportion,
            } => {
                assert_eq!(
                    categories.keys().collect::<Vec<_>>(),
                    case.categories.keys().collect::<Vec<_>>()
                );
                let values: Vec<f64> = categories.values().copied().collect();
                let expected: Vec<f64> = case.categories.values().copied().collect();
                close_all(&values, &expected, &format!("{} categories", case.name));
                close(*other, case.other, &case.name);
                close(*nan_proportion, case.nan_proportion, &case.name);
            }
        }
    }
}

#[test]
fn csi_and_psi_of_the_window_match_numpy() {
    let cases = fixture().cases;
    assert!(
        cases.iter().any(|c| c.proportions.contains(&0.0)),
        "an empty baseline bin"
    );
    assert!(
        cases
            .iter()
            .any(|c| c.kind == "categorical" && c.nan_proportion > 0.0)
    );
    assert!(
        cases.iter().any(|c| c.psi == 0.0),
        "identical distributions"
    );
    let (monitor, _registry, _events) = common::monitor(common::config(1));
    for (version, case) in (1u64..).zip(&cases) {
        // The same data as an input feature (CSI) and as an output (PSI).
        let baseline = Baseline::compute(
            "ref",
            version,
            &[column(case, "feature", "x")],
            &[column(case, "output", "y")],
            case.bins,
        )
        .unwrap();
        monitor
            .set_version(ModelSpec {
                model: "ref".into(),
                version,
                baseline: Some(baseline),
                settings: MonitorSettings {
                    rules: Some(Vec::new()),
                    ..MonitorSettings::default()
                },
            })
            .unwrap();
        let records: Vec<PredictionRecord> = case
            .current
            .iter()
            .enumerate()
            .map(|(i, v)| PredictionRecord {
                model: "ref".into(),
                version,
                request_id: i.to_string(),
                row: 0,
                timestamp_ms: common::T0,
                inputs: vec![("x".into(), vec![common::fixture_value(v)])],
                outputs: vec![("y".into(), vec![common::fixture_value(v)])],
            })
            .collect();
        monitor.ingest(&records);
        monitor.evaluate(common::T0);
        let report = monitor.report("ref", version).unwrap();
        assert_eq!(report.rows, case.current.len() as u64);
        close(
            report.features[0].value.unwrap(),
            case.psi,
            &format!("{} CSI", case.name),
        );
        close(report.psi.unwrap(), case.psi, &format!("{} PSI", case.name));
    }
}

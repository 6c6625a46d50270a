use super::*;

fn numbers(name: &str, values: impl IntoIterator<Item = f64>) -> Column {
    Column {
        name: name.into(),
        tensor: "input".into(),
        index: 0,
        kind: None,
        values: values.into_iter().map(FeatureValue::Number).collect(),
    }
}

#[test]
fn deciles_of_1_to_100() {
    let b = Baseline::compute("m", 1, &[numbers("x", (1..=100).map(f64::from))], &[], 10).unwrap();
    let Distribution::Numeric {
        edges, proportions, ..
    } = &b.features[0].distribution
    else {
        panic!("not numeric")
    };
    assert_eq!(edges.len(), 9);
    assert!((edges[0] - 10.9).abs() < 1e-12, "{edges:?}");
    assert!(proportions.iter().all(|p| (p - 0.1).abs() < 1e-12));
}

#[test]
fn duplicate_edges_are_removed() {
    let values = (0..100).map(|i| if i < 80 { 0.0 } else { f64::from(i) });
    let b = Baseline::compute("m", 1, &[numbers("x", values)], &[], 10).unwrap();
    let Distribution::Numeric { edges, .. } = &b.features[0].distribution else {
        panic!("not numeric")
    };
    assert!(edges.windows(2).all(|w| w[0] < w[1]), "{edges:?}");
    assert_eq!(edges[0], 0.0);
    b.validate().unwrap();
}

#[test]
fn kinds_are_inferred_or_forced() {
    let mut label = numbers("label", [0.0, 1.0, 1.0, 1.0]);
    label.kind = Some(Kind::Categorical);
    let strings = Column {
        name: "colour".into(),
        tensor: "colour".into(),
        index: 0,
        kind: None,
        values: ["red", "red", "blue", "green"]
            .map(|s| FeatureValue::Category(s.into()))
            .into(),
    };
    let b = Baseline::compute("m", 1, &[strings], &[label], 10).unwrap();
    let Distribution::Categorical { categories, .. } = &b.outputs[0].distribution else {
        panic!("label not categorical")
    };
    assert_eq!(categories["0"], 0.25);
    assert_eq!(categories["1"], 0.75);
    assert!(matches!(
        b.features[0].distribution,
        Distribution::Categorical { .. }
    ));
}

#[test]
fn save_load_round_trip() {
    let values = (0..50).map(|i| if i % 7 == 0 { f64::NAN } else { f64::from(i) });
    let b = Baseline::compute("m", 3, &[numbers("x", values)], &[], 4).unwrap();
    let path = std::env::temp_dir().join(format!("keel-baseline-{}.json", std::process::id()));
    b.save(&path).unwrap();
    let loaded = Baseline::load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap(), b);
}

#[test]
fn validation_errors_are_clear() {
    let good = Baseline::compute("m", 1, &[numbers("x", (0..20).map(f64::from))], &[], 4).unwrap();
    let mut unsorted = good.clone();
    if let Distribution::Numeric { edges, .. } = &mut unsorted.features[0].distribution {
        edges.swap(0, 1);
    }
    let err = unsorted.validate().unwrap_err().to_string();
    assert!(
        err.contains("\"x\"") && err.contains("strictly increasing"),
        "{err}"
    );

    let mut sizes = good.clone();
    if let Distribution::Numeric { proportions, .. } = &mut sizes.features[0].distribution {
        proportions.pop();
    }
    assert!(
        sizes
            .validate()
            .unwrap_err()
            .to_string()
            .contains("proportions")
    );

    let mut sum = good.clone();
    if let Distribution::Numeric { nan_proportion, .. } = &mut sum.features[0].distribution {
        *nan_proportion = 0.5;
    }
    assert!(sum.validate().unwrap_err().to_string().contains("sum to"));

    let mut version = good;
    version.schema_version = 2;
    assert!(
        version
            .validate()
            .unwrap_err()
            .to_string()
            .contains("schema_version")
    );
}

#[test]
fn compute_rejects_bad_input() {
    let short = numbers("b", [1.0]);
    let err = Baseline::compute("m", 1, &[numbers("a", [1.0, 2.0]), short], &[], 10);
    assert!(err.unwrap_err().to_string().contains("\"b\""));
    let mut words = numbers("w", [1.0]);
    words.values = vec![FeatureValue::Category("x".into())];
    words.kind = Some(Kind::Numeric);
    assert!(Baseline::compute("m", 1, &[words], &[], 10).is_err());
    assert!(Baseline::compute("m", 1, &[], &[], 10).is_err());
}

#[test]
fn json_shape() {
    let b = Baseline::compute("m", 1, &[numbers("x", [1.0, 2.0])], &[], 2).unwrap();
    let json: serde_json::Value = serde_json::to_value(&b).unwrap();
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["features"][0]["kind"], "numeric");
    assert_eq!(json["features"][0]["edges"][0], 1.5);
    assert_eq!(json["features"][0]["nan_proportion"], 0.0);
    assert_eq!(json["features"][0]["min"], 1.0);
    assert_eq!(json["features"][0]["max"], 2.0);
}

#[test]
fn training_range_is_finite_and_checked() {
    let values = [f64::NAN, f64::NEG_INFINITY, -3.0, 5.0, f64::INFINITY];
    let b = Baseline::compute("m", 1, &[numbers("x", values)], &[], 2).unwrap();
    let Distribution::Numeric { min, max, .. } = &b.features[0].distribution else {
        panic!("not numeric")
    };
    assert_eq!((*min, *max), (Some(-3.0), Some(5.0)));
    let all_nan = Baseline::compute("m", 1, &[numbers("x", [f64::NAN])], &[], 2).unwrap();
    assert!(matches!(
        all_nan.features[0].distribution,
        Distribution::Numeric {
            min: None,
            max: None,
            ..
        }
    ));
    let mut bad =
        Baseline::compute("m", 1, &[numbers("x", (0..20).map(f64::from))], &[], 4).unwrap();
    if let Distribution::Numeric { min, .. } = &mut bad.features[0].distribution {
        *min = Some(10.0);
    }
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("first edge"), "{err}");
}

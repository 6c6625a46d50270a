//! The prediction records the tests write.

use keel_monitor::{FeatureValue, PredictionRecord};

use FeatureValue::{Category as C, Number as N};

pub(crate) fn record(
    model: &str,
    request: &str,
    row: u32,
    ts: u64,
    inputs: Vec<(&str, Vec<FeatureValue>)>,
) -> PredictionRecord {
    PredictionRecord {
        model: model.into(),
        version: 2,
        request_id: request.into(),
        row,
        timestamp_ms: ts,
        inputs: inputs.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
        outputs: vec![("label".into(), vec![C(format!("c{row}"))])],
    }
}

pub(crate) fn numbered(model: &str, n: u32) -> Vec<PredictionRecord> {
    (0..n)
        .map(|i| {
            record(
                model,
                &format!("req{i}"),
                i,
                1_000 + u64::from(i),
                vec![("x", vec![N(f64::from(i)), N(-f64::from(i))])],
            )
        })
        .collect()
}

//! `POST /v2/models/{model}/feedback`: ground truth for logged predictions, by request id and row.
//!
//! ```json
//! {"feedback": [{"id": "req-1", "label": 1}, {"id": "req-2", "row": 3, "value": 0.25}]}
//! ```
//! `label` (a number or a string) is a classifier's true class; `value` a regressor's true value.

use keel_monitor::{FeatureValue, FeedbackRecord};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Items per post; more is a client bug, not a bigger buffer.
pub const MAX_ITEMS: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    feedback: Vec<Item>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    id: String,
    #[serde(default)]
    row: u32,
    label: Option<serde_json::Value>,
    value: Option<f64>,
}

pub fn parse(model: &str, body: &[u8], now_ms: u64) -> Result<Vec<FeedbackRecord>> {
    let body: Body =
        serde_json::from_slice(body).map_err(|e| Error::invalid(format!("feedback body: {e}")))?;
    if body.feedback.len() > MAX_ITEMS {
        return Err(Error::invalid(format!(
            "{} feedback items in one request; at most {MAX_ITEMS}",
            body.feedback.len()
        )));
    }
    body.feedback
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let truth = match (item.label, item.value) {
                (Some(serde_json::Value::Number(n)), None) => {
                    FeatureValue::Number(n.as_f64().unwrap_or(f64::NAN))
                }
                (Some(serde_json::Value::String(s)), None) => FeatureValue::Category(s),
                (Some(serde_json::Value::Bool(b)), None) => FeatureValue::Number(f64::from(u8::from(b))),
                (None, Some(v)) => FeatureValue::Number(v),
                _ => {
                    return Err(Error::invalid(format!(
                        "feedback[{i}]: give exactly one of \"label\" (number or string) or \"value\" (number)"
                    )));
                }
            };
            if item.id.is_empty() {
                return Err(Error::invalid(format!("feedback[{i}]: \"id\" is empty")));
            }
            Ok(FeedbackRecord {
                model: model.to_string(),
                request_id: item.id,
                row: item.row,
                truth,
                timestamp_ms: now_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_values_and_errors() {
        let items = parse(
            "m",
            br#"{"feedback":[{"id":"a","label":1},{"id":"b","row":2,"label":"cat"},{"id":"c","value":0.5}]}"#,
            9,
        )
        .unwrap();
        assert_eq!(items[0].truth, FeatureValue::Number(1.0));
        assert_eq!(
            (items[1].row, &items[1].truth),
            (2, &FeatureValue::Category("cat".into()))
        );
        assert_eq!(items[2].truth, FeatureValue::Number(0.5));
        for bad in [
            &br#"{"feedback":[{"id":"a"}]}"#[..],
            br#"{"feedback":[{"id":"a","label":1,"value":2}]}"#,
            br#"{"feedback":[{"id":"","label":1}]}"#,
            br#"{"fb":[]}"#,
            br#"[1"#,
        ] {
            assert!(matches!(parse("m", bad, 0), Err(Error::InvalidArgument(_))));
        }
    }
}

//! `POST /v2/models/{model}/feedback`: ground truth for logged predictions, by request id and row.
//!
//! ```json
//! {"feedback": [{"id": "req-1", "label": 1}, {"id": "req-2", "row": 3, "value": 0.25}]}
//! ```
//! `label` (a number, a string or a boolean) is a classifier's true class; `value` (a number) a regressor's
//! true value. The schema is typed: an array or object where a scalar belongs is refused at its first `[` or
//! `{`, and the item count is bounded while the list is read, so a body cannot make the server build more
//! than a few times its own size.

use std::fmt;

use keel_monitor::{FeatureValue, FeedbackRecord};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::{Error, Result};

/// Items per post; more is a client bug, not a bigger buffer.
pub const MAX_ITEMS: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(deserialize_with = "bounded_items")]
    feedback: Vec<Item>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    id: String,
    #[serde(default)]
    row: u32,
    #[serde(default)]
    label: Option<Label>,
    #[serde(default)]
    value: Option<f64>,
}

/// A classifier's true class.
enum Label {
    Number(f64),
    Category(String),
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl<'de> Visitor<'de> for Scalar {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, string or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Label, E> {
                Ok(Label::Number(f64::from(u8::from(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Label, E> {
                Ok(Label::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Label, E> {
                Ok(Label::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Label, E> {
                Ok(Label::Number(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
                Ok(Label::Category(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Label, E> {
                Ok(Label::Category(v))
            }
            // Refused before a single element is read.
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Label, A::Error> {
                Err(de::Error::custom(
                    "\"label\" must be a number, string or boolean, not an array",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Label, A::Error> {
                Err(de::Error::custom(
                    "\"label\" must be a number, string or boolean, not an object",
                ))
            }
        }
        d.deserialize_any(Scalar)
    }
}

/// The `feedback` list, refused at item [`MAX_ITEMS`] + 1 without reading further.
fn bounded_items<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Item>, D::Error> {
    struct Items;
    impl<'de> Visitor<'de> for Items {
        type Value = Vec<Item>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of feedback items")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Item>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_ITEMS {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_ITEMS} feedback items in one request"
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_seq(Items)
}

pub fn parse(model: &str, body: &[u8], now_ms: u64) -> Result<Vec<FeedbackRecord>> {
    let body: Body =
        serde_json::from_slice(body).map_err(|e| Error::invalid(format!("feedback body: {e}")))?;
    body.feedback
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let truth = match (item.label, item.value) {
                (Some(Label::Number(n)), None) => FeatureValue::Number(n),
                (Some(Label::Category(s)), None) => FeatureValue::Category(s),
                (None, Some(v)) => FeatureValue::Number(v),
                _ => {
                    return Err(Error::invalid(format!(
                        "feedback[{i}]: give exactly one of \"label\" (number, string or boolean) or \"value\" (number)"
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
            br#"{"feedback":[{"id":"a","label":null}]}"#,
            br#"{"feedback":[{"id":"a","label":1,"extra":2}]}"#,
        ] {
            assert!(matches!(parse("m", bad, 0), Err(Error::InvalidArgument(_))));
        }
        let items = parse("m", br#"{"feedback":[{"id":"a","label":true}]}"#, 0).unwrap();
        assert_eq!(items[0].truth, FeatureValue::Number(1.0));
    }

    #[test]
    fn arrays_and_objects_are_refused_at_their_first_bracket() {
        // Far more than the server could build in memory if it read them: refused at the `[` or `{`.
        let huge = format!(
            r#"{{"feedback":[{{"id":"a","label":[{}0]}}]}}"#,
            "0,".repeat(1_000_000)
        );
        let err = parse("m", huge.as_bytes(), 0).unwrap_err().to_string();
        assert!(err.contains("not an array"), "{err}");
        for (body, needle) in [
            (
                r#"{"feedback":[{"id":"a","label":{"x":[1,2]}}]}"#,
                "not an object",
            ),
            (
                r#"{"feedback":[{"id":"a","value":[1,2]}]}"#,
                "invalid type: sequence",
            ),
            (
                r#"{"feedback":[{"id":["a"],"label":1}]}"#,
                "invalid type: sequence",
            ),
            (
                r#"{"feedback":[{"id":"a","row":[1],"label":1}]}"#,
                "invalid type: sequence",
            ),
        ] {
            let err = parse("m", body.as_bytes(), 0).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn item_count_is_bounded_while_reading() {
        let items = vec![r#"{"id":"a","label":1}"#; MAX_ITEMS + 1].join(",");
        let body = format!(r#"{{"feedback":[{items}]}}"#);
        let err = parse("m", body.as_bytes(), 0).unwrap_err().to_string();
        assert!(err.contains("more than 100000 feedback items"), "{err}");
        let items = vec![r#"{"id":"a","label":1}"#; MAX_ITEMS].join(",");
        let body = format!(r#"{{"feedback":[{items}]}}"#);
        assert_eq!(parse("m", body.as_bytes(), 0).unwrap().len(), MAX_ITEMS);
    }
}

//! Conversions between the monitor's records and their wire form (`keel.monitor.v1`), and the
//! messages `keel serve` sends on its stream.

use crate::record::{FeatureValue, FeedbackRecord, PredictionRecord};
use crate::settings::ModelSpec;

use super::pb;
use super::pb::monitor_message::Kind;

/// Why a wire record cannot become a monitor record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("record of model {model:?}: tensor {tensor:?} has both numbers and categories")]
    MixedValues { model: String, tensor: String },
    #[error("a record or feedback item has no model name")]
    NoModel,
    #[error("feedback for model {model:?}, request {request_id:?} row {row} has no truth")]
    NoTruth {
        model: String,
        request_id: String,
        row: u32,
    },
}

/// One tensor's values of one row. A row with any category goes as categories (numbers formatted
/// in Rust's shortest round-trip form, which the monitor parses back where a number is expected)
/// because `Values` holds one kind only.
fn values_to_pb(name: &str, values: &[FeatureValue]) -> pb::Values {
    let all_numbers = values.iter().all(|v| matches!(v, FeatureValue::Number(_)));
    let mut out = pb::Values {
        name: name.to_owned(),
        ..pb::Values::default()
    };
    if all_numbers {
        out.numbers = values
            .iter()
            .filter_map(|v| match v {
                FeatureValue::Number(x) => Some(*x),
                FeatureValue::Category(_) => None,
            })
            .collect();
    } else {
        out.categories = values
            .iter()
            .map(|v| match v {
                FeatureValue::Number(x) => x.to_string(),
                FeatureValue::Category(s) => s.clone(),
            })
            .collect();
    }
    out
}

fn values_from_pb(
    model: &str,
    values: pb::Values,
) -> Result<(String, Vec<FeatureValue>), ConvertError> {
    let pb::Values {
        name,
        numbers,
        categories,
    } = values;
    let row = match (numbers.is_empty(), categories.is_empty()) {
        (_, true) => numbers.into_iter().map(FeatureValue::Number).collect(),
        (true, false) => categories.into_iter().map(FeatureValue::Category).collect(),
        (false, false) => {
            return Err(ConvertError::MixedValues {
                model: model.to_owned(),
                tensor: name,
            });
        }
    };
    Ok((name, row))
}

impl From<&PredictionRecord> for pb::Record {
    fn from(r: &PredictionRecord) -> pb::Record {
        let tensors = |t: &[(String, Vec<FeatureValue>)]| {
            t.iter()
                .map(|(name, values)| values_to_pb(name, values))
                .collect()
        };
        pb::Record {
            model: r.model.clone(),
            version: r.version,
            request_id: r.request_id.clone(),
            row: r.row,
            timestamp_ms: r.timestamp_ms,
            inputs: tensors(&r.inputs),
            outputs: tensors(&r.outputs),
        }
    }
}

impl TryFrom<pb::Record> for PredictionRecord {
    type Error = ConvertError;

    fn try_from(r: pb::Record) -> Result<PredictionRecord, ConvertError> {
        if r.model.is_empty() {
            return Err(ConvertError::NoModel);
        }
        let tensors = |t: Vec<pb::Values>| {
            t.into_iter()
                .map(|v| values_from_pb(&r.model, v))
                .collect::<Result<Vec<_>, _>>()
        };
        let inputs = tensors(r.inputs)?;
        let outputs = tensors(r.outputs)?;
        Ok(PredictionRecord {
            model: r.model,
            version: r.version,
            request_id: r.request_id,
            row: r.row,
            timestamp_ms: r.timestamp_ms,
            inputs,
            outputs,
        })
    }
}

impl From<&FeedbackRecord> for pb::Feedback {
    fn from(f: &FeedbackRecord) -> pb::Feedback {
        let truth = match &f.truth {
            FeatureValue::Number(x) => pb::feedback::Truth::Number(*x),
            FeatureValue::Category(s) => pb::feedback::Truth::Category(s.clone()),
        };
        pb::Feedback {
            model: f.model.clone(),
            request_id: f.request_id.clone(),
            row: f.row,
            timestamp_ms: f.timestamp_ms,
            truth: Some(truth),
        }
    }
}

impl TryFrom<pb::Feedback> for FeedbackRecord {
    type Error = ConvertError;

    fn try_from(f: pb::Feedback) -> Result<FeedbackRecord, ConvertError> {
        if f.model.is_empty() {
            return Err(ConvertError::NoModel);
        }
        let truth = match f.truth {
            Some(pb::feedback::Truth::Number(x)) => FeatureValue::Number(x),
            Some(pb::feedback::Truth::Category(s)) => FeatureValue::Category(s),
            None => {
                return Err(ConvertError::NoTruth {
                    model: f.model,
                    request_id: f.request_id,
                    row: f.row,
                });
            }
        };
        Ok(FeedbackRecord {
            model: f.model,
            request_id: f.request_id,
            row: f.row,
            truth,
            timestamp_ms: f.timestamp_ms,
        })
    }
}

/// Announces a served version. Fails only if the spec cannot be written as JSON (a non-string map
/// key, which `ModelSpec` does not have).
pub fn spec_message(spec: &ModelSpec) -> Result<pb::MonitorMessage, serde_json::Error> {
    Ok(message(Kind::Version(pb::VersionSpec {
        spec_json: serde_json::to_string(spec)?,
    })))
}

/// A batch of served rows.
pub fn records_message(records: &[PredictionRecord]) -> pb::MonitorMessage {
    message(Kind::Records(pb::RecordBatch {
        records: records.iter().map(pb::Record::from).collect(),
    }))
}

/// Messages a server sends aim at this size: large enough to amortise framing, small enough that
/// the client's queue (bounded in bytes) holds many and one message never stalls the stream long.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest record message a server sends: the sidecar's limit ([`super::MAX_MESSAGE_BYTES`], on
/// the encoded message) less room for gRPC framing.
pub const MAX_SENT_MESSAGE_BYTES: usize = super::MAX_MESSAGE_BYTES - 1024;

/// One message of a chunked batch and its encoded size.
#[derive(Debug)]
pub struct Chunk {
    pub message: pb::MonitorMessage,
    pub bytes: usize,
}

/// Batches split into messages below the sidecar's size limit, and the items that do not fit in
/// any message, even alone.
#[derive(Debug)]
pub struct Chunked<'a, T> {
    pub chunks: Vec<Chunk>,
    pub too_large: Vec<&'a T>,
}

/// Bytes a length-delimited field of `len` bytes takes in its parent (field numbers below 16).
fn field_bytes(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Splits `items` (in order) into messages of about `chunk_bytes` encoded bytes: an item is added
/// to the current message while it stays within `chunk_bytes`; an item larger than that goes alone
/// in its own message if that is at most `max_bytes`, and into `too_large` otherwise.
fn chunk<'a, T, W: prost::Message>(
    items: &'a [T],
    chunk_bytes: usize,
    max_bytes: usize,
    to_wire: impl Fn(&T) -> W,
    wrap: impl Fn(Vec<W>) -> Kind,
) -> Chunked<'a, T> {
    let mut chunked = Chunked {
        chunks: Vec::new(),
        too_large: Vec::new(),
    };
    let mut current: Vec<W> = Vec::new();
    // Encoded size of the batch (the oneof member's content) so far.
    let mut batch = 0usize;
    let close = |current: &mut Vec<W>, batch: &mut usize, chunks: &mut Vec<Chunk>| {
        if !current.is_empty() {
            chunks.push(Chunk {
                message: message(wrap(std::mem::take(current))),
                bytes: field_bytes(*batch),
            });
            *batch = 0;
        }
    };
    for item in items {
        let wire = to_wire(item);
        let size = field_bytes(wire.encoded_len());
        if field_bytes(size) > max_bytes {
            chunked.too_large.push(item);
            continue;
        }
        if !current.is_empty() && field_bytes(batch + size) > chunk_bytes {
            close(&mut current, &mut batch, &mut chunked.chunks);
        }
        current.push(wire);
        batch += size;
    }
    close(&mut current, &mut batch, &mut chunked.chunks);
    chunked
}

/// Served rows as messages of about `chunk_bytes` (see [`CHUNK_BYTES`]), none above `max_bytes`
/// (see [`MAX_SENT_MESSAGE_BYTES`]); a record that alone exceeds `max_bytes` is in `too_large`.
pub fn records_messages(
    records: &[PredictionRecord],
    chunk_bytes: usize,
    max_bytes: usize,
) -> Chunked<'_, PredictionRecord> {
    chunk(
        records,
        chunk_bytes,
        max_bytes,
        |r| pb::Record::from(r),
        |records| Kind::Records(pb::RecordBatch { records }),
    )
}

/// Ground truth as messages, like [`records_messages`].
pub fn feedback_messages(
    items: &[FeedbackRecord],
    chunk_bytes: usize,
    max_bytes: usize,
) -> Chunked<'_, FeedbackRecord> {
    chunk(
        items,
        chunk_bytes,
        max_bytes,
        |f| pb::Feedback::from(f),
        |items| Kind::Feedback(pb::FeedbackBatch { items }),
    )
}

/// A batch of ground truth.
pub fn feedback_message(items: &[FeedbackRecord]) -> pb::MonitorMessage {
    message(Kind::Feedback(pb::FeedbackBatch {
        items: items.iter().map(pb::Feedback::from).collect(),
    }))
}

/// A version stopped serving.
pub fn retire_message(model: &str, version: u64) -> pb::MonitorMessage {
    message(Kind::Retire(pb::Retire {
        model: model.to_owned(),
        version,
    }))
}

fn message(kind: Kind) -> pb::MonitorMessage {
    pb::MonitorMessage { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{MonitorSettings, Task};

    fn record() -> PredictionRecord {
        PredictionRecord {
            model: "m".into(),
            version: 3,
            request_id: "req-1".into(),
            row: 2,
            timestamp_ms: 1_700_000_000_123,
            inputs: vec![
                (
                    "input".into(),
                    vec![FeatureValue::Number(1.5), FeatureValue::Number(-2.0)],
                ),
                ("city".into(), vec![FeatureValue::Category("Oslo".into())]),
                ("empty".into(), vec![]),
            ],
            outputs: vec![("label".into(), vec![FeatureValue::Number(1.0)])],
        }
    }

    #[test]
    fn record_round_trips() {
        let r = record();
        let wire = pb::Record::from(&r);
        assert_eq!(wire.inputs[0].numbers, vec![1.5, -2.0]);
        assert_eq!(wire.inputs[1].categories, vec!["Oslo".to_string()]);
        assert_eq!(PredictionRecord::try_from(wire).unwrap(), r);
    }

    #[test]
    fn nan_and_infinity_survive() {
        let mut r = record();
        r.inputs = vec![(
            "x".into(),
            vec![
                FeatureValue::Number(f64::INFINITY),
                FeatureValue::Number(f64::NAN),
            ],
        )];
        let back = PredictionRecord::try_from(pb::Record::from(&r)).unwrap();
        let FeatureValue::Number(nan) = back.inputs[0].1[1] else {
            panic!("not a number: {back:?}");
        };
        assert!(nan.is_nan());
        assert_eq!(back.inputs[0].1[0], FeatureValue::Number(f64::INFINITY));
    }

    #[test]
    fn mixed_row_goes_as_categories() {
        let mut r = record();
        r.inputs = vec![(
            "mixed".into(),
            vec![
                FeatureValue::Number(0.1),
                FeatureValue::Category("a".into()),
                FeatureValue::Number(2.0),
            ],
        )];
        let wire = pb::Record::from(&r);
        assert!(wire.inputs[0].numbers.is_empty());
        assert_eq!(wire.inputs[0].categories, vec!["0.1", "a", "2"]);
        let back = PredictionRecord::try_from(wire).unwrap();
        assert_eq!(
            back.inputs[0].1,
            vec![
                FeatureValue::Category("0.1".into()),
                FeatureValue::Category("a".into()),
                FeatureValue::Category("2".into()),
            ]
        );
    }

    #[test]
    fn bad_records_are_refused() {
        let mut wire = pb::Record::from(&record());
        wire.inputs[0].categories.push("x".into());
        assert!(matches!(
            PredictionRecord::try_from(wire.clone()),
            Err(ConvertError::MixedValues { tensor, .. }) if tensor == "input"
        ));
        wire.model.clear();
        assert_eq!(PredictionRecord::try_from(wire), Err(ConvertError::NoModel));
    }

    #[test]
    fn feedback_round_trips() {
        for truth in [
            FeatureValue::Number(0.25),
            FeatureValue::Category("spam".into()),
        ] {
            let f = FeedbackRecord {
                model: "m".into(),
                request_id: "r".into(),
                row: 4,
                truth,
                timestamp_ms: 9,
            };
            assert_eq!(FeedbackRecord::try_from(pb::Feedback::from(&f)).unwrap(), f);
        }
        let no_truth = pb::Feedback {
            model: "m".into(),
            ..pb::Feedback::default()
        };
        assert!(matches!(
            FeedbackRecord::try_from(no_truth),
            Err(ConvertError::NoTruth { .. })
        ));
    }

    #[test]
    fn chunks_stay_below_the_limit_and_keep_every_record_in_order() {
        use prost::Message;
        let mut records: Vec<PredictionRecord> = (0..100)
            .map(|i| {
                let mut r = record();
                r.row = i;
                r.inputs = vec![("x".into(), vec![FeatureValue::Number(1.0); 100])];
                r
            })
            .collect();
        // One record too large for any message, one larger than a chunk but below the limit.
        records[10].inputs[0].1 = vec![FeatureValue::Number(2.0); 2000];
        records[20].inputs[0].1 = vec![FeatureValue::Number(3.0); 500];
        let chunked = records_messages(&records, 2000, 10_000);
        assert_eq!(chunked.too_large.len(), 1);
        assert_eq!(chunked.too_large[0].row, 10);
        let mut rows = Vec::new();
        for chunk in &chunked.chunks {
            assert_eq!(chunk.bytes, chunk.message.encoded_len());
            assert!(chunk.bytes <= 10_000);
            let Some(Kind::Records(batch)) = &chunk.message.kind else {
                panic!("not records");
            };
            if batch.records.len() > 1 {
                assert!(chunk.bytes <= 2000, "{}", chunk.bytes);
            }
            rows.extend(batch.records.iter().map(|r| r.row));
        }
        assert_eq!(rows, (0..100).filter(|r| *r != 10).collect::<Vec<_>>());
        assert!(records_messages(&[], 2000, 10_000).chunks.is_empty());
    }

    #[test]
    fn messages() {
        let spec = ModelSpec {
            model: "m".into(),
            version: 1,
            baseline: None,
            settings: MonitorSettings {
                task: Some(Task::Classifier),
                ..MonitorSettings::default()
            },
        };
        let Some(Kind::Version(v)) = spec_message(&spec).unwrap().kind else {
            panic!("not a version message");
        };
        assert_eq!(
            serde_json::from_str::<ModelSpec>(&v.spec_json).unwrap(),
            spec
        );

        let Some(Kind::Records(batch)) = records_message(&[record(), record()]).kind else {
            panic!("not a record batch");
        };
        assert_eq!(batch.records.len(), 2);

        let Some(Kind::Retire(retire)) = retire_message("m", 7).kind else {
            panic!("not a retire message");
        };
        assert_eq!((retire.model.as_str(), retire.version), ("m", 7));

        let Some(Kind::Feedback(batch)) = feedback_message(&[]).kind else {
            panic!("not a feedback batch");
        };
        assert!(batch.items.is_empty());
    }
}

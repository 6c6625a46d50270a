//! What the request path hands the prediction log: a copy of the request's tensors (a memcpy) and which
//! rows were sampled. Turning them into per-row records happens on the drain thread, so a large request
//! is not held up by the log.

use std::sync::Arc;

use keel_monitor::{FeatureValue, PredictionRecord};

use crate::signature::Signature;
use crate::tensor::{Tensor, TensorData};

/// A version's model and tensor names, shared by all its logged requests so the request path copies
/// only tensor data.
pub struct LogNames {
    model: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl LogNames {
    pub fn new(model: &str, signature: &Signature) -> Arc<Self> {
        let names =
            |specs: &[crate::signature::TensorSpec]| specs.iter().map(|s| s.name.clone()).collect();
        Arc::new(LogNames {
            model: model.to_string(),
            inputs: names(&signature.inputs),
            outputs: names(&signature.outputs),
        })
    }
}

/// One row's values per tensor, as a record carries them.
type RowValues = Vec<(String, Vec<FeatureValue>)>;

/// The sampled rows of one request, inputs captured before they go to the backend.
pub struct Captured {
    request_id: String,
    timestamp_ms: u64,
    rows: usize,
    sampled: Vec<u32>,
    /// In signature order, as validated requests are.
    inputs: Vec<TensorData>,
}

/// A served request as the log keeps it until the drain thread expands it.
pub struct LoggedRequest {
    names: Arc<LogNames>,
    version: u64,
    captured: Captured,
    /// In signature order, as every backend returns them.
    outputs: Vec<TensorData>,
}

impl Captured {
    /// Captures `sampled` rows of `inputs` (a request of `rows` rows).
    pub fn new(
        request_id: String,
        timestamp_ms: u64,
        inputs: &[Tensor],
        rows: usize,
        sampled: impl Iterator<Item = usize>,
    ) -> Self {
        Captured {
            request_id,
            timestamp_ms,
            rows,
            sampled: sampled.map(|r| r as u32).collect(),
            inputs: inputs.iter().map(|t| t.data.clone()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.sampled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sampled.is_empty()
    }

    /// Completes the capture with the outputs that answered the request.
    pub fn finish(self, names: &Arc<LogNames>, version: u64, outputs: &[Tensor]) -> LoggedRequest {
        LoggedRequest {
            names: names.clone(),
            version,
            captured: self,
            outputs: outputs.iter().map(|t| t.data.clone()).collect(),
        }
    }
}

impl LoggedRequest {
    pub fn rows(&self) -> usize {
        self.captured.sampled.len()
    }

    /// One record per sampled row.
    pub fn records(&self) -> impl Iterator<Item = PredictionRecord> + '_ {
        let (c, names) = (&self.captured, &self.names);
        c.sampled.iter().map(move |&row| PredictionRecord {
            model: names.model.clone(),
            version: self.version,
            request_id: c.request_id.clone(),
            row,
            timestamp_ms: c.timestamp_ms,
            inputs: row_values(&names.inputs, &c.inputs, c.rows, row as usize),
            outputs: row_values(&names.outputs, &self.outputs, c.rows, row as usize),
        })
    }
}

/// Row `row` of every tensor (each tensor's elements split evenly into `rows` rows).
fn row_values(names: &[String], tensors: &[TensorData], rows: usize, row: usize) -> RowValues {
    names
        .iter()
        .zip(tensors)
        .map(|(name, data)| {
            let per_row = data.len() / rows.max(1);
            let range = row * per_row..(row + 1) * per_row;
            (name.clone(), values(data, range))
        })
        .collect()
}

pub(super) fn values(data: &TensorData, range: std::ops::Range<usize>) -> Vec<FeatureValue> {
    fn numbers<T: Copy>(
        v: &[T],
        range: std::ops::Range<usize>,
        f: impl Fn(T) -> f64,
    ) -> Vec<FeatureValue> {
        v.get(range)
            .unwrap_or_default()
            .iter()
            .map(|x| FeatureValue::Number(f(*x)))
            .collect()
    }
    match data {
        TensorData::Bool(v) => numbers(v, range, |x| f64::from(u8::from(x))),
        TensorData::Uint8(v) => numbers(v, range, f64::from),
        TensorData::Uint16(v) => numbers(v, range, f64::from),
        TensorData::Uint32(v) => numbers(v, range, f64::from),
        TensorData::Uint64(v) => numbers(v, range, |x| x as f64),
        TensorData::Int8(v) => numbers(v, range, f64::from),
        TensorData::Int16(v) => numbers(v, range, f64::from),
        TensorData::Int32(v) => numbers(v, range, f64::from),
        TensorData::Int64(v) => numbers(v, range, |x| x as f64),
        TensorData::Fp16(v) => numbers(v, range, |x| x.to_f64()),
        TensorData::Fp32(v) => numbers(v, range, f64::from),
        TensorData::Fp64(v) => numbers(v, range, |x| x),
        TensorData::Bytes(v) => v
            .get(range)
            .unwrap_or_default()
            .iter()
            .map(|b| FeatureValue::Category(String::from_utf8_lossy(b).into_owned()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_every_tensor() {
        let input = Tensor {
            name: "x".into(),
            shape: vec![2, 2],
            data: TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]),
        };
        let label = Tensor {
            name: "label".into(),
            shape: vec![2],
            data: TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec()]),
        };
        let names = Arc::new(LogNames {
            model: "m".into(),
            inputs: vec!["x".into()],
            outputs: vec!["label".into()],
        });
        let captured = Captured::new("r".into(), 7, &[input], 2, [1].into_iter());
        let logged = captured.finish(&names, 3, &[label]);
        let records: Vec<_> = logged.records().collect();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!((r.row, r.version, r.timestamp_ms), (1, 3, 7));
        assert_eq!(
            r.inputs,
            vec![(
                "x".into(),
                vec![FeatureValue::Number(3.0), FeatureValue::Number(4.0)]
            )]
        );
        assert_eq!(
            r.outputs,
            vec![("label".into(), vec![FeatureValue::Category("b".into())])]
        );
    }
}

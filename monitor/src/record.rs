//! The prediction record: what the server logs for each row it serves.

use serde::{Deserialize, Serialize};

/// One monitored value of a row: numeric features and outputs, or categories (strings, labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Number(f64),
    Category(String),
}

/// One served row: which model version computed it, when, for which request, and the monitored
/// inputs and outputs as `(tensor name, values of this row)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub model: String,
    pub version: u64,
    /// The request id given by the client, or one the server assigned.
    pub request_id: String,
    /// Row index within the request.
    pub row: u32,
    /// Unix time in milliseconds when the row was computed.
    pub timestamp_ms: u64,
    pub inputs: Vec<(String, Vec<FeatureValue>)>,
    pub outputs: Vec<(String, Vec<FeatureValue>)>,
}

/// Ground truth for one served row, joined with its [`PredictionRecord`] by request id and row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub model: String,
    pub request_id: String,
    /// Row index within the request (0 for single-row requests).
    pub row: u32,
    /// The true label (classifiers) or value (regressors).
    pub truth: FeatureValue,
    /// Unix time in milliseconds when the feedback arrived.
    pub timestamp_ms: u64,
}

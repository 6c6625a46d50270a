//! Keel's monitoring library. The server logs one [`PredictionRecord`] per served row; the drift
//! monitor (rolling PSI/CSI against a baseline) consumes them. The monitor never depends on the server.
#![forbid(unsafe_code)]

pub mod event;
pub mod record;

pub use event::{AlertEvent, AlertSink};
pub use record::{FeatureValue, FeedbackRecord, PredictionRecord};

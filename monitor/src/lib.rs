//! Keel's monitoring library. The server logs one [`PredictionRecord`] per served row, or a
//! request's rows as columns ([`RowBatch`]); the drift monitor (rolling PSI/CSI against a
//! baseline) consumes either. The monitor never depends on the server.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod baseline;
pub mod batch;
mod bins;
pub mod calibration;
pub mod error;
pub mod event;
mod feedback;
pub mod local_state;
mod metrics;
pub mod monitor;
pub mod outbound;
pub mod parquet_log;
mod performance;
pub mod psi;
pub mod record;
pub mod report;
pub mod rules;
pub mod settings;
pub mod sidecar;
pub mod stats;
mod version;
pub mod webhook;
mod window;

pub use baseline::{Baseline, BaselineColumn, Column, Distribution, Kind};
pub use batch::{RowBatch, TensorRows, Values};
pub use calibration::{Calibration, EstimatedPerformance};
pub use error::MonitorError;
pub use event::{AlertEvent, AlertSink, Evidence};
pub use monitor::Monitor;
pub use record::{FeatureValue, FeedbackRecord, PredictionRecord};
pub use report::{AlertState, ColumnDrift, DriftReport, FeedbackMetrics, FeedbackSummary};
pub use rules::Metric;
pub use settings::{ModelSpec, MonitorConfig, MonitorSettings, RuleSettings, Task};

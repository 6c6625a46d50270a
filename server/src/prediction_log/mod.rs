//! The prediction log on the request path: a bounded, never-blocking queue that the inference core
//! copies each request's sampled rows into ([`VersionLog::capture`] before the model runs,
//! [`VersionLog::push`] after), and that feedback shares. It owns the bound (rows and bytes) and the
//! `keel_prediction_log_*` counters, and knows only the signature and tensor types and the monitor's
//! record types. Requests travel in chunks: each thread gathers the requests it logs into one
//! (`chunk.rs`, `queue.rs`), queued when full or when the drain looks. What drains the queue (the sinks: embedded monitor, sidecar, Parquet files) lives in
//! the `monitoring` module, which takes the receiving end from [`PredictionLog::new`].

mod buffers;
mod chunk;
mod log;
mod queue;
mod rows;

pub use log::{LogLimits, PredictionLog, VersionLog};
pub use rows::Captured;

// The drain's side of the queue (the `monitoring` module), and the row expansion that the baseline
// command reuses.
pub(crate) use chunk::Chunk;
pub(crate) use log::{ItemKind, LogItem, reason};
pub(crate) use rows::values;

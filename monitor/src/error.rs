//! Errors of the drift monitor: configuration, settings and baselines that do not make sense.
//! Bad prediction records never produce errors; they are counted and skipped.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The process-wide [`MonitorConfig`](crate::MonitorConfig) is unusable.
    #[error("invalid monitor config: {0}")]
    Config(String),
    /// A model's `[monitor]` table is inconsistent.
    #[error("invalid [monitor] settings: {0}")]
    Settings(String),
    /// A baseline is malformed (sizes, ordering, proportions) or cannot be computed.
    #[error("invalid baseline: {0}")]
    Baseline(String),
    #[error("baseline file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("baseline file {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Registering the monitor's metrics failed, e.g. a second monitor on the same registry.
    #[error("registering monitor metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

//! The sidecar's test configuration, the versions it is sent, and the time records carry.

use std::time::{SystemTime, UNIX_EPOCH};

use keel_monitor::sidecar::SidecarConfig;
use keel_monitor::{ModelSpec, MonitorSettings};

use crate::common;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Evaluates often and reports from 100 rows, so tests see drift within milliseconds.
pub(crate) fn config() -> SidecarConfig {
    let mut config = SidecarConfig::local();
    config.monitor.evaluate_every = 0.05;
    config.monitor.min_samples = 100;
    config
}

pub(crate) fn spec(model: &str, version: u64, settings: MonitorSettings) -> ModelSpec {
    ModelSpec {
        model: model.into(),
        version,
        baseline: Some(common::baseline(model, version)),
        settings,
    }
}

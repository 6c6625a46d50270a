//! Delivery outcomes and the pending backlog, for Prometheus.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// One count per final outcome of an event, plus one per retried attempt.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// A 2xx answer.
    pub delivered: IntCounter,
    /// An attempt that failed in a way worth retrying (5xx, 408, 429, connection error, timeout).
    pub retry: IntCounter,
    /// Given up on a 4xx (other than 408/429/410) or an unreadable stored event.
    pub failed: IntCounter,
    /// 410 Gone: the receiver asked for no more.
    pub gone: IntCounter,
    /// Given up after the max age or attempt count.
    pub expired: IntCounter,
    /// Neither queued nor stored (queue full or sender stopped, and the disk write failed).
    pub dropped: IntCounter,
    pub pending: IntGauge,
}

impl Metrics {
    /// `keel_webhook_deliveries_total{outcome}` and `keel_webhook_pending_events`, registered.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "keel_webhook_deliveries_total",
                "Alert webhook deliveries by outcome",
            ),
            &["outcome"],
        )?;
        let pending = IntGauge::new(
            "keel_webhook_pending_events",
            "Alert events not yet delivered",
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        let outcome = |name: &str| deliveries.with_label_values(&[name]);
        Ok(Self {
            delivered: outcome("delivered"),
            retry: outcome("retry"),
            failed: outcome("failed"),
            gone: outcome("gone"),
            expired: outcome("expired"),
            dropped: outcome("dropped"),
            pending,
        })
    }
}

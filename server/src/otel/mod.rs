//! OpenTelemetry traces of inference requests, exported over OTLP/gRPC (`--otlp-endpoint`,
//! docs/tracing.md): a SERVER span per inference request, with `queue` and `compute` children, joined
//! to the caller's trace by the W3C `traceparent` of the HTTP request or gRPC call.
//!
//! No OpenTelemetry SDK: the spans are three plain OTLP messages built when a request is answered, and
//! the protocol is the upstream `.proto` files compiled like Keel's own. With tracing off a request pays
//! one branch ([`Tracer::sample`] returns `None`); traced but not sampled, a header parse and a random
//! number.

pub mod context;
pub mod exporter;
pub mod pb;
pub mod sampler;
pub mod span;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use prometheus::Registry;

pub use exporter::Exporter;
pub use span::{Execution, Operation, RequestSpan, Start};

use context::{TRACEPARENT, TRACESTATE};
use pb::common::{AnyValue, KeyValue, any_value};
use pb::resource::Resource;
use sampler::Sampler;

/// Hands out request spans; cheap to clone, off by default.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Inner>>);

struct Inner {
    sampler: Sampler,
    queue: Arc<exporter::Queue>,
}

/// A gRPC call's sampling decision, made as its headers arrived and carried in its extensions to the
/// handler (once: deciding again would give a root trace a second draw).
#[derive(Clone, Debug)]
pub struct Sampled(pub Option<Start>);

/// The trace context a call arrived with (a ModelStreamInfer call's, for each of its requests).
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    traceparent: Option<HeaderValue>,
    tracestate: Option<HeaderValue>,
}

impl Incoming {
    /// The headers' `traceparent` and `tracestate`. More than one `traceparent` is invalid (the
    /// request starts its own trace).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut all = headers.get_all(TRACEPARENT).iter();
        let traceparent = match (all.next(), all.next()) {
            (Some(one), None) => Some(one.clone()),
            _ => None,
        };
        Incoming {
            tracestate: traceparent
                .as_ref()
                .and_then(|_| headers.get(TRACESTATE).cloned()),
            traceparent,
        }
    }
}

impl Tracer {
    /// Tracing on: spans of sampled requests go to the collector at `endpoint`, from `service_name`.
    /// Starts the exporter on the current runtime.
    pub fn start(
        endpoint: &str,
        sampling_ratio: f64,
        service_name: &str,
        registry: &Registry,
    ) -> (Tracer, Exporter) {
        let resource = Resource {
            attributes: vec![
                text("service.name", service_name),
                text("service.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Default::default()
        };
        let (queue, exporter) = Exporter::start(endpoint.to_string(), resource, registry);
        let tracer = Tracer(Some(Arc::new(Inner {
            sampler: Sampler::new(sampling_ratio),
            queue: Arc::new(queue),
        })));
        (tracer, exporter)
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Where a request with these headers starts its span, if it is to be recorded.
    pub fn sample_headers(&self, headers: &HeaderMap) -> Option<Start> {
        self.0.as_ref()?;
        self.sample(&Incoming::from_headers(headers))
    }

    /// Where a request with this trace context starts its span, if it is to be recorded: a valid
    /// `traceparent` decides by its sampled flag, its absence (or an invalid one) by the ratio.
    pub fn sample(&self, incoming: &Incoming) -> Option<Start> {
        let inner = self.0.as_ref()?;
        let parent = incoming
            .traceparent
            .as_ref()
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        let trace_id = match &parent {
            Some(parent) => parent.trace_id,
            None if !inner.sampler.roots() => return None,
            None => context::new_trace_id(),
        };
        if !inner.sampler.sample(parent.as_ref(), &trace_id) {
            return None;
        }
        Some(Start {
            trace_id,
            span_id: context::new_span_id(),
            parent_span_id: parent.map(|p| p.span_id),
            // The caller's state belongs to the caller's trace: not carried into a new one.
            trace_state: parent
                .and(incoming.tracestate.as_ref())
                .and_then(|v| context::parse_tracestate(v.as_bytes()))
                .unwrap_or_default(),
            wall: SystemTime::now(),
            at: Instant::now(),
        })
    }

    /// The request span that began at `start`; `None` with tracing off.
    pub fn span(&self, start: Start, operation: Operation) -> Option<RequestSpan> {
        let inner = self.0.as_ref()?;
        Some(RequestSpan::new(start, operation, inner.queue.clone()))
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn tracer(ratio: f64) -> Tracer {
        let (queue, _rx) = exporter::Queue::for_tests(8);
        Tracer(Some(Arc::new(Inner {
            sampler: Sampler::new(ratio),
            queue: Arc::new(queue),
        })))
    }

    #[test]
    fn off_samples_nothing() {
        assert!(
            Tracer::default()
                .sample_headers(&headers(&[("traceparent", PARENT)]))
                .is_none()
        );
    }

    #[test]
    fn the_callers_trace_is_continued() {
        let start = tracer(0.0)
            .sample_headers(&headers(&[("traceparent", PARENT), ("tracestate", "k=v")]))
            .unwrap();
        assert_eq!(start.trace_id[..2], [0x4b, 0xf9]);
        assert_eq!(start.parent_span_id.unwrap()[..2], [0x00, 0xf0]);
        assert_eq!(start.trace_state, "k=v");
        let unsampled = PARENT.replace("-01", "-00");
        assert!(
            tracer(1.0)
                .sample_headers(&headers(&[("traceparent", &unsampled)]))
                .is_none()
        );
    }

    #[test]
    fn without_a_valid_traceparent_the_ratio_decides() {
        for given in [
            vec![],
            vec![("traceparent", "00-zz")],
            vec![("traceparent", PARENT), ("traceparent", PARENT)],
        ] {
            let given = headers(&given);
            let start = tracer(1.0).sample_headers(&given).unwrap();
            assert_eq!(start.parent_span_id, None);
            assert!(start.trace_state.is_empty());
            assert!(tracer(0.0).sample_headers(&given).is_none());
        }
    }
}

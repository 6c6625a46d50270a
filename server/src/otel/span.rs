//! The spans of one sampled inference request: the request itself (SERVER), and the two phases the
//! scheduler already times, `queue` (enqueued to its batch's start) and `compute` (the batch's run on an
//! instance thread). The phases are built once the request is answered, from the scheduler's own
//! instants, placed on the wall clock through the one (SystemTime, Instant) pair taken when the request
//! arrived: no clock is read on the instance threads for tracing.
//!
//! The spans go to the exporter when the [`RequestSpan`] is dropped, however the request ended: answered,
//! refused, or abandoned by its client (then `cancelled`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::exporter::Queue;
use super::pb::common::{AnyValue, KeyValue, any_value};
use super::pb::trace::{Span, Status, span, status};
use crate::error::Error;
use crate::metrics::{Outcome, Protocol};

/// A sampled request's identity and the moment it arrived. Cheap to clone, so the gRPC front end can
/// carry it in the call's extensions from the moment its headers arrive to the handler.
#[derive(Clone, Debug)]
pub struct Start {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span; `None` for a trace Keel started.
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's `tracestate`, kept on the request span.
    pub trace_state: String,
    pub(super) wall: SystemTime,
    pub(super) at: Instant,
}

impl Start {
    /// `at` on the wall clock, in nanoseconds since the Unix epoch.
    fn unix_nanos(&self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.at) {
            Some(after) => self.wall + after,
            None => self
                .wall
                .checked_sub(self.at.duration_since(at))
                .unwrap_or(UNIX_EPOCH),
        };
        let nanos = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// Which operation a request span stands for: its name and protocol attributes (OpenTelemetry's HTTP
/// and RPC semantic conventions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v2/models/{model}[/versions/{version}]/infer`; `true` with a version in the path.
    HttpInfer {
        versioned: bool,
    },
    GrpcModelInfer,
    GrpcModelStreamInfer,
}

impl Operation {
    fn protocol(self) -> Protocol {
        match self {
            Operation::HttpInfer { .. } => Protocol::Http,
            Operation::GrpcModelInfer | Operation::GrpcModelStreamInfer => Protocol::Grpc,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Operation::HttpInfer { versioned: false } => "POST /v2/models/{model}/infer",
            Operation::HttpInfer { versioned: true } => {
                "POST /v2/models/{model}/versions/{version}/infer"
            }
            Operation::GrpcModelInfer => "inference.GRPCInferenceService/ModelInfer",
            Operation::GrpcModelStreamInfer => "inference.GRPCInferenceService/ModelStreamInfer",
        }
    }

    fn attributes(self) -> Vec<KeyValue> {
        match self {
            Operation::HttpInfer { .. } => vec![
                text("keel.protocol", "http"),
                text("http.request.method", "POST"),
                text("http.route", &self.name()["POST ".len()..]),
            ],
            Operation::GrpcModelInfer | Operation::GrpcModelStreamInfer => vec![
                text("keel.protocol", "grpc"),
                text("rpc.system", "grpc"),
                text("rpc.service", "inference.GRPCInferenceService"),
                text(
                    "rpc.method",
                    match self {
                        Operation::GrpcModelInfer => "ModelInfer",
                        _ => "ModelStreamInfer",
                    },
                ),
            ],
        }
    }
}

/// What the scheduler measured for the request's batch.
#[derive(Clone, Copy, Debug)]
pub struct Execution {
    /// When its batch started on an instance.
    pub started: Instant,
    /// Time in the queue, up to `started`.
    pub queue: Duration,
    /// The batch's run on the instance (its backend call, concatenation and split).
    pub compute: Duration,
    pub batch_rows: usize,
    pub batch_requests: usize,
}

/// One sampled request's span, recorded as the request goes and sent to the exporter when dropped.
pub struct RequestSpan {
    start: Start,
    operation: Operation,
    queue: Arc<Queue>,
    attributes: Vec<KeyValue>,
    execution: Option<Execution>,
    /// `None` until the request is answered: dropped before, it was cancelled.
    ended: Option<Option<Error>>,
}

impl RequestSpan {
    pub(super) fn new(start: Start, operation: Operation, queue: Arc<Queue>) -> Self {
        RequestSpan {
            start,
            operation,
            queue,
            attributes: operation.attributes(),
            execution: None,
            ended: None,
        }
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.start.trace_id
    }

    /// The model asked for (known before its version is).
    pub fn model(&mut self, model: &str) {
        self.attributes.push(text("keel.model", model));
    }

    /// The version that serves the request.
    pub fn version(&mut self, version: u64) {
        self.attributes.push(int(
            "keel.model.version",
            i64::try_from(version).unwrap_or(i64::MAX),
        ));
    }

    /// The request's id (as returned to the client) and its rows.
    pub fn request(&mut self, id: Option<&str>, rows: u64) {
        if let Some(id) = id {
            self.attributes.push(text("keel.request_id", id));
        }
        self.attributes
            .push(int("keel.rows", i64::try_from(rows).unwrap_or(i64::MAX)));
    }

    pub fn executed(&mut self, execution: Execution) {
        self.execution = Some(execution);
    }

    /// The request was answered: successfully, or with `error`.
    pub fn answered(&mut self, error: Option<&Error>) {
        self.ended = Some(error.cloned());
    }

    /// The request span and its phases, as exported.
    fn spans(&mut self, end: Instant) -> Vec<Span> {
        let start = &self.start;
        let end = end.max(start.at);
        let mut attributes = std::mem::take(&mut self.attributes);
        let protocol = self.operation.protocol();
        let mut status = Status::default();
        match &self.ended {
            Some(None) => attributes.push(status_attribute(protocol, None)),
            Some(Some(error)) => {
                attributes.push(status_attribute(protocol, Some(error)));
                attributes.push(text("error.type", outcome(error)));
                status = Status {
                    message: error.to_string(),
                    code: status::StatusCode::Error as i32,
                };
            }
            None => {
                attributes.push(text("error.type", "cancelled"));
                status = Status {
                    message: "the request ended before its answer: its client went away, or --request-timeout ran out".into(),
                    code: status::StatusCode::Error as i32,
                };
            }
        }
        // The caller's span is remote (SpanFlags: HAS_IS_REMOTE, IS_REMOTE); trace flags: sampled.
        let remote = if start.parent_span_id.is_some() {
            0x300
        } else {
            0x100
        };
        let request = Span {
            trace_id: start.trace_id.to_vec(),
            span_id: start.span_id.to_vec(),
            trace_state: start.trace_state.clone(),
            parent_span_id: start.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 0x01 | remote,
            name: self.operation.name().into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start.unix_nanos(start.at),
            end_time_unix_nano: start.unix_nanos(end),
            attributes,
            status: Some(status),
            ..Default::default()
        };
        let Some(execution) = self.execution else {
            return vec![request];
        };
        let child = |name: &str, from: Instant, to: Instant, attributes: Vec<KeyValue>| Span {
            trace_id: start.trace_id.to_vec(),
            span_id: super::context::new_span_id().to_vec(),
            parent_span_id: start.span_id.to_vec(),
            // Local parent: HAS_IS_REMOTE set, IS_REMOTE not.
            flags: 0x101,
            name: name.into(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: start.unix_nanos(from),
            end_time_unix_nano: start.unix_nanos(to),
            attributes,
            ..Default::default()
        };
        // Clamped into the request span: its start is read a moment before the request is enqueued,
        // and the answer after the batch ends, but a clock is never trusted to be that tidy.
        let clamp = |at: Instant| at.clamp(start.at, end);
        let enqueued = clamp(
            execution
                .started
                .checked_sub(execution.queue)
                .unwrap_or(start.at),
        );
        let started = clamp(execution.started);
        let computed = clamp(execution.started + execution.compute);
        vec![
            child("queue", enqueued, started, Vec::new()),
            child(
                "compute",
                started,
                computed,
                vec![
                    int("keel.batch.rows", execution.batch_rows as i64),
                    int("keel.batch.requests", execution.batch_requests as i64),
                ],
            ),
            request,
        ]
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        let spans = self.spans(Instant::now());
        self.queue.push(spans);
    }
}

/// The protocol's own status of the answer: the HTTP status code, or the gRPC one.
fn status_attribute(protocol: Protocol, error: Option<&Error>) -> KeyValue {
    match protocol {
        Protocol::Http => int(
            "http.response.status_code",
            error.map_or(200, |e| i64::from(e.http_status().as_u16())),
        ),
        Protocol::Grpc => int(
            "rpc.grpc.status_code",
            error.map_or(0, |e| e.grpc_code() as i64),
        ),
    }
}

/// The error's class, as `keel_inference_requests_total{outcome}` counts it.
fn outcome(error: &Error) -> &'static str {
    match Outcome::of(&Err::<(), _>(error.clone())) {
        Outcome::Success => "success",
        Outcome::Invalid => "invalid",
        Outcome::Overloaded => "overloaded",
        Outcome::Timeout => "timeout",
        Outcome::Cancelled => "cancelled",
        Outcome::Error => "error",
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

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(parent: bool) -> Start {
        Start {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: parent.then_some([3; 8]),
            trace_state: String::new(),
            wall: UNIX_EPOCH + Duration::from_secs(1_000),
            at: Instant::now(),
        }
    }

    fn value<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// The phases are children of the request span, inside it, in order, placed on the wall clock by
    /// the request's (SystemTime, Instant) pair.
    #[test]
    fn phases_nest_inside_the_request_span() {
        let start = start(true);
        let at = start.at;
        let (queue, _rx) = Queue::for_tests(8);
        let mut span = RequestSpan::new(
            start,
            Operation::HttpInfer { versioned: false },
            Arc::new(queue),
        );
        span.model("m");
        span.version(2);
        span.request(Some("id-1"), 3);
        span.executed(Execution {
            started: at + Duration::from_millis(5),
            queue: Duration::from_millis(4),
            compute: Duration::from_millis(10),
            batch_rows: 7,
            batch_requests: 2,
        });
        span.answered(None);
        let spans = span.spans(at + Duration::from_millis(20));
        let [queue, compute, request] = &spans[..] else {
            panic!("{spans:?}")
        };
        let ms = |n: u64| 1_000_000_000_000 + n * 1_000_000;
        assert_eq!(request.start_time_unix_nano, ms(0));
        assert_eq!(request.end_time_unix_nano, ms(20));
        assert_eq!(request.parent_span_id, vec![3; 8]);
        assert_eq!(request.kind, span::SpanKind::Server as i32);
        assert_eq!(
            (queue.start_time_unix_nano, queue.end_time_unix_nano),
            (ms(1), ms(5))
        );
        assert_eq!(
            (compute.start_time_unix_nano, compute.end_time_unix_nano),
            (ms(5), ms(15))
        );
        for child in [queue, compute] {
            assert_eq!(child.parent_span_id, request.span_id);
            assert_eq!(child.trace_id, request.trace_id);
            assert_ne!(child.span_id, request.span_id);
        }
        assert_eq!(
            value(request, "keel.model"),
            Some(&any_value::Value::StringValue("m".into()))
        );
        assert_eq!(
            value(request, "keel.model.version"),
            Some(&any_value::Value::IntValue(2))
        );
        assert_eq!(
            value(request, "http.response.status_code"),
            Some(&any_value::Value::IntValue(200))
        );
        assert_eq!(
            value(compute, "keel.batch.rows"),
            Some(&any_value::Value::IntValue(7))
        );
        assert_eq!(request.status.as_ref().unwrap().code, 0);
    }

    #[test]
    fn errors_and_cancellations_are_error_spans() {
        let (queue, _rx) = Queue::for_tests(8);
        let queue = Arc::new(queue);
        let mut failed = RequestSpan::new(start(false), Operation::GrpcModelInfer, queue.clone());
        failed.answered(Some(&Error::Timeout("too slow".into())));
        let spans = failed.spans(Instant::now());
        assert_eq!(spans.len(), 1, "no phases without an execution");
        let status = spans[0].status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "too slow");
        assert!(spans[0].parent_span_id.is_empty(), "a root span");
        assert_eq!(
            value(&spans[0], "rpc.grpc.status_code"),
            Some(&any_value::Value::IntValue(
                tonic::Code::DeadlineExceeded as i64
            ))
        );
        assert_eq!(
            value(&spans[0], "error.type"),
            Some(&any_value::Value::StringValue("timeout".into()))
        );
        let mut cancelled = RequestSpan::new(start(true), Operation::GrpcModelInfer, queue);
        let spans = cancelled.spans(Instant::now());
        assert_eq!(
            value(&spans[0], "error.type"),
            Some(&any_value::Value::StringValue("cancelled".into()))
        );
    }
}

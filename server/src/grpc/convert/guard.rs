//! ModelInfer and ModelStreamInfer served with their requests checked before prost decodes them, and held
//! in the in-flight request bytes budget.
//!
//! [`service`] wraps tonic's generated service and takes these two methods over; every other method goes
//! to the generated one unchanged. For them:
//!
//! - the request body is metered: as each gRPC message's 5-byte header arrives, its length is taken from
//!   the budget before tonic buffers a byte of it. When the budget is spent the message is refused: its
//!   bytes are dropped as they arrive and an empty message takes its place, answered RESOURCE_EXHAUSTED
//!   (unary) or with an `error_message` (the stream carries on).
//! - the codec checks each message on its wire bytes (decompressed: tonic's `max_decoding_message_size`
//!   bounds the size after gzip, so a gzip bomb stops at the limit) against the model's signature, see
//!   [`super::wire`], takes what its decoded form and tensors will need from the budget, and only then
//!   lets prost decode it.
//! - the permit travels with the request until it is answered.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{self, HeaderValue};

use bytes::Buf;
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, Streaming};

use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::super::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::super::{GrpcState, ResponseStream, STREAM_CONCURRENCY, pb, version_arg};
use super::wire::{self, WireLimits};
use crate::budget::Permit;
use crate::error::Error;
use crate::infer::{InferRequest, InferResponse, count_refused};
use crate::metrics::Protocol;
use crate::otel;
use crate::repository::ServedVersion;
use crate::request_id;

mod meter;
use meter::metered;

/// A ModelInferRequest as the handlers receive it.
pub enum Decoded {
    /// Checked on the wire against `served`'s signature before prost built it; `permit` holds what it
    /// takes in memory.
    Admitted {
        message: pb::ModelInferRequest,
        served: Arc<ServedVersion>,
        permit: Permit,
    },
    /// Checked on the wire like `Admitted`, and of the usual form (raw contents, no parameters):
    /// converted straight from its bytes, without prost (`raw_request.rs`).
    Converted {
        request: InferRequest,
        served: Arc<ServedVersion>,
        permit: Permit,
    },
    /// Refused before it was decoded: this error is its answer.
    Refused(Error),
    /// Decoded by tonic's generated service, without the wire check: checked now, after the fact.
    Plain(pb::ModelInferRequest),
}

/// tonic's generated service with ModelInfer and ModelStreamInfer guarded; what `keel serve` adds to its
/// gRPC server.
pub fn service(state: GrpcState, max_message_bytes: usize) -> GuardedService {
    GuardedService {
        inner: super::super::service(state.clone(), max_message_bytes),
        state,
        max_message_bytes,
    }
}

#[derive(Clone)]
pub struct GuardedService {
    inner: GrpcInferenceServiceServer<GrpcState>,
    state: GrpcState,
    max_message_bytes: usize,
}

impl NamedService for GuardedService {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl tower::Service<http::Request<tonic::body::Body>> for GuardedService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let (state, max) = (self.state.clone(), self.max_message_bytes);
        match request.uri().path() {
            "/inference.GRPCInferenceService/ModelInfer" => {
                // The span starts as the call arrives, before its message is read.
                let mut request = request;
                if state.tracer.enabled() {
                    let start = state.tracer.sample_headers(request.headers());
                    request.extensions_mut().insert(otel::Sampled(start));
                }
                // Not compressed: answered plain (its coding is mirrored only if it goes to tonic).
                if super::unary::direct(request.headers()) {
                    return Box::pin(async move {
                        Ok(super::unary::model_infer(state, max, request).await)
                    });
                }
                mirror_request_coding(request.headers_mut());
                Box::pin(async move { Ok(unary(state, max, request).await) })
            }
            "/inference.GRPCInferenceService/ModelStreamInfer" => {
                mirror_request_coding(request.headers_mut());
                Box::pin(async move { Ok(streaming(state, max, request).await) })
            }
            _ => {
                mirror_request_coding(request.headers_mut());
                tower::Service::call(&mut self.inner, request)
            }
        }
    }
}

/// Responses are compressed only when the request was, with the request's coding. Every gRPC client
/// library lists gzip and deflate in `grpc-accept-encoding` whether or not it compresses, and tonic
/// compresses a response with the first coding listed that it can send: deflating a few hundred bytes
/// costs more than sending them, and Triton does not compress responses unless configured to. The
/// request's `grpc-encoding` (validated by tonic: one it cannot read gets UNIMPLEMENTED) becomes the only
/// coding the response may use.
pub(super) fn mirror_request_coding(headers: &mut http::HeaderMap) {
    const ACCEPT: &str = "grpc-accept-encoding";
    match headers.get("grpc-encoding").cloned() {
        Some(coding) if coding != "identity" => {
            headers.insert(ACCEPT, coding);
        }
        _ => {
            headers.remove(ACCEPT);
        }
    }
}

/// Admissions of a call's messages, in order: made by the metered body as each header arrives, taken by
/// the codec as each message is decoded.
type Slot = Arc<Mutex<VecDeque<Admission>>>;

enum Admission {
    Admitted(Permit),
    /// The budget was spent: the message's bytes were dropped and an empty message stands in for it.
    Refused(Error),
}

fn grpc<E: Message + Send + 'static>(
    state: &GrpcState,
    slot: &Slot,
    max: usize,
) -> tonic::server::Grpc<InferCodec<E>> {
    tonic::server::Grpc::new(InferCodec {
        state: state.clone(),
        slot: slot.clone(),
        _encode: PhantomData,
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Deflate)
    .send_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Deflate)
    .max_decoding_message_size(max)
    .max_encoding_message_size(max)
}

pub(super) async fn unary(
    state: GrpcState,
    max: usize,
    request: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let slot = Slot::default();
    let mut grpc = grpc::<pb::ModelInferResponse>(&state, &slot, max);
    let request = metered(request, &state.budget, slot, max);
    let service = tower::service_fn(move |request: Request<Decoded>| {
        let state = state.clone();
        async move { model_infer(&state, request).await }
    });
    // Boxed, so this future and the one `call` boxes around it stay small (608 bytes, measured): with
    // tonic's 6.5 KB future awaited in place they were 13.7 KB, moved by `memcpy` on every call.
    Box::pin(grpc.unary(service, request)).await
}

async fn streaming(
    state: GrpcState,
    max: usize,
    request: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let slot = Slot::default();
    let mut grpc = grpc::<pb::ModelStreamInferResponse>(&state, &slot, max);
    // Each request of the stream is its own span, a child of the call's `traceparent`.
    let trace = state
        .tracer
        .enabled()
        .then(|| otel::Incoming::from_headers(request.headers()));
    let request = metered(request, &state.budget, slot, max);
    let service = tower::service_fn(move |request: Request<Streaming<Decoded>>| {
        let (state, trace) = (state.clone(), trace.clone());
        async move {
            Ok::<_, Status>(Response::new(stream_infer(
                state,
                request.into_inner(),
                trace,
            )))
        }
    });
    grpc.streaming(service, request).await
}

/// ModelInfer: one request, one answer; `x-request-id` in and out as metadata.
pub(in crate::grpc) async fn model_infer(
    state: &GrpcState,
    request: Request<Decoded>,
) -> Result<Response<pb::ModelInferResponse>, Status> {
    Ok(answer(state, request).await?.map(super::infer_response))
}

/// [`model_infer`]'s answer before its conversion to the message: the unary path writes it to its frame
/// itself ([`super::answer`]).
pub(in crate::grpc) async fn answer(
    state: &GrpcState,
    request: Request<Decoded>,
) -> Result<Response<InferResponse>, Status> {
    let (metadata, extensions, decoded) = request.into_parts();
    // By the header map's own name: a `&str` key is parsed and checked at every lookup.
    let header_id = metadata
        .as_ref()
        .get(&request_id::HTTP_HEADER)
        .and_then(|v| v.to_str().ok());
    let start = if state.tracer.enabled() {
        match extensions.get::<otel::Sampled>() {
            // Decided by the guarded service as the call arrived.
            Some(sampled) => sampled.0.clone(),
            // Served by tonic's generated service: decided now.
            None => state.tracer.sample_headers(metadata.as_ref()),
        }
    } else {
        None
    };
    let mut span = start.and_then(|s| state.tracer.span(s, otel::Operation::GrpcModelInfer));
    let reply = state.infer_one(decoded, header_id, span.as_mut()).await;
    if let Some(span) = &mut span {
        span.answered(reply.as_ref().err());
    }
    let reply = reply?;
    let id = reply
        .id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok());
    let mut response = Response::new(reply);
    if let Some(mut id) = id {
        // Never indexed by HPACK: each id is new, so adding it to the connection's header table would
        // only evict the entries that repeat (measured: HPACK's encoder and table were 2.2 µs of a call
        // with it indexed, against 0.8 µs in keel-canned, which sends no id).
        id.set_sensitive(true);
        response
            .metadata_mut()
            .as_mut()
            .insert(request_id::HTTP_HEADER, id);
    }
    Ok(response)
}

/// ModelStreamInfer: each request is answered on the stream in its own response; a bad or refused request
/// gets an `error_message` and the stream carries on. When shutdown starts the stream takes no more
/// requests and ends once those it took are answered.
pub(in crate::grpc) fn stream_infer<S>(
    state: GrpcState,
    mut incoming: S,
    trace: Option<otel::Incoming>,
) -> ResponseStream
where
    S: Stream<Item = Result<Decoded, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_CONCURRENCY);
    let mut stopping = state.stopping.clone();
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(STREAM_CONCURRENCY));
        loop {
            let message = tokio::select! {
                message = incoming.next() => message,
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let Some(message) = message else { break };
            let request = match message {
                Ok(r) => r,
                // An unreadable or oversized message ends the stream with its status.
                Err(status) => {
                    let status = match status.code() {
                        tonic::Code::OutOfRange => Status::resource_exhausted(status.message()),
                        _ => status,
                    };
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            };
            // Its span starts as it is read, so a wait for the stream's concurrency is in it.
            let span = trace
                .as_ref()
                .and_then(|trace| state.tracer.sample(trace))
                .and_then(|s| state.tracer.span(s, otel::Operation::GrpcModelStreamInfer));
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (state, tx) = (state.clone(), tx.clone());
            tokio::spawn(async move {
                let mut span = span;
                let reply = state.infer_one(request, None, span.as_mut()).await;
                if let Some(span) = &mut span {
                    span.answered(reply.as_ref().err());
                }
                let reply = match reply {
                    Ok(response) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(super::infer_response(response)),
                    },
                    Err(e) => pb::ModelStreamInferResponse {
                        error_message: e.to_string(),
                        infer_response: None,
                    },
                };
                let _ = tx.send(Ok(reply)).await;
                drop(permit);
            });
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Protobuf both ways, with requests checked on their wire bytes before they are decoded.
struct InferCodec<E> {
    state: GrpcState,
    slot: Slot,
    _encode: PhantomData<fn() -> E>,
}

impl<E: Message + Send + 'static> Codec for InferCodec<E> {
    type Encode = E;
    type Decode = Decoded;
    type Encoder = tonic_prost::ProstEncoder<E>;
    type Decoder = InferDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InferDecoder {
            state: self.state.clone(),
            slot: self.slot.clone(),
        }
    }
}

struct InferDecoder {
    state: GrpcState,
    slot: Slot,
}

impl Decoder for InferDecoder {
    type Item = Decoded;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Decoded>, Status> {
        let admission = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let len = buf.remaining();
        let decoded = match admission {
            Some(Admission::Refused(e)) => Decoded::Refused(e),
            admitted => {
                let permit = match admitted {
                    Some(Admission::Admitted(permit)) => permit,
                    _ => self.state.budget.empty(),
                };
                // tonic hands over one contiguous message; copy it if it ever does not.
                let owned;
                let bytes = if buf.chunk().len() >= len {
                    &buf.chunk()[..len]
                } else {
                    owned = buf.copy_to_bytes(len);
                    &owned[..]
                };
                match self.admit(bytes, permit) {
                    Ok(decoded) => decoded,
                    Err(e) => Decoded::Refused(e),
                }
            }
        };
        buf.advance(buf.remaining());
        Ok(Some(decoded))
    }
}

impl InferDecoder {
    fn admit(&self, bytes: &[u8], permit: Permit) -> Result<Decoded, Error> {
        admit(&self.state, bytes, permit)
    }
}

/// A request message, whole and decompressed, checked on its wire bytes against its model's signature
/// and held in the budget (`permit`, which holds what arrived so far), then decoded.
pub(super) fn admit(state: &GrpcState, bytes: &[u8], mut permit: Permit) -> Result<Decoded, Error> {
    // The message as tonic holds it (decompressed, if it came compressed).
    permit.grow_to(bytes.len())?;
    let (model, version) = wire::model_of(bytes)?;
    let served = state.infer.version(model, version_arg(version))?;
    let since = std::time::Instant::now();
    check(state, bytes, &mut permit, &served)
        .inspect_err(|e| count_refused(&served, Protocol::Grpc, e, since))?;
    if let Some(request) = super::raw_request::convert(bytes) {
        return Ok(Decoded::Converted {
            request,
            served,
            permit,
        });
    }
    let message = pb::ModelInferRequest::decode(bytes)
        .map_err(|e| Error::invalid(format!("malformed ModelInferRequest: {e}")))?;
    Ok(Decoded::Admitted {
        message,
        served,
        permit,
    })
}

/// The wire check against `served`'s signature, and the memory the message will take.
fn check(
    state: &GrpcState,
    bytes: &[u8],
    permit: &mut Permit,
    served: &ServedVersion,
) -> Result<(), Error> {
    let estimate = wire::check(
        bytes,
        WireLimits {
            signature: Some(&served.signature),
            max_bytes_elements: state.max_bytes_elements,
        },
    )?;
    // The message's bytes, its decoded form and its tensors; a compressed message's reserve goes back.
    permit.resize(bytes.len() + estimate.message_bytes + estimate.tensor_bytes)
}

//! ModelInfer's common case read and answered without tonic's generic unary machinery: a request that
//! is one uncompressed message (what tritonclient, perf_analyzer and every load generator send by
//! default) is collected from the body, metered as it arrives, checked and decoded exactly as the
//! guarded codec does ([`super::guard`]), and its answer goes out as one DATA frame and `grpc-status: 0`.
//!
//! tonic's path builds a streaming decoder with an 8 KiB buffer, a codec, a metered body with a shared
//! slot, a request and a response conversion and an encoding stream around the one message of a unary
//! call. A message the in-flight budget refuses at its header is refused as the guarded path refuses
//! it. Anything else (a compressed message, a message over the size limit, more or less than one
//! message, request trailers) is replayed, as read so far and then the rest of the body, into the
//! guarded tonic path, which answers it as before.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::HttpBody;
use axum::http::{self, HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use hyper::body::Frame;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::super::GrpcState;
use super::guard::{self, Decoded};
use crate::budget::{Budget, Permit};
use crate::error::Error;

/// Whether a ModelInfer call may take the direct path: its messages are not compressed.
pub(super) fn direct(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-encoding")
        .is_none_or(|coding| coding == "identity")
}

/// Serves one ModelInfer call whose request is not compressed (see [`direct`]).
pub(super) async fn model_infer(
    state: GrpcState,
    max: usize,
    request: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, mut body) = request.into_parts();
    let decoded = match read_one(&mut body, &state.budget, max).await {
        Read::Whole { message, permit } => {
            let decoded = guard::admit(&state, &message, permit).unwrap_or_else(Decoded::Refused);
            // Decoded: the message's bytes are not needed any more.
            drop(message);
            decoded
        }
        Read::Refused(e) => Decoded::Refused(e),
        Read::Failed(status) => return status.into_http(),
        Read::Other(frames) => {
            guard::mirror_request_coding(&mut parts.headers);
            let replay = Replay {
                frames: frames.into(),
                inner: body,
            };
            let request = http::Request::from_parts(parts, tonic::body::Body::new(replay));
            return guard::unary(state, max, request).await;
        }
    };
    let request = Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        decoded,
    );
    match guard::answer(&state, request).await {
        Ok(response) => {
            let (metadata, answer, _) = response.into_parts();
            match super::answer::frame(&answer, max) {
                Ok(data) => {
                    let mut response = http::Response::new(tonic::body::Body::new(Answer {
                        data: Some(data),
                        done: false,
                    }));
                    *response.headers_mut() = metadata.into_headers();
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            }
        }
        Err(status) => status.into_http(),
    }
}

enum Read {
    /// The body was one whole uncompressed message: its bytes (without the 5-byte header), held in
    /// the budget.
    Whole { message: Bytes, permit: Permit },
    /// The body failed, or the budget ran out while the message arrived: the call's answer.
    Failed(Status),
    /// The message did not fit in the budget at its header (counted by the budget): its bytes were
    /// dropped.
    Refused(Error),
    /// Anything else: the frames read so far, for the guarded path.
    Other(Vec<Frame<Bytes>>),
}

/// Reads the body while it is one uncompressed message no larger than `max` that the budget admits at
/// its header; the bytes are held from the budget as they arrive, as the guarded path's meter holds them.
async fn read_one(body: &mut tonic::body::Body, budget: &Budget, max: usize) -> Read {
    let mut gathered = Gathered::Empty;
    // The header's declared size and the bytes it holds, once the header is read.
    let mut admitted: Option<(usize, Permit)> = None;
    loop {
        if let Some((len, _)) = &admitted
            && gathered.len() == 5 + len
            && body.is_end_stream()
        {
            break;
        }
        let frame = match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => break,
            Some(Err(status)) => return Read::Failed(status),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(trailers) => {
                let mut frames = gathered.into_frames();
                frames.push(trailers);
                return Read::Other(frames);
            }
        };
        let before = gathered.len();
        gathered.push(data);
        let got = gathered.len();
        if admitted.is_none() && got >= 5 {
            let header = &gathered.bytes()[..5];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if header[0] != 0 || len > max {
                return Read::Other(gathered.into_frames());
            }
            if let Err(e) = budget.check(len) {
                // Refused at its header, as the guarded path's meter refuses it: the rest of the body
                // is read and dropped, and the call is answered with the refusal.
                drop(gathered);
                while let Some(Ok(_)) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {}
                return Read::Refused(e);
            }
            gathered.expect(5 + len);
            admitted = Some((len, budget.empty()));
        }
        if let Some((len, permit)) = &mut admitted {
            if got > 5 + *len {
                // More than one message.
                return Read::Other(gathered.into_frames());
            }
            // The message's bytes that came with this chunk (the header's are not held).
            let arrived = got.saturating_sub(5) - before.saturating_sub(5);
            if let Err(e) = permit.grow(arrived) {
                return Read::Failed(e.into());
            }
        }
    }
    match admitted {
        Some((len, permit)) if gathered.len() == 5 + len => Read::Whole {
            message: gathered.into_bytes().slice(5..),
            permit,
        },
        _ => Read::Other(gathered.into_frames()),
    }
}

/// The body's bytes so far: the first chunk as it came (most requests are one DATA frame: no copy), or
/// all of them in one buffer once a second arrives, sized for the whole message once its header is
/// read, so a message in many frames is held once rather than in its frames and again when joined.
enum Gathered {
    Empty,
    One(Bytes),
    Joined(BytesMut),
}

impl Gathered {
    fn len(&self) -> usize {
        match self {
            Gathered::Empty => 0,
            Gathered::One(b) => b.len(),
            Gathered::Joined(b) => b.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Gathered::Empty => &[],
            Gathered::One(b) => b,
            Gathered::Joined(b) => b,
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Gathered::Empty) {
            Gathered::Empty => Gathered::One(data),
            Gathered::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Gathered::Joined(joined)
            }
            Gathered::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Gathered::Joined(joined)
            }
        };
    }

    /// The whole body is expected to be `total` bytes: room for them, once.
    fn expect(&mut self, total: usize) {
        if let Gathered::Joined(joined) = self {
            joined.reserve(total.saturating_sub(joined.len()));
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Gathered::Empty => Bytes::new(),
            Gathered::One(b) => b,
            Gathered::Joined(b) => b.freeze(),
        }
    }

    /// What was read, as one DATA frame, for the guarded path.
    fn into_frames(self) -> Vec<Frame<Bytes>> {
        match self {
            Gathered::Empty => Vec::new(),
            other => vec![Frame::data(other.into_bytes())],
        }
    }
}

/// What was read before the call left the direct path, then the rest of the body.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    inner: tonic::body::Body,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match this.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.inner.is_end_stream()
    }
}

/// A unary answer: one DATA frame, then `grpc-status: 0` in the trailers.
struct Answer {
    data: Option<Bytes>,
    done: bool,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        this.done = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

//! A gRPC request body metered message by message: each message's length is taken from the in-flight
//! budget as its 5-byte header arrives, before tonic buffers a byte of it; a refused message's bytes are
//! dropped as they arrive and an empty message takes its place (see the parent module).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::HttpBody;
use axum::http;
use bytes::{Bytes, BytesMut};
use hyper::body::Frame;

use super::{Admission, Slot};
use crate::budget::{Budget, Permit};
use tonic::Status;

/// The request with its body metered: see [`Meter`].
pub(super) fn metered(
    request: http::Request<tonic::body::Body>,
    budget: &Budget,
    slot: Slot,
    max: usize,
) -> http::Request<MeteredBody> {
    let meter = Meter {
        budget: budget.clone(),
        slot,
        max_message: max,
        header: [0; 5],
        filled: 0,
        remaining: 0,
        current: Current::Unmetered,
    };
    request.map(|inner| MeteredBody { inner, meter })
}

/// A request body passed through a [`Meter`].
pub(super) struct MeteredBody {
    inner: tonic::body::Body,
    meter: Meter,
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(this.meter.feed(data).map(Frame::data))),
                Err(trailers) => Poll::Ready(Some(Ok(trailers))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Follows the gRPC framing of a request body (a 5-byte header: compressed flag, big-endian length; then
/// the message). When a header arrives the message must fit in the budget now, or it is refused: its
/// bytes are dropped as they arrive and an empty message is passed on in its place. An admitted message
/// holds its bytes as they arrive (a client that declares much and sends slowly holds only what it sent;
/// if the budget runs out meanwhile, the call ends RESOURCE_EXHAUSTED), and a compressed one, once whole,
/// what it may inflate to; then its permit goes to the codec.
struct Meter {
    budget: Budget,
    slot: Slot,
    /// Messages above this are left to tonic, which refuses them from their header.
    max_message: usize,
    header: [u8; 5],
    /// Header bytes read so far.
    filled: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    current: Current,
}

/// What happens to the bytes of the message being read.
enum Current {
    /// Passed on, not counted (a message over the size limit, which tonic refuses).
    Unmetered,
    /// Dropped: the message was refused at its header.
    Swallow,
    /// Passed on and held from the budget as they arrive.
    Hold { permit: Permit, compressed: bool },
}

/// Most a deflate (gzip) stream inflates: 1032 output bytes per input byte.
const MAX_DEFLATE_RATIO: usize = 1032;

/// A part of what the meter passes on: a range of the input chunk, or a header of its own.
enum Piece {
    Input(usize, usize),
    Header([u8; 5]),
}

impl Meter {
    fn feed(&mut self, data: Bytes) -> Result<Bytes, Status> {
        fn keep(pieces: &mut Vec<Piece>, from: usize, to: usize) {
            match pieces.last_mut() {
                Some(Piece::Input(_, end)) if *end == from => *end = to,
                _ => pieces.push(Piece::Input(from, to)),
            }
        }
        let mut pieces: Vec<Piece> = Vec::new();
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() - i);
                match &mut self.current {
                    Current::Swallow => {}
                    Current::Unmetered => keep(&mut pieces, i, i + n),
                    Current::Hold { permit, .. } => {
                        permit.grow(n)?;
                        keep(&mut pieces, i, i + n);
                    }
                }
                self.remaining -= n;
                i += n;
                if self.remaining == 0 {
                    self.finish()?;
                }
                continue;
            }
            let (start, whole) = (i, self.filled == 0);
            let n = (5 - self.filled).min(data.len() - i);
            self.header[self.filled..self.filled + n].copy_from_slice(&data[i..i + n]);
            self.filled += n;
            i += n;
            if self.filled < 5 {
                // The header's end comes with the next chunk; nothing of it is passed on yet.
                break;
            }
            self.filled = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            self.remaining = len;
            self.current = self.admit(self.header[0] != 0, len);
            if matches!(self.current, Current::Swallow) {
                pieces.push(Piece::Header([0; 5]));
            } else if whole && n == 5 {
                keep(&mut pieces, start, i);
            } else {
                pieces.push(Piece::Header(self.header));
            }
            if len == 0 {
                self.finish()?;
            }
        }
        Ok(match pieces.as_slice() {
            [Piece::Input(0, end)] if *end == data.len() => data,
            _ => {
                let mut out = BytesMut::new();
                for piece in &pieces {
                    match piece {
                        Piece::Input(from, to) => out.extend_from_slice(&data[*from..*to]),
                        Piece::Header(h) => out.extend_from_slice(h),
                    }
                }
                out.freeze()
            }
        })
    }

    /// What to do with a message of `len` bytes whose header just arrived.
    fn admit(&mut self, compressed: bool, len: usize) -> Current {
        if len > self.max_message {
            return Current::Unmetered;
        }
        match self.budget.check(self.reserve(compressed, len)) {
            Ok(()) => Current::Hold {
                permit: self.budget.empty(),
                compressed,
            },
            Err(e) => {
                self.push(Admission::Refused(e));
                Current::Swallow
            }
        }
    }

    /// What a message of `len` bytes may take once tonic holds it: a compressed one is held at what it
    /// may inflate to (tonic stops at the message limit), so concurrent gzip bombs cannot inflate past the
    /// budget before the codec sees them.
    fn reserve(&self, compressed: bool, len: usize) -> usize {
        if compressed {
            len.saturating_mul(MAX_DEFLATE_RATIO).min(self.max_message)
        } else {
            len
        }
    }

    /// The current message is whole: its permit goes to the codec.
    fn finish(&mut self) -> Result<(), Status> {
        if let Current::Hold {
            mut permit,
            compressed,
        } = std::mem::replace(&mut self.current, Current::Unmetered)
        {
            permit.grow_to(self.reserve(compressed, permit.bytes()))?;
            self.push(Admission::Admitted(permit));
        }
        Ok(())
    }

    fn push(&self, admission: Admission) {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(admission);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn meter(budget: &Budget) -> (Meter, Slot) {
        let slot = Slot::default();
        let meter = Meter {
            budget: budget.clone(),
            slot: slot.clone(),
            max_message: 1000,
            header: [0; 5],
            filled: 0,
            remaining: 0,
            current: Current::Unmetered,
        };
        (meter, slot)
    }

    fn frame(flag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Feeds `wire` in chunks of `size` bytes and returns what comes out.
    fn feed(meter: &mut Meter, wire: &[u8], size: usize) -> Vec<u8> {
        wire.chunks(size)
            .flat_map(|c| meter.feed(Bytes::copy_from_slice(c)).unwrap().to_vec())
            .collect()
    }

    #[test]
    fn admitted_messages_pass_unchanged_in_any_chunking() {
        let wire = [frame(0, b"hello"), frame(1, &[7; 300]), frame(0, b"")].concat();
        for size in [1, 2, 4, 5, 6, 7, 64, 1000] {
            let budget = Budget::unmetered(10_000);
            let (mut m, slot) = meter(&budget);
            assert_eq!(feed(&mut m, &wire, size), wire, "chunks of {size}");
            let slot = slot.lock().unwrap();
            assert_eq!(slot.len(), 3);
            assert!(slot.iter().all(|a| matches!(a, Admission::Admitted(_))));
            // The compressed one is held at the message limit until the codec sees its size.
            assert_eq!(budget.in_use(), 5 + 1000);
        }
    }

    #[test]
    fn refused_messages_are_replaced_by_empty_ones() {
        for size in [1, 3, 5, 9, 1000] {
            let budget = Budget::unmetered(100);
            let held = budget.acquire(50).unwrap();
            let (mut m, slot) = meter(&budget);
            let wire = [frame(0, &[1; 40]), frame(0, &[2; 60]), frame(0, &[3; 5])].concat();
            let out = feed(&mut m, &wire, size);
            let want = [frame(0, &[1; 40]), frame(0, b""), frame(0, &[3; 5])].concat();
            assert_eq!(out, want, "chunks of {size}");
            let slot = slot.lock().unwrap();
            assert!(matches!(slot[0], Admission::Admitted(_)));
            assert!(matches!(slot[1], Admission::Refused(Error::Overloaded(_))));
            assert!(matches!(slot[2], Admission::Admitted(_)));
            drop(held);
        }
    }

    #[test]
    fn a_slow_message_holds_only_what_arrived_and_fails_when_the_budget_runs_out() {
        let budget = Budget::unmetered(100);
        let (mut m, slot) = meter(&budget);
        let wire = frame(0, &[9; 80]);
        assert_eq!(
            m.feed(Bytes::copy_from_slice(&wire[..15])).unwrap(),
            &wire[..15]
        );
        assert_eq!(budget.in_use(), 10);
        let other = budget.acquire(50).unwrap();
        let err = m.feed(Bytes::copy_from_slice(&wire[15..])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(slot.lock().unwrap().is_empty());
        drop((m, other));
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn compressed_messages_hold_what_they_may_inflate_to() {
        let budget = Budget::unmetered(10_000);
        let (mut m, slot) = meter(&budget);
        // 100 compressed bytes may inflate past the 1000-byte message limit: held at the limit.
        let wire = [frame(1, &[0; 100]), frame(1, &[0; 0])].concat();
        assert_eq!(feed(&mut m, &wire, 7), wire);
        assert_eq!(slot.lock().unwrap().len(), 2);
        assert_eq!(budget.in_use(), 1000);
    }

    #[test]
    fn oversized_messages_are_left_to_tonic() {
        let budget = Budget::unmetered(10);
        let (mut m, slot) = meter(&budget);
        let wire = frame(0, &[0; 1500]);
        assert_eq!(feed(&mut m, &wire, 100), wire);
        assert!(slot.lock().unwrap().is_empty());
    }
}

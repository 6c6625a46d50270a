//! The lists the drain hands a run of logged requests to the embedded monitor in, kept from one run
//! to the next. A run is hundreds to thousands of requests: fresh lists that size were large
//! allocations the allocator gave back to the system after each run and faulted in again on the
//! next, two thirds of the server's page faults under load (docs/performance.md).

use keel_monitor::{RowBatch, TensorRows};

use crate::prediction_log::Chunk;

/// Requests whose lists are kept between runs at most; a larger run's are freed after it. A run
/// holds about `CHUNK_ROWS` rows, so this keeps what single-row traffic needs.
const KEEP_BATCHES: usize = 16_384;
/// Tensors whose list is kept at most (a few per request).
const KEEP_TENSORS: usize = 4 * KEEP_BATCHES;

#[derive(Default)]
pub(super) struct Scratch {
    tensors: Vec<TensorRows<'static>>,
    batches: Vec<RowBatch<'static>>,
}

impl Scratch {
    /// Calls `f` with the requests of `chunks`, in order, as the monitor's batches.
    pub fn with_batches<R>(
        &mut self,
        chunks: &[Box<Chunk>],
        f: impl FnOnce(&[RowBatch<'_>]) -> R,
    ) -> R {
        let mut tensors: Vec<TensorRows<'_>> = reuse(std::mem::take(&mut self.tensors));
        let mut ends = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            chunk.tensors(&mut tensors);
            ends.push(tensors.len());
        }
        let mut batches: Vec<RowBatch<'_>> = reuse(std::mem::take(&mut self.batches));
        let mut start = 0;
        for (chunk, end) in chunks.iter().zip(ends) {
            batches.extend(chunk.batches(&tensors[start..end]));
            start = end;
        }
        let out = f(&batches);
        if batches.capacity() <= KEEP_BATCHES {
            self.batches = reuse(batches);
        }
        if tensors.capacity() <= KEEP_TENSORS {
            self.tensors = reuse(tensors);
        }
        out
    }
}

/// `v` emptied, as a list of another lifetime: the same allocation, since collecting a vector's own
/// iterator into elements of the same size and alignment reuses its buffer.
fn reuse<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_keeps_its_allocation_across_lifetimes() {
        let mut v: Vec<TensorRows<'static>> = Vec::with_capacity(100);
        let name = String::from("x");
        v.push(TensorRows {
            name: "y",
            width: 1,
            values: keel_monitor::Values::F32(&[]),
        });
        let at = v.as_ptr() as usize;
        let mut shorter: Vec<TensorRows<'_>> = reuse(v);
        assert!(shorter.is_empty());
        assert_eq!(shorter.capacity(), 100);
        assert_eq!(shorter.as_ptr() as usize, at);
        shorter.push(TensorRows {
            name: &name,
            width: 1,
            values: keel_monitor::Values::F32(&[]),
        });
        let back: Vec<TensorRows<'static>> = reuse(shorter);
        assert_eq!((back.capacity(), back.as_ptr() as usize), (100, at));
    }
}

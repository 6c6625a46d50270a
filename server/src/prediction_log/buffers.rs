//! Vectors that large captured tensors are copied into, reused. A capture too large for a chunk's
//! arenas gets a vector of its own, allocated on the request's thread and freed on the drain thread
//! once delivered. mimalloc gives such memory back to the OS before its owner allocates again, so
//! every copy landed on fresh pages: at 256 rows of 30 floats, most of the process's page faults were
//! the capture's copy, paid on the request path (a 2 MiB huge page cleared at a time where
//! transparent huge pages are on). Delivered chunks hand their vectors back here and the next
//! capture of that type and size copies into one of them.

use std::sync::{Mutex, PoisonError};

use crate::tensor::{DataType, TensorData};

/// Bytes of capacity the pool holds at most: at 256-row requests of 30 floats the drain took 40-60
/// per look at c=1 (about 1.2-1.8 MiB); at peak the log's bound, not the pool, limits what is in flight.
pub(super) const POOL_BYTES: usize = 2 << 20;
/// Vectors larger than this are freed, not kept: a rare large request does not pin its memory.
pub(super) const MAX_BUFFER: usize = 256 << 10;

#[derive(Default)]
pub(super) struct Buffers(Mutex<Pool>);

#[derive(Default)]
struct Pool {
    items: Vec<TensorData>,
    /// Capacity of `items`, in bytes.
    bytes: usize,
}

/// Capacity in bytes; `None` for BYTES tensors (their elements are vectors of their own).
pub(super) fn capacity_bytes(data: &TensorData) -> Option<usize> {
    let size = data.datatype().size()?;
    Some(crate::with_tensor_data!(data, v => v.capacity()) * size)
}

/// Whether a vector with room for `capacity` elements may hold `elements` for the log: at most a
/// quarter more, since the log's byte bound counts the elements it keeps, not the room around them.
pub(super) fn snug(capacity: usize, elements: usize) -> bool {
    capacity <= elements.saturating_add(elements / 4)
}

impl Buffers {
    /// An empty vector of `datatype` with room for `elements` and at most a quarter more: the log's
    /// byte bound counts what is copied, so a capture must not hold much more than that.
    pub(super) fn take(&self, datatype: DataType, elements: usize) -> Option<TensorData> {
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = |data: &TensorData| {
            let capacity = crate::with_tensor_data!(data, v => v.capacity());
            data.datatype() == datatype && capacity >= elements && snug(capacity, elements)
        };
        let index = pool.items.iter().rposition(fits)?;
        let data = pool.items.swap_remove(index);
        pool.bytes -= capacity_bytes(&data).unwrap_or(0);
        Some(data)
    }

    /// Keeps `data`'s vector for a later capture, emptied, while the pool has room.
    pub(super) fn give(&self, mut data: TensorData) {
        let Some(bytes) = capacity_bytes(&data) else {
            return;
        };
        if bytes == 0 || bytes > MAX_BUFFER {
            return;
        }
        crate::with_tensor_data!(&mut data, v => v.clear());
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.bytes + bytes <= POOL_BYTES {
            pool.bytes += bytes;
            pool.items.push(data);
            return;
        }
        // Freed outside the lock.
        drop(pool);
    }

    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize) {
        let pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (pool.items.len(), pool.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(capacity: usize) -> TensorData {
        TensorData::Fp32(Vec::with_capacity(capacity))
    }

    #[test]
    fn gives_back_a_vector_of_the_same_type_and_about_the_size() {
        let buffers = Buffers::default();
        let given = floats(7680);
        let TensorData::Fp32(v) = &given else {
            unreachable!()
        };
        let address = v.as_ptr();
        buffers.give(given);
        assert_eq!(buffers.held(), (1, 7680 * 4));
        assert!(buffers.take(DataType::Int32, 7680).is_none(), "other type");
        assert!(buffers.take(DataType::Fp32, 7681).is_none(), "too small");
        assert!(
            buffers.take(DataType::Fp32, 6000).is_none(),
            "more than a quarter too large"
        );
        let Some(TensorData::Fp32(v)) = buffers.take(DataType::Fp32, 7680) else {
            panic!("the given vector")
        };
        assert_eq!((v.as_ptr(), v.len()), (address, 0));
        assert_eq!(buffers.held(), (0, 0));
    }

    #[test]
    fn holds_at_most_its_bound_and_no_strings_or_huge_vectors() {
        let buffers = Buffers::default();
        buffers.give(TensorData::Bytes(Vec::with_capacity(10_000)));
        buffers.give(floats(MAX_BUFFER / 4 + 1));
        assert_eq!(buffers.held(), (0, 0));
        for _ in 0..100 {
            buffers.give(floats(MAX_BUFFER / 4));
        }
        assert_eq!(buffers.held(), (POOL_BYTES / MAX_BUFFER, POOL_BYTES));
    }
}

//! What the request path hands the prediction log after the run: the sampled rows of the request's
//! tensors (each row cut to `--prediction-log-max-elements` elements per tensor; one memcpy when
//! every row is sampled and none is cut, and no copy at all for a large input logged whole, whose
//! vector the log keeps) and which rows they were. Turning them into per-row records happens on the
//! drain thread, so a large request is not held up by the log.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use keel_monitor::{FeatureValue, Values};
use prometheus::IntCounter;

use super::buffers::Buffers;
use crate::signature::Signature;
use crate::tensor::{Tensor, TensorData};

/// A version's model and tensor names and its counters, shared by all its logged requests so the
/// request path copies only tensor data.
pub struct LogNames {
    pub(super) model: String,
    pub(super) inputs: Vec<String>,
    pub(super) outputs: Vec<String>,
    pub(super) records: IntCounter,
    pub(super) truncated: IntCounter,
    pub(super) queue_full: IntCounter,
    pub(super) queue_bytes: IntCounter,
    pub(super) shutdown: IntCounter,
}

impl LogNames {
    pub fn new(model: &str, signature: &Signature, counters: LogCounters) -> Arc<Self> {
        let names =
            |specs: &[crate::signature::TensorSpec]| specs.iter().map(|s| s.name.clone()).collect();
        Arc::new(LogNames {
            model: model.to_string(),
            inputs: names(&signature.inputs),
            outputs: names(&signature.outputs),
            records: counters.records,
            truncated: counters.truncated,
            queue_full: counters.queue_full,
            queue_bytes: counters.queue_bytes,
            shutdown: counters.shutdown,
        })
    }

    /// Rows dropped for `reason` (one of the request path's: queue_full, queue_bytes, shutdown).
    pub(super) fn dropped(&self, reason: &str) -> &IntCounter {
        match reason {
            super::log::reason::QUEUE_BYTES => &self.queue_bytes,
            super::log::reason::SHUTDOWN => &self.shutdown,
            _ => &self.queue_full,
        }
    }
}

/// One version's `keel_prediction_log_*` counters.
pub struct LogCounters {
    pub records: IntCounter,
    pub truncated: IntCounter,
    pub queue_full: IntCounter,
    pub queue_bytes: IntCounter,
    pub shutdown: IntCounter,
}

/// Heap bytes a BYTES element costs besides its content (its `Vec`).
const BYTES_ELEMENT_OVERHEAD: usize = std::mem::size_of::<Vec<u8>>();

/// The sampled rows of one tensor, each cut to at most `max_elements` elements: a copy of only
/// what will be logged.
pub(super) struct Kept {
    /// `width` elements per sampled row, rows in sampling order.
    pub(super) data: TensorData,
    pub(super) width: usize,
    /// The tensor's rows were wider than `width`.
    pub(super) truncated: bool,
}

/// Elements per row of a tensor of `rows` rows, and how many of them are logged.
pub(super) fn widths(data: &TensorData, rows: usize, max_elements: usize) -> (usize, usize) {
    let per_row = data.len() / rows.max(1);
    (per_row, per_row.min(max_elements))
}

/// Bytes a copy of rows `sampled` of `data` (each cut to `max_elements`) takes.
fn copy_bytes(data: &TensorData, rows: usize, sampled: &[u32], max_elements: usize) -> usize {
    let (per_row, width) = widths(data, rows, max_elements);
    match (data, data.datatype().size()) {
        (TensorData::Bytes(items), _) => sampled
            .iter()
            .flat_map(|&r| {
                let start = r as usize * per_row;
                items.get(start..start + width).unwrap_or_default()
            })
            .map(|item| item.len() + BYTES_ELEMENT_OVERHEAD)
            .sum(),
        (_, size) => sampled.len() * width * size.unwrap_or(8),
    }
}

/// Copies rows `sampled` of `data` (a tensor of `rows` rows), each cut to `max_elements`; a copy
/// too large for a chunk's arenas goes into a vector from `buffers` when one fits.
fn copy_rows(
    data: &TensorData,
    rows: usize,
    sampled: &[u32],
    max_elements: usize,
    buffers: Option<&Buffers>,
) -> Kept {
    let (per_row, width) = widths(data, rows, max_elements);
    let elements = sampled.len() * width;
    let reuse = buffers
        .filter(|_| !super::chunk::fits_arena(data, elements))
        .and_then(|b| b.take(data.datatype(), elements));
    copy_rows_into(data, per_row, width, sampled, reuse)
}

/// Rows `sampled` of a request's own `data` after its run: its vector itself when it is logged
/// whole (every row, none cut) and either small enough for a chunk's arenas (the chunk copies it in
/// as it takes it, so a copy here would be a second one) or without much spare capacity (the log's
/// byte bound counts elements, so a kept vector holds at most a quarter more); a copy otherwise, as
/// [`copy_rows`] makes.
fn keep_rows(
    data: TensorData,
    rows: usize,
    sampled: &[u32],
    max_elements: usize,
    buffers: Option<&Buffers>,
) -> Kept {
    let (per_row, width) = widths(&data, rows, max_elements);
    let len = data.len();
    let whole = width == per_row && !sampled.is_empty() && sampled.len() * per_row == len;
    let capacity = crate::with_tensor_data!(&data, v => v.capacity());
    if whole
        && !matches!(data, TensorData::Bytes(_))
        && (super::chunk::fits_arena(&data, len) || super::buffers::snug(capacity, len))
    {
        return Kept {
            data,
            width,
            truncated: false,
        };
    }
    copy_rows(&data, rows, sampled, max_elements, buffers)
}

/// Copies rows `sampled` of `data` (rows of `per_row` elements), each cut to `width`.
pub(super) fn copy_rows_cut(
    data: &TensorData,
    per_row: usize,
    width: usize,
    sampled: &[u32],
) -> Kept {
    copy_rows_into(data, per_row, width, sampled, None)
}

/// [`copy_rows_cut`] into `reuse` (emptied first) when it is a vector of `data`'s type.
fn copy_rows_into(
    data: &TensorData,
    per_row: usize,
    width: usize,
    sampled: &[u32],
    reuse: Option<TensorData>,
) -> Kept {
    fn pick<T: Clone>(
        v: &[T],
        per_row: usize,
        width: usize,
        sampled: &[u32],
        reuse: Option<Vec<T>>,
    ) -> Vec<T> {
        let mut out = reuse.unwrap_or_default();
        out.clear();
        if width == per_row && sampled.len() * per_row == v.len() && !sampled.is_empty() {
            // Every row sampled, none cut (sampling keeps row order): one copy of the whole.
            out.extend_from_slice(v);
            return out;
        }
        out.reserve_exact(sampled.len() * width);
        for &r in sampled {
            let start = r as usize * per_row;
            out.extend_from_slice(v.get(start..start + width).unwrap_or_default());
        }
        out
    }
    macro_rules! copy {
        ($($variant:ident),*) => {
            match data {
                $(TensorData::$variant(v) => {
                    let reuse = match reuse {
                        Some(TensorData::$variant(r)) => Some(r),
                        _ => None,
                    };
                    TensorData::$variant(pick(v, per_row, width, sampled, reuse))
                })*
            }
        };
    }
    let data = copy!(
        Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
    );
    Kept {
        data,
        width,
        truncated: width < per_row,
    }
}

/// A request id as the log keeps it: inline when short (a generated id is 32 hex digits), so most
/// captures allocate nothing for it.
pub enum LogId {
    Inline(u8, [u8; INLINE_ID]),
    Heap(String),
}

const INLINE_ID: usize = 32;

impl LogId {
    pub fn new(id: &str) -> LogId {
        let mut bytes = [0; INLINE_ID];
        match bytes.get_mut(..id.len()) {
            Some(inline) => {
                inline.copy_from_slice(id.as_bytes());
                LogId::Inline(id.len() as u8, bytes)
            }
            None => LogId::Heap(id.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `str`, so it is UTF-8.
            LogId::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
            }
            LogId::Heap(id) => id,
        }
    }
}

/// Requests of at most this many rows, all sampled, share one list of their row numbers.
const ALL_ROWS: usize = 4096;
static ALL: LazyLock<Vec<u32>> = LazyLock::new(|| (0..ALL_ROWS as u32).collect());

/// Rows `0..rows`, all of a request: borrowed from one shared list when it is long enough.
pub fn all_rows(rows: usize) -> Cow<'static, [u32]> {
    match ALL.get(..rows) {
        Some(rows) => Cow::Borrowed(rows),
        None => Cow::Owned(
            (0..rows)
                .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
                .collect(),
        ),
    }
}

/// The sampled rows of one request's inputs: only the sampled rows' elements, at most
/// `max_elements` per tensor and row.
pub struct Captured<'a> {
    pub(super) request_id: LogId,
    pub(super) timestamp_ms: u64,
    /// Rows of the request (dimension 0 of every tensor; 1 for models without batching).
    pub(super) rows: usize,
    pub(super) sampled: Cow<'static, [u32]>,
    pub(super) max_elements: usize,
    /// The inputs in signature order, as validated requests are.
    pub(super) kept: Vec<Kept>,
    pub(super) inputs: usize,
    /// The share of the log's bound this capture holds, given back when it is dropped.
    pub(super) held: super::log::Held<&'a super::log::Budget>,
    /// Bytes of `held` taken for the outputs.
    pub(super) outputs_held: usize,
}

impl<'a> Captured<'a> {
    /// Bytes a capture of rows `sampled` of `inputs` takes: tensor data, row indexes and id.
    pub fn input_bytes(
        request_id: &str,
        inputs: &[Tensor],
        rows: usize,
        sampled: &[u32],
        max_elements: usize,
    ) -> usize {
        request_id.len()
            + std::mem::size_of_val(sampled)
            + inputs
                .iter()
                .map(|t| copy_bytes(&t.data, rows, sampled, max_elements))
                .sum::<usize>()
    }

    /// Captures rows `sampled` (in increasing order) of `inputs` (a request of `rows` rows), each
    /// tensor's rows cut to `max_elements` elements; vectors logged whole are kept, and large copies
    /// reuse vectors from `buffers`.
    // Each is one part of what is captured; a struct to carry them would be built only to call this.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        request_id: LogId,
        timestamp_ms: u64,
        inputs: Vec<Tensor>,
        rows: usize,
        sampled: Cow<'static, [u32]>,
        max_elements: usize,
        held: super::log::Held<&'a super::log::Budget>,
        buffers: Option<&Buffers>,
    ) -> Self {
        let max_elements = max_elements.max(1);
        let kept: Vec<Kept> = inputs
            .into_iter()
            .map(|t| keep_rows(t.data, rows, &sampled, max_elements, buffers))
            .collect();
        Captured {
            request_id,
            timestamp_ms,
            rows,
            sampled,
            max_elements,
            inputs: kept.len(),
            kept,
            held,
            outputs_held: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sampled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sampled.is_empty()
    }

    /// Bytes the sampled rows of `outputs` will take once copied (`Chunk::add`).
    pub fn output_bytes(&self, outputs: &[Tensor]) -> usize {
        outputs
            .iter()
            .map(|t| copy_bytes(&t.data, self.rows, &self.sampled, self.max_elements))
            .sum()
    }
}

/// A tensor's elements as the monitor reads them (borrowed, not converted).
pub(crate) fn column_values(data: &TensorData) -> Values<'_> {
    match data {
        TensorData::Bool(v) => Values::Bool(v),
        TensorData::Uint8(v) => Values::U8(v),
        TensorData::Uint16(v) => Values::U16(v),
        TensorData::Uint32(v) => Values::U32(v),
        TensorData::Uint64(v) => Values::U64(v),
        TensorData::Int8(v) => Values::I8(v),
        TensorData::Int16(v) => Values::I16(v),
        TensorData::Int32(v) => Values::I32(v),
        TensorData::Int64(v) => Values::I64(v),
        TensorData::Fp16(v) => Values::F16(v),
        TensorData::Fp32(v) => Values::F32(v),
        TensorData::Fp64(v) => Values::F64(v),
        TensorData::Bytes(v) => Values::Bytes(v),
    }
}

pub(crate) fn values(data: &TensorData, range: std::ops::Range<usize>) -> Vec<FeatureValue> {
    column_values(data).feature_values(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_up_to_32_bytes_stay_inline_and_read_back_as_given() {
        for id in [
            "",
            "r",
            "é-ü",
            &"x".repeat(32),
            &"y".repeat(33),
            "0123456789abcdef0123456789abcdeé",
        ] {
            let kept = LogId::new(id);
            assert_eq!(kept.as_str(), id);
            assert_eq!(matches!(kept, LogId::Inline(..)), id.len() <= 32, "{id}");
        }
        assert_eq!(&all_rows(3)[..], [0, 1, 2]);
        assert!(matches!(all_rows(4096), Cow::Borrowed(_)));
        assert_eq!(all_rows(5000).len(), 5000);
        assert_eq!(all_rows(5000)[4999], 4999);
    }

    #[test]
    fn copies_hold_only_sampled_rows_cut_to_the_cap() {
        let bytes = TensorData::Bytes((0..12).map(|i| vec![b'a'; i]).collect());
        // 3 rows of 4 strings; rows 0 and 2, 3 elements each.
        assert_eq!(
            copy_bytes(&bytes, 3, &[0, 2], 3),
            (1 + 2 + 8 + 9 + 10) + 6 * BYTES_ELEMENT_OVERHEAD
        );
        let kept = copy_rows(&bytes, 3, &[0, 2], 3, None);
        assert!(kept.truncated);
        assert_eq!(kept.width, 3);
        assert_eq!(kept.data.len(), 6);
        let TensorData::Bytes(items) = &kept.data else {
            panic!("bytes")
        };
        assert_eq!(items[3].len(), 8);
        let floats = TensorData::Fp16(vec![half::f16::from_f32(1.0); 10]);
        assert_eq!(copy_bytes(&floats, 5, &[1, 4], 100), 2 * 2 * 2);
        let all = copy_rows(&floats, 5, &[0, 1, 2, 3, 4], 100, None);
        assert!(!all.truncated);
        assert_eq!(all.data, floats);
        // A model without batching: the whole tensor is one row.
        let wide = TensorData::Fp32(vec![0.5; 1_000_000]);
        let kept = copy_rows(&wide, 1, &[0], 1024, None);
        assert_eq!(
            (kept.data.len(), kept.width, kept.truncated),
            (1024, 1024, true)
        );
    }
}

//! Logged requests gathered into one queue item. A runtime worker adds the requests it serves to a
//! chunk of its own (see `stash.rs`) and queues the chunk when it is full or the worker goes idle, so
//! the queue, the drain thread and the allocator see one item per chunk rather than per request.
//!
//! Small tensors are copied into one vector per element type (the chunk's arenas): a chunk of 64
//! single-row requests is a handful of allocations, freed together on the drain thread. Freeing each
//! request's own vectors there (five per request) cost more than the logging itself: mimalloc hands
//! memory freed by another thread back to its owner through a shared list, a cache miss per block on
//! each side. Larger tensors keep the vector they were copied into, one reused from an earlier chunk
//! (`buffers.rs`).

use std::borrow::Cow;
use std::sync::Arc;

use keel_monitor::{RowBatch, TensorRows, Values};

use super::buffers::Buffers;
use super::log::Held;
use super::rows::{Captured, Kept, LogId, LogNames, column_values, widths};
use crate::tensor::{Tensor, TensorData};

/// A chunk is queued once it holds this many requests...
pub const ENTRIES: usize = 64;
/// ...or this many bytes of the log's bound.
pub const BYTES: usize = 64 << 10;
/// Tensors up to this many bytes are copied into the arenas; larger ones keep their own vector.
const ARENA_TENSOR: usize = 4 << 10;

/// One logged request.
struct Entry {
    /// Its version's names: `Chunk::names[names]`.
    names: usize,
    version: u64,
    id: LogId,
    timestamp_ms: u64,
    /// The request's row numbers of the logged rows.
    sampled: Cow<'static, [u32]>,
    /// Its inputs are `slots[first..first + inputs]`, its outputs the `outputs` slots after them.
    first: usize,
    inputs: usize,
    outputs: usize,
    /// Some tensor's rows were cut to `--prediction-log-max-elements`.
    truncated: bool,
}

/// Where one logged tensor's elements are.
enum Slot {
    /// `arenas[arena][start..end]`.
    Arena {
        arena: usize,
        start: usize,
        end: usize,
        width: usize,
    },
    Own(Kept),
}

/// Logged requests, in the order they were added, and their tensors.
pub struct Chunk {
    entries: Vec<Entry>,
    /// The versions of its requests (a shared count per version, not per request).
    names: Vec<Arc<LogNames>>,
    slots: Vec<Slot>,
    /// One vector per element type in use.
    arenas: Vec<TensorData>,
    rows: usize,
    /// Requests its first request's size lets it hold before it is full.
    expected: usize,
    /// The requests' share of the log's bound, given back when the chunk is dropped.
    held: Option<Held>,
    /// Taken by the drain (or counted under another reason): dropping it counts nothing.
    delivered: bool,
}

impl Chunk {
    /// An empty chunk with room for `entries` requests.
    pub fn with_capacity(entries: usize) -> Self {
        Chunk {
            entries: Vec::with_capacity(entries),
            names: Vec::new(),
            slots: Vec::with_capacity(entries * 3),
            arenas: Vec::new(),
            rows: 0,
            expected: ENTRIES,
            held: None,
            delivered: false,
        }
    }

    /// Logged rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of the log's bound it holds.
    pub fn bytes(&self) -> usize {
        self.held.as_ref().map_or(0, Held::bytes)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Time to queue it.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= ENTRIES || self.bytes() >= BYTES
    }

    /// Adds a captured request with the sampled rows of the outputs that answered it.
    pub fn add(
        &mut self,
        captured: Captured<'_>,
        names: &Arc<LogNames>,
        version: u64,
        outputs: &[Tensor],
        budget: &Arc<super::log::Budget>,
    ) {
        let Captured {
            request_id,
            timestamp_ms,
            rows,
            sampled,
            max_elements,
            kept,
            inputs,
            held,
            ..
        } = captured;
        if self.entries.is_empty() {
            // Requests like this one that fit in the chunk's bytes: its arenas' room (see `arena`).
            self.expected = ENTRIES.min(BYTES.div_ceil(held.bytes().max(1)));
        }
        self.held
            .get_or_insert_with(|| Held::none(budget))
            .absorb(held);
        let first = self.slots.len();
        let mut truncated = false;
        for k in kept {
            truncated |= k.truncated;
            let slot = self.keep(k);
            self.slots.push(slot);
        }
        for t in outputs {
            let (per_row, width) = widths(&t.data, rows, max_elements);
            truncated |= width < per_row;
            let slot = self.copy(&t.data, per_row, width, &sampled);
            self.slots.push(slot);
        }
        self.rows += sampled.len();
        let names = match self.names.iter().rposition(|n| Arc::ptr_eq(n, names)) {
            Some(i) => i,
            None => {
                self.names.push(names.clone());
                self.names.len() - 1
            }
        };
        self.entries.push(Entry {
            names,
            version,
            id: request_id,
            timestamp_ms,
            sampled,
            first,
            inputs,
            outputs: outputs.len(),
            truncated,
        });
    }

    /// The arena for `like`'s element type, made when missing; `None` for strings (each element
    /// is its own vector anyway).
    fn arena(&mut self, like: &TensorData, elements: usize) -> Option<usize> {
        if matches!(like, TensorData::Bytes(_)) {
            return None;
        }
        let datatype = like.datatype();
        if let Some(i) = self.arenas.iter().position(|a| a.datatype() == datatype) {
            return Some(i);
        }
        let mut arena = like.slice(0..0);
        // Room for a chunk of such requests at once (no growth for the usual uniform traffic), but
        // no more than a chunk's bytes: a chunk of large requests fills after a few, and room for 64
        // of their outputs was memory the request path faulted in and never used.
        let size = datatype.size().unwrap_or(1).max(1);
        arena.reserve(
            elements
                .saturating_mul(self.expected.max(1))
                .min(BYTES / size),
        );
        self.arenas.push(arena);
        Some(self.arenas.len() - 1)
    }

    /// A copied input's slot: appended to an arena when small, else kept as it is.
    fn keep(&mut self, kept: Kept) -> Slot {
        let elements = kept.data.len();
        let arena = if fits_arena(&kept.data, elements) {
            self.arena(&kept.data, elements)
        } else {
            None
        };
        match arena {
            Some(arena) => {
                let start = self.arenas[arena].len();
                if append(
                    &mut self.arenas[arena],
                    &kept.data,
                    kept.width,
                    kept.width,
                    None,
                ) {
                    let end = self.arenas[arena].len();
                    return Slot::Arena {
                        arena,
                        start,
                        end,
                        width: kept.width,
                    };
                }
                Slot::Own(kept)
            }
            None => Slot::Own(kept),
        }
    }

    /// An output's slot: rows `sampled` of `data`, each cut to `width` of its `per_row` elements.
    fn copy(&mut self, data: &TensorData, per_row: usize, width: usize, sampled: &[u32]) -> Slot {
        if fits_arena(data, width * sampled.len())
            && let Some(arena) = self.arena(data, width * sampled.len())
        {
            let start = self.arenas[arena].len();
            if append(&mut self.arenas[arena], data, per_row, width, Some(sampled)) {
                let end = self.arenas[arena].len();
                return Slot::Arena {
                    arena,
                    start,
                    end,
                    width,
                };
            }
        }
        Slot::Own(super::rows::copy_rows_cut(data, per_row, width, sampled))
    }

    /// Appends its requests' inputs and outputs as the monitor reads them to `all`: the list
    /// [`Chunk::batches`] borrows from.
    pub fn tensors<'a>(&'a self, all: &mut Vec<TensorRows<'a>>) {
        all.reserve(self.slots.len());
        for e in &self.entries {
            let names = &self.names[e.names];
            let (inputs, outputs) = self.entry_slots(e);
            all.extend(self.tensor_rows(&names.inputs, inputs));
            all.extend(self.tensor_rows(&names.outputs, outputs));
        }
    }

    /// Each request's logged rows as columns, borrowing the copies and `tensors` (what
    /// [`Chunk::tensors`] listed for this chunk): what the embedded monitor bins.
    pub fn batches<'a>(
        &'a self,
        tensors: &'a [TensorRows<'a>],
    ) -> impl Iterator<Item = RowBatch<'a>> + 'a {
        let mut at = 0;
        self.entries.iter().map(move |e| {
            let names = &self.names[e.names];
            let (inputs, outputs) = self.entry_slots(e);
            // As many as `tensors` lists for it: a name for each slot (see `tensor_rows`).
            let i = names.inputs.len().min(inputs.len());
            let o = names.outputs.len().min(outputs.len());
            let list = tensors.get(at..at + i + o).unwrap_or_default();
            at += i + o;
            let (inputs, outputs) = list.split_at(i.min(list.len()));
            RowBatch {
                model: &names.model,
                version: e.version,
                request_id: e.id.as_str(),
                timestamp_ms: e.timestamp_ms,
                rows: &e.sampled,
                inputs: Cow::Borrowed(inputs),
                outputs: Cow::Borrowed(outputs),
            }
        })
    }

    /// A request's input slots and output slots.
    fn entry_slots(&self, e: &Entry) -> (&[Slot], &[Slot]) {
        let inputs = self
            .slots
            .get(e.first..e.first + e.inputs)
            .unwrap_or_default();
        let outputs = self
            .slots
            .get(e.first + e.inputs..e.first + e.inputs + e.outputs)
            .unwrap_or_default();
        (inputs, outputs)
    }

    fn tensor_rows<'a>(
        &'a self,
        names: &'a [String],
        slots: &'a [Slot],
    ) -> impl Iterator<Item = TensorRows<'a>> + 'a {
        names.iter().zip(slots).map(|(name, slot)| match slot {
            Slot::Arena {
                arena,
                start,
                end,
                width,
            } => TensorRows {
                name,
                width: *width,
                values: range_values(&self.arenas[*arena], *start..*end),
            },
            Slot::Own(kept) => TensorRows {
                name,
                width: kept.width,
                values: column_values(&kept.data),
            },
        })
    }

    /// One record per logged row (the drain lists a run's batches itself, `monitoring/scratch.rs`).
    #[cfg(test)]
    pub fn records(&self) -> Vec<keel_monitor::PredictionRecord> {
        let mut tensors = Vec::new();
        self.tensors(&mut tensors);
        self.batches(&tensors)
            .flat_map(|b| b.records().collect::<Vec<_>>())
            .collect()
    }

    /// Adds each request's rows to a counter of its version's log, once per version.
    pub(super) fn count(&self, counter: impl Fn(&LogNames) -> &prometheus::IntCounter) {
        for (names, rows, _) in self.tallies() {
            counter(&names).inc_by(rows);
        }
    }

    /// Rows, and rows with a cut tensor, per version.
    pub(super) fn tallies(&self) -> Vec<(Arc<LogNames>, u64, u64)> {
        let mut out: Vec<(Arc<LogNames>, u64, u64)> =
            self.names.iter().map(|n| (n.clone(), 0, 0)).collect();
        for e in &self.entries {
            let rows = e.sampled.len() as u64;
            if let Some((_, n, t)) = out.get_mut(e.names) {
                *n += rows;
                if e.truncated {
                    *t += rows;
                }
            }
        }
        out
    }

    /// Bytes its vectors hold, used or not: what keeping it for reuse keeps.
    pub(super) fn capacity_bytes(&self) -> usize {
        // Arenas never hold strings (see `arena`).
        let arenas: usize = self
            .arenas
            .iter()
            .filter_map(super::buffers::capacity_bytes)
            .sum();
        std::mem::size_of::<Self>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.names.capacity() * std::mem::size_of::<Arc<LogNames>>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + arenas
    }

    /// Empties it for reuse, giving its share of the log's bound back; false when its arenas grew
    /// too large to keep.
    pub(super) fn clear(&mut self, buffers: &Buffers) -> bool {
        self.entries.clear();
        self.names.clear();
        for slot in self.slots.drain(..) {
            if let Slot::Own(kept) = slot {
                buffers.give(kept.data);
            }
        }
        self.rows = 0;
        self.held = None;
        self.delivered = false;
        self.arenas
            .retain(|a| super::buffers::capacity_bytes(a).is_some_and(|b| b <= 2 * BYTES));
        for arena in &mut self.arenas {
            crate::with_tensor_data!(arena, v => v.clear());
        }
        self.slots.capacity() <= 4 * ENTRIES
    }

    /// From now on dropping it counts nothing: it was delivered, or counted under another reason.
    pub(super) fn delivered(&mut self) {
        self.delivered = true;
    }
}

/// Rows not delivered count as `reason="shutdown"`, whatever path lost them.
impl Drop for Chunk {
    fn drop(&mut self) {
        if !self.delivered {
            self.count(|names| &names.shutdown);
        }
    }
}

/// Whether `elements` of `data`'s type go into an arena: fixed-size types up to [`ARENA_TENSOR`]
/// bytes (strings never: each is its own vector anyway, and sizing them would read every one).
pub(super) fn fits_arena(data: &TensorData, elements: usize) -> bool {
    data.datatype()
        .size()
        .is_some_and(|size| size.saturating_mul(elements) <= ARENA_TENSOR)
}

/// Appends to `arena` rows `sampled` (all rows when `None`) of `data` (rows of `per_row`
/// elements), each cut to `width`; false (nothing appended) when their element types differ.
fn append(
    arena: &mut TensorData,
    data: &TensorData,
    per_row: usize,
    width: usize,
    sampled: Option<&[u32]>,
) -> bool {
    fn pick<T: Clone>(
        out: &mut Vec<T>,
        v: &[T],
        per_row: usize,
        width: usize,
        rows: Option<&[u32]>,
    ) {
        match rows {
            None => out.extend_from_slice(v),
            Some(rows) if width == per_row && rows.len() * per_row == v.len() => {
                // Every row sampled, none cut (sampling keeps row order): the whole at once.
                out.extend_from_slice(v)
            }
            Some(rows) => {
                for &r in rows {
                    let start = r as usize * per_row;
                    out.extend_from_slice(v.get(start..start + width).unwrap_or_default());
                }
            }
        }
    }
    macro_rules! append {
        ($($variant:ident),*) => {
            match (arena, data) {
                $((TensorData::$variant(a), TensorData::$variant(v)) => pick(a, v, per_row, width, sampled),)*
                _ => return false,
            }
        };
    }
    append!(
        Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64
    );
    true
}

/// Elements `range` of an arena, as the monitor reads them.
fn range_values(data: &TensorData, range: std::ops::Range<usize>) -> Values<'_> {
    macro_rules! cut {
        ($($variant:ident => $values:ident),*) => {
            match data {
                $(TensorData::$variant(v) => Values::$values(v.get(range).unwrap_or_default()),)*
            }
        };
    }
    cut!(
        Bool => Bool, Uint8 => U8, Uint16 => U16, Uint32 => U32, Uint64 => U64, Int8 => I8,
        Int16 => I16, Int32 => I32, Int64 => I64, Fp16 => F16, Fp32 => F32, Fp64 => F64,
        Bytes => Bytes
    )
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;

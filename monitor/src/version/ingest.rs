//! Counting served rows into a version's windows: one record at a time (the sidecar's and the file
//! sinks' path) or a request's rows column by column straight from its tensors (the embedded
//! monitor's path). Both count the same rows alike; `monitor/tests/batch.rs` holds them to it.

use super::{Group, RowMember, Tracked, VersionState};
use crate::batch::{Element, RowBatch, TensorRows, Visitor};
use crate::bins::{Excess, Numeric};
use crate::feedback::FeedbackStore;
use crate::record::{FeatureValue, PredictionRecord};
use crate::window::Refused;

impl VersionState {
    /// Counts a run of records of this version; returns how many were refused as older than the
    /// window and as too far in the future.
    pub fn ingest(
        &mut self,
        records: &[PredictionRecord],
        store: &mut FeedbackStore,
    ) -> (u64, u64) {
        let Self {
            version,
            columns,
            input_groups,
            output_groups,
            window,
            feedback,
            estimate,
            prediction_output,
            evictions,
            ..
        } = self;
        let (mut late, mut future) = (0, 0);
        let mut skipped = 0;
        for record in records {
            let slot = match window.add_row(record.timestamp_ms) {
                Ok(slot) => slot,
                Err(Refused::Late) => {
                    late += 1;
                    continue;
                }
                Err(Refused::Future) => {
                    future += 1;
                    continue;
                }
            };
            for (groups, tensors) in [
                (&*input_groups, &record.inputs),
                (&*output_groups, &record.outputs),
            ] {
                for group in groups {
                    let values = find(tensors, &group.tensor);
                    for &(index, column) in &group.members {
                        let t = &columns[column];
                        match values.get(index).and_then(|v| t.bins.bin_and_excess(v)) {
                            Some((bin, excess)) => {
                                let (counts, sums) = window.bucket_mut(slot);
                                let counts = &mut counts[t.offset..t.offset + t.bins.len()];
                                count(t, counts, sums, bin, excess);
                            }
                            None => skipped += 1,
                        }
                    }
                }
            }
            if let Some(estimate) = estimate {
                estimate.add(record.timestamp_ms, &record.outputs);
            }
            if feedback.is_some() {
                let predicted = match prediction_output {
                    Some(name) => find(&record.outputs, name),
                    None => record.outputs.first().map_or(&[][..], |(_, v)| v),
                };
                if let Some(value) = predicted.first().and_then(|v| store.value(v)) {
                    let key = store.key(&record.model, &record.request_id, record.row);
                    store.insert(key, *version, value, record.timestamp_ms, evictions);
                }
            }
        }
        self.records_total.inc_by(records.len() as u64);
        if skipped > 0 {
            self.values_skipped.inc_by(skipped);
        }
        (late, future)
    }

    /// Counts one request's logged rows as [`VersionState::ingest`] counts their records (the same
    /// window, feedback and estimate contents), but column by column straight from the tensors:
    /// one window placement per request and no allocation per row. Returns how many rows were
    /// refused as older than the window and as too far in the future.
    pub fn ingest_batch(
        &mut self,
        batch: &RowBatch<'_>,
        tallied: Option<Tally<'_>>,
        store: &mut FeedbackStore,
    ) -> (u64, u64) {
        let n = batch.len();
        if n == 0 {
            return (0, 0);
        }
        self.records_total.inc_by(n as u64);
        // One time for the whole request: all its rows land in the same bucket, or none does.
        let slot = match self.window.add_rows(batch.timestamp_ms, n as u64) {
            Ok(slot) => slot,
            Err(Refused::Late) => return (n as u64, 0),
            Err(Refused::Future) => return (0, n as u64),
        };
        let Self {
            version,
            columns,
            input_groups,
            output_groups,
            window,
            feedback,
            estimate,
            prediction_output,
            evictions,
            ..
        } = self;
        let (counts, sums) = window.bucket_mut(slot);
        let skipped = match tallied {
            // Counted beforehand into a zeroed bucket of the same layout (see `Monitor::ingest_batches`).
            Some(tally) => {
                for (count, add) in counts.iter_mut().zip(tally.counts) {
                    *count += add;
                }
                // Replayed in their order: the same additions as counting in place, to the last bit.
                for &(at, d) in tally.out_of_range {
                    sums.out_of_range(at, d);
                }
                tally.skipped
            }
            None => count_batch(columns, input_groups, output_groups, batch, counts, sums),
        };
        if let Some(estimate) = estimate {
            estimate.add_batch(batch);
        }
        if feedback.is_some() {
            let predicted = match prediction_output {
                Some(name) => batch.outputs.iter().find(|t| t.name == name.as_str()),
                None => batch.outputs.first(),
            };
            if let Some(t) = predicted.filter(|t| t.width > 0) {
                for (at, &row) in batch.rows.iter().enumerate().take(t.complete_rows(n)) {
                    let value = match t.values.get(at * t.width) {
                        Some(Element::Number(x)) => FeedbackStore::number(x),
                        Some(Element::Text(b)) => store.text(&String::from_utf8_lossy(b)),
                        None => None,
                    };
                    if let Some(value) = value {
                        let key = store.key(batch.model, batch.request_id, row);
                        store.insert(key, *version, value, batch.timestamp_ms, evictions);
                    }
                }
            }
        }
        if skipped > 0 {
            self.values_skipped.inc_by(skipped);
        }
        (0, 0)
    }
}

/// A request's values counted ahead into a zeroed bucket of its version's layout
/// ([`VersionState::tally`]), for [`VersionState::ingest_batch`] to add to the bucket its time falls in.
pub(crate) struct Tally<'a> {
    pub counts: &'a [u64],
    /// Out-of-range values as (sum index, distance), in the order met.
    pub out_of_range: &'a [(usize, f64)],
    pub skipped: u64,
}

impl VersionState {
    /// The sizes of a bucket's counts and sums, for the scratch of [`VersionState::tally`].
    pub fn bucket_len(&self) -> (usize, usize) {
        self.window.bucket_len()
    }

    /// Counts `batch`'s values into `counts` (zeroed, [`VersionState::bucket_len`]) and lists its
    /// out-of-range values in `out_of_range`, without touching the window: a pure function of the
    /// batch, so threads may tally requests side by side. Returns how many values had no bin.
    pub fn tally(
        &self,
        batch: &RowBatch<'_>,
        counts: &mut [u64],
        out_of_range: &mut Vec<(usize, f64)>,
    ) -> u64 {
        count_batch(
            &self.columns,
            &self.input_groups,
            &self.output_groups,
            batch,
            counts,
            out_of_range,
        )
    }
}

/// Where out-of-range values go: a bucket's sums, or a list replayed into them later.
pub(crate) trait OutOfRange {
    /// A value `d` beyond the range, tallied at sums `at` (count) and `at + 1` (summed distance).
    fn out_of_range(&mut self, at: usize, d: f64);
}

impl OutOfRange for [f64] {
    #[inline]
    fn out_of_range(&mut self, at: usize, d: f64) {
        self[at] += 1.0;
        self[at + 1] += d;
    }
}

impl OutOfRange for Vec<(usize, f64)> {
    #[inline]
    fn out_of_range(&mut self, at: usize, d: f64) {
        self.push((at, d));
    }
}

/// Counts every monitored column of `batch` into `counts` and `sums` (a bucket's layout); returns
/// how many values had no bin (a missing tensor, a short row, a string that is no number).
fn count_batch(
    columns: &[Tracked],
    input_groups: &[Group],
    output_groups: &[Group],
    batch: &RowBatch<'_>,
    counts: &mut [u64],
    sums: &mut (impl OutOfRange + ?Sized),
) -> u64 {
    let n = batch.len();
    let mut skipped = 0;
    for (groups, tensors) in [
        (input_groups, &batch.inputs),
        (output_groups, &batch.outputs),
    ] {
        for group in groups {
            let members = group.members.len() as u64;
            let Some(tensor) = tensors.iter().find(|t| t.name == group.tensor) else {
                skipped += members * n as u64;
                continue;
            };
            let rows = tensor.complete_rows(n);
            // A row the tensor does not hold completely has no value in any of its columns.
            skipped += members * (n - rows) as u64;
            if rows == 1
                && let Some(plan) = &group.row
                && let Some(beyond) = count_first_row(plan, tensor, counts, sums)
            {
                skipped += beyond;
                continue;
            }
            if rows == 1
                && tensor
                    .values
                    .for_each_in_first_row(&group.members, tensor.width, |column, x| {
                        count_number(&columns[column], counts, sums, x)
                    })
            {
                let beyond = group.members.iter().filter(|(i, _)| *i >= tensor.width);
                skipped += beyond.count() as u64;
                continue;
            }
            for &(index, column) in &group.members {
                if index >= tensor.width {
                    skipped += rows as u64;
                    continue;
                }
                skipped += count_column(&columns[column], tensor, index, rows, counts, sums);
            }
        }
    }
    skipped
}

/// Counts the first row of `tensor` by a [`Group`]'s row plan; returns how many members had no value
/// (beyond the row's width), or `None`, counting nothing, for strings.
fn count_first_row(
    plan: &[RowMember],
    tensor: &TensorRows<'_>,
    counts: &mut [u64],
    sums: &mut (impl OutOfRange + ?Sized),
) -> Option<u64> {
    let mut row = RowCounter {
        plan,
        width: tensor.width,
        counts,
        sums,
        beyond: 0,
    };
    tensor.values.visit(&mut row).then_some(row.beyond)
}

/// Counts a single-row request's values of one [`Group`] by its row plan.
struct RowCounter<'a, S: ?Sized> {
    plan: &'a [RowMember],
    /// The tensor's row width.
    width: usize,
    /// The whole bucket.
    counts: &'a mut [u64],
    sums: &'a mut S,
    /// Members beyond the row's width: no value.
    beyond: u64,
}

impl<S: OutOfRange + ?Sized> Visitor for RowCounter<'_, S> {
    #[inline]
    fn elements<T: Copy>(&mut self, v: &[T], to: impl Fn(T) -> f64) {
        let row = v.get(..self.width).unwrap_or_default();
        for m in self.plan {
            let Some(&x) = row.get(m.index) else {
                self.beyond += 1;
                continue;
            };
            let (bin, excess) = m.binner.bin_and_excess(to(x));
            self.counts[m.offset + bin] += 1;
            beyond_range(m.range, self.sums, excess);
        }
    }
}

/// The values of the named tensor in a record; empty when absent (its columns count as skipped).
#[inline]
fn find<'a>(tensors: &'a [(String, Vec<FeatureValue>)], name: &str) -> &'a [FeatureValue] {
    // Compared byte by byte inline: names are short, and a libc memcmp call per tensor per record
    // showed as 8% of ingest.
    let same = |n: &str| n.len() == name.len() && n.bytes().zip(name.bytes()).all(|(a, b)| a == b);
    tensors
        .iter()
        .find(|(n, _)| same(n))
        .map_or(&[][..], |(_, v)| v)
}

/// Counts element `index` of the first `rows` rows of `tensor` into the column's bins of one
/// bucket (`counts`, `sums`); returns how many values had no bin (strings that are no number in a
/// numeric column).
fn count_column(
    t: &Tracked,
    tensor: &TensorRows<'_>,
    index: usize,
    rows: usize,
    counts: &mut [u64],
    sums: &mut (impl OutOfRange + ?Sized),
) -> u64 {
    let counts = &mut counts[t.offset..t.offset + t.bins.len()];
    let width = tensor.width;
    // Numbers, the common case: edges and range held across the loop.
    let numbers = match t.bins.numeric() {
        Some(numeric) => tensor.values.visit(&mut ColumnCounter {
            numeric,
            t,
            index,
            width,
            rows,
            counts: &mut *counts,
            sums: &mut *sums,
        }),
        None => tensor.values.for_each_number(index, width, rows, |x| {
            counts[t.bins.bin_number(x).0] += 1;
        }),
    };
    if numbers {
        return 0;
    }
    let mut skipped = 0;
    for at in 0..rows {
        let binned = match tensor.values.get(at * width + index) {
            Some(Element::Text(b)) => t.bins.bin_text(&String::from_utf8_lossy(b)),
            Some(Element::Number(x)) => Some(t.bins.bin_number(x)),
            None => None,
        };
        match binned {
            Some((bin, excess)) => count(t, counts, sums, bin, excess),
            None => skipped += 1,
        }
    }
    skipped
}

/// Counts a number into its column's bin of a bucket (`counts` is the whole bucket), as
/// [`count_column`] does for each of a column's numbers.
#[inline]
fn count_number(t: &Tracked, counts: &mut [u64], sums: &mut (impl OutOfRange + ?Sized), x: f64) {
    let counts = &mut counts[t.offset..t.offset + t.bins.len()];
    match t.bins.numeric() {
        Some(numeric) => {
            let (bin, excess) = numeric.bin_and_excess(x);
            count(t, counts, sums, bin, excess);
        }
        None => counts[t.bins.bin_number(x).0] += 1,
    }
}

/// Counts element `index` of each of the first `rows` rows of a numeric column's tensor, as
/// [`count_column`] does: the many-row requests' hot loop.
struct ColumnCounter<'a, S: ?Sized> {
    numeric: Numeric<'a>,
    t: &'a Tracked,
    index: usize,
    width: usize,
    rows: usize,
    /// The column's part of the bucket.
    counts: &'a mut [u64],
    sums: &'a mut S,
}

impl<S: OutOfRange + ?Sized> Visitor for ColumnCounter<'_, S> {
    #[inline]
    fn elements<T: Copy>(&mut self, v: &[T], to: impl Fn(T) -> f64) {
        // `rows * width <= v.len()` and `index < width` (the caller's bounds), so this visits
        // exactly element `index` of each row.
        let Self {
            numeric,
            t,
            index,
            width,
            rows,
            counts,
            sums,
        } = self;
        let column = || {
            v.iter()
                .skip(*index)
                .step_by((*width).max(1))
                .take(*rows)
                .map(|&x| to(x))
        };
        if !numeric.tallies() {
            for x in column() {
                let (bin, excess) = numeric.bin_and_excess(x);
                count(t, counts, *sums, bin, excess);
            }
            return;
        }
        // Counted a block at a time; the excesses come in the values' order, as value by value (the
        // out-of-range sums come out bit for bit the same).
        numeric.tally(column(), counts, |excess| {
            beyond_range(t.range, *sums, excess)
        });
    }
}

/// Counts one value into its bin of a bucket (`counts` is the column's part of it) and, outside the
/// training range (a nonzero excess implies the column has one), into the bucket's out-of-range
/// sums; an infinite value counts there but adds nothing to the distance.
#[inline]
fn count(
    t: &Tracked,
    counts: &mut [u64],
    sums: &mut (impl OutOfRange + ?Sized),
    bin: usize,
    excess: Excess,
) {
    counts[bin] += 1;
    beyond_range(t.range, sums, excess);
}

/// Tallies a value's nonzero `excess` beyond its column's training range (`range`, see [`Tracked`])
/// into the bucket's out-of-range sums.
#[inline]
fn beyond_range(range: Option<usize>, sums: &mut (impl OutOfRange + ?Sized), excess: Excess) {
    if excess != 0.0
        && let Some(r) = range
    {
        let side = usize::from(excess > 0.0);
        let d = if excess.is_finite() {
            excess.abs()
        } else {
            0.0
        };
        let at = 4 * r + 2 * side;
        sums.out_of_range(at, d);
    }
}

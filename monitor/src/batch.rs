//! One request's logged rows as columns: the copied tensors themselves, borrowed. The monitor bins
//! them column by column ([`crate::Monitor::ingest_batches`]) with no per-row allocation; the sinks
//! that want one record per row get them from [`RowBatch::records`].

use std::borrow::Cow;

use crate::record::{FeatureValue, PredictionRecord};

/// A tensor's elements for the logged rows, `width` per row, rows one after another.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    Bool(&'a [bool]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F16(&'a [half::f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// Strings (or any bytes): categories, read as UTF-8 (invalid sequences replaced).
    Bytes(&'a [Vec<u8>]),
}

/// One logged tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorRows<'a> {
    pub name: &'a str,
    /// Elements per logged row (after truncation).
    pub width: usize,
    pub values: Values<'a>,
}

/// The logged rows of one request: a record per row, as columns.
#[derive(Clone, Debug)]
pub struct RowBatch<'a> {
    pub model: &'a str,
    pub version: u64,
    pub request_id: &'a str,
    /// Unix time in milliseconds when the rows were computed (one time for the whole request).
    pub timestamp_ms: u64,
    /// Row index within the request of each logged row, in the order of the tensors' rows.
    pub rows: &'a [u32],
    /// Borrowed where the caller lists many requests' tensors at once (the prediction log lists a
    /// chunk's in one vector: two lists per request cost the drain a fifth of its time).
    pub inputs: Cow<'a, [TensorRows<'a>]>,
    pub outputs: Cow<'a, [TensorRows<'a>]>,
}

impl Values<'_> {
    pub fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::U8(v) => v.len(),
            Values::U16(v) => v.len(),
            Values::U32(v) => v.len(),
            Values::U64(v) => v.len(),
            Values::I8(v) => v.len(),
            Values::I16(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::F16(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `range` as record values (numbers as `f64`, bytes as strings); empty when the
    /// range is out of bounds.
    pub fn feature_values(&self, range: std::ops::Range<usize>) -> Vec<FeatureValue> {
        fn numbers<T: Copy>(
            v: &[T],
            range: std::ops::Range<usize>,
            f: impl Fn(T) -> f64,
        ) -> Vec<FeatureValue> {
            v.get(range)
                .unwrap_or_default()
                .iter()
                .map(|x| FeatureValue::Number(f(*x)))
                .collect()
        }
        match self {
            Values::Bool(v) => numbers(v, range, |x| f64::from(u8::from(x))),
            Values::U8(v) => numbers(v, range, f64::from),
            Values::U16(v) => numbers(v, range, f64::from),
            Values::U32(v) => numbers(v, range, f64::from),
            Values::U64(v) => numbers(v, range, |x| x as f64),
            Values::I8(v) => numbers(v, range, f64::from),
            Values::I16(v) => numbers(v, range, f64::from),
            Values::I32(v) => numbers(v, range, f64::from),
            Values::I64(v) => numbers(v, range, |x| x as f64),
            Values::F16(v) => numbers(v, range, |x| x.to_f64()),
            Values::F32(v) => numbers(v, range, f64::from),
            Values::F64(v) => numbers(v, range, |x| x),
            Values::Bytes(v) => v
                .get(range)
                .unwrap_or_default()
                .iter()
                .map(|b| FeatureValue::Category(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        }
    }

    /// Element `i` as a number, or as text for bytes; `None` out of bounds.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<Element<'_>> {
        let n = |x: Option<f64>| x.map(Element::Number);
        match self {
            Values::Bool(v) => n(v.get(i).map(|&x| f64::from(u8::from(x)))),
            Values::U8(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::U16(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::U32(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::U64(v) => n(v.get(i).map(|&x| x as f64)),
            Values::I8(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::I16(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::I32(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::I64(v) => n(v.get(i).map(|&x| x as f64)),
            Values::F16(v) => n(v.get(i).map(|x| x.to_f64())),
            Values::F32(v) => n(v.get(i).map(|&x| f64::from(x))),
            Values::F64(v) => n(v.get(i).copied()),
            Values::Bytes(v) => v.get(i).map(|b| Element::Text(b)),
        }
    }

    /// Hands all the elements to `visitor` in their own type, with the conversion to a number: one
    /// match, then loops the compiler specialises per type inside the visitor, whose per-value work is
    /// then inlined for certain (a closure called per value was inlined or not by the compiler's whim,
    /// and a call per value cost 12% at 256 rows). False, calling nothing, for bytes.
    #[inline]
    pub(crate) fn visit(&self, visitor: &mut impl Visitor) -> bool {
        match self {
            Values::Bool(v) => visitor.elements(v, |x| f64::from(u8::from(x))),
            Values::U8(v) => visitor.elements(v, f64::from),
            Values::U16(v) => visitor.elements(v, f64::from),
            Values::U32(v) => visitor.elements(v, f64::from),
            Values::U64(v) => visitor.elements(v, |x| x as f64),
            Values::I8(v) => visitor.elements(v, f64::from),
            Values::I16(v) => visitor.elements(v, f64::from),
            Values::I32(v) => visitor.elements(v, f64::from),
            Values::I64(v) => visitor.elements(v, |x| x as f64),
            Values::F16(v) => visitor.elements(v, |x| x.to_f64()),
            Values::F32(v) => visitor.elements(v, f64::from),
            Values::F64(v) => visitor.elements(v, |x| x),
            Values::Bytes(_) => return false,
        }
        true
    }

    /// For each `(index, column)` of `members` with `index < width`, calls `f(column, x)` with
    /// element `index` of the first row as a number: the type is matched once for all of them (a
    /// single-row request's columns, where matching per value cost more than binning it). False,
    /// calling nothing, for strings.
    #[inline]
    pub(crate) fn for_each_in_first_row(
        &self,
        members: &[(usize, usize)],
        width: usize,
        mut f: impl FnMut(usize, f64),
    ) -> bool {
        fn each<T: Copy>(
            v: &[T],
            members: &[(usize, usize)],
            width: usize,
            to: impl Fn(T) -> f64,
            f: &mut impl FnMut(usize, f64),
        ) {
            let row = v.get(..width).unwrap_or_default();
            for &(index, column) in members {
                if let Some(&x) = row.get(index) {
                    f(column, to(x));
                }
            }
        }
        match self {
            Values::Bool(v) => each(v, members, width, |x| f64::from(u8::from(x)), &mut f),
            Values::U8(v) => each(v, members, width, f64::from, &mut f),
            Values::U16(v) => each(v, members, width, f64::from, &mut f),
            Values::U32(v) => each(v, members, width, f64::from, &mut f),
            Values::U64(v) => each(v, members, width, |x| x as f64, &mut f),
            Values::I8(v) => each(v, members, width, f64::from, &mut f),
            Values::I16(v) => each(v, members, width, f64::from, &mut f),
            Values::I32(v) => each(v, members, width, f64::from, &mut f),
            Values::I64(v) => each(v, members, width, |x| x as f64, &mut f),
            Values::F16(v) => each(v, members, width, |x| x.to_f64(), &mut f),
            Values::F32(v) => each(v, members, width, f64::from, &mut f),
            Values::F64(v) => each(v, members, width, |x| x, &mut f),
            Values::Bytes(_) => return false,
        }
        true
    }

    /// Calls `f` with element `index` of each of the first `rows` rows (`width` elements each) as a
    /// number; false, calling nothing, for bytes. One match per column, then a loop the compiler
    /// specialises per element type: this is the monitor's hot loop.
    #[inline]
    pub(crate) fn for_each_number(
        &self,
        index: usize,
        width: usize,
        rows: usize,
        mut f: impl FnMut(f64),
    ) -> bool {
        fn each<T: Copy>(
            v: &[T],
            index: usize,
            width: usize,
            rows: usize,
            to: impl Fn(T) -> f64,
            f: &mut impl FnMut(f64),
        ) {
            // `rows * width <= v.len()` and `index < width` (the caller's bounds), so this visits
            // exactly element `index` of each row.
            for &x in v.iter().skip(index).step_by(width.max(1)).take(rows) {
                f(to(x));
            }
        }
        match self {
            Values::Bool(v) => each(v, index, width, rows, |x| f64::from(u8::from(x)), &mut f),
            Values::U8(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::U16(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::U32(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::U64(v) => each(v, index, width, rows, |x| x as f64, &mut f),
            Values::I8(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::I16(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::I32(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::I64(v) => each(v, index, width, rows, |x| x as f64, &mut f),
            Values::F16(v) => each(v, index, width, rows, |x| x.to_f64(), &mut f),
            Values::F32(v) => each(v, index, width, rows, f64::from, &mut f),
            Values::F64(v) => each(v, index, width, rows, |x| x, &mut f),
            Values::Bytes(_) => return false,
        }
        true
    }
}

/// What [`Values::visit`] hands a tensor's elements to.
pub(crate) trait Visitor {
    /// The elements in their own type; `to` makes one a number.
    fn elements<T: Copy>(&mut self, v: &[T], to: impl Fn(T) -> f64);
}

/// One element, as the monitor reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Element<'a> {
    Number(f64),
    Text(&'a [u8]),
}

impl TensorRows<'_> {
    /// How many of the first `rows` logged rows this tensor holds completely (a row whose elements
    /// are not all there is one whose every value is missing, as in its record).
    pub(crate) fn complete_rows(&self, rows: usize) -> usize {
        // With no element per row, an empty range is always in bounds: the rows are there.
        self.values
            .len()
            .checked_div(self.width)
            .map_or(rows, |complete| rows.min(complete))
    }
}

impl RowBatch<'_> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// One record per logged row, for the sinks that take records (and the record path's tests).
    pub fn records(&self) -> impl Iterator<Item = PredictionRecord> + '_ {
        let row_values = |tensors: &[TensorRows<'_>], at: usize| {
            tensors
                .iter()
                .map(|t| {
                    let range = at * t.width..(at + 1) * t.width;
                    (t.name.to_owned(), t.values.feature_values(range))
                })
                .collect()
        };
        self.rows
            .iter()
            .enumerate()
            .map(move |(at, &row)| PredictionRecord {
                model: self.model.to_owned(),
                version: self.version,
                request_id: self.request_id.to_owned(),
                row,
                timestamp_ms: self.timestamp_ms,
                inputs: row_values(&self.inputs, at),
                outputs: row_values(&self.outputs, at),
            })
    }
}

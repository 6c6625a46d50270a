//! Which value column each monitored tensor element of a prediction goes to, and of which kind.
//!
//! A tensor with one element per row is column `<tensor>`; a wider one is `<tensor>_<i>`, for its
//! first `cap` elements only (`ParquetConfig::max_tensor_columns`): elements past the cap are not
//! written (counted as truncated), so a file has at most `tensors x cap` value columns however wide
//! a row is. Truncation rather than one list column keeps the flat `<tensor>_<i>` columns that
//! pandas users and the drift baselines address element by element. A
//! column's kind (number or category) is the one it had in the model's previous file, so files of
//! one model agree; a new column takes the kind most of its values in the batch have (numbers on a
//! tie), so one bad first value does not turn a numeric column into strings. Names that would
//! collide (with the key columns, or an output named like an input) get `_` appended.

use std::collections::{HashMap, HashSet};

use crate::record::{FeatureValue, PredictionRecord};

/// Inputs and outputs are separate namespaces in a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Input = 0,
    Output = 1,
}

/// A value column's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Number = 0,
    Category = 1,
}

impl Kind {
    fn of(value: &FeatureValue) -> Self {
        match value {
            FeatureValue::Number(_) => Self::Number,
            FeatureValue::Category(_) => Self::Category,
        }
    }
}

/// One tensor's columns: `first .. first + kinds.len()`.
#[derive(Clone, Debug)]
struct Slot {
    side: Side,
    tensor: String,
    first: usize,
    kinds: Vec<Kind>,
}

/// The value columns of one prediction file.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    slots: Vec<Slot>,
    /// Slot of each tensor name, one map per [`Side`].
    index: [HashMap<String, usize>; 2],
    /// Column names and kinds, in file order.
    columns: Vec<(String, Kind)>,
    /// Columns one tensor gets at most; its further elements are dropped.
    cap: usize,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            index: Default::default(),
            columns: Vec::new(),
            cap: usize::MAX,
        }
    }
}

/// Names of the key columns every prediction file starts with.
pub(super) const KEY_COLUMNS: [&str; 5] = ["model", "version", "request_id", "row", "timestamp_ms"];

fn tensors(record: &PredictionRecord) -> impl Iterator<Item = (Side, &String, &Vec<FeatureValue>)> {
    let inputs = record.inputs.iter().map(|(n, v)| (Side::Input, n, v));
    inputs.chain(record.outputs.iter().map(|(n, v)| (Side::Output, n, v)))
}

impl Layout {
    /// A layout for `records`, at most `cap` columns per tensor. With `keep_columns`, it starts
    /// from `previous`'s columns (a file rotated for a new tensor keeps the old ones); either way
    /// `previous` fixes the kinds of the elements it has.
    pub fn covering<'a>(
        previous: Option<&Layout>,
        keep_columns: bool,
        cap: usize,
        records: impl IntoIterator<Item = &'a PredictionRecord>,
    ) -> Self {
        let cap = cap.max(1);
        // Per tensor, per element: votes for [number, category].
        let mut slots: Vec<(Side, String, Vec<[u32; 2]>)> = Vec::new();
        let mut index: HashMap<(Side, String), usize> = HashMap::new();
        if let (Some(previous), true) = (previous, keep_columns) {
            for slot in &previous.slots {
                index.insert((slot.side, slot.tensor.clone()), slots.len());
                slots.push((
                    slot.side,
                    slot.tensor.clone(),
                    vec![[0; 2]; slot.kinds.len().min(cap)],
                ));
            }
        }
        for record in records {
            for (side, tensor, values) in tensors(record) {
                let at = *index.entry((side, tensor.clone())).or_insert_with(|| {
                    slots.push((side, tensor.clone(), Vec::new()));
                    slots.len() - 1
                });
                let votes = &mut slots[at].2;
                let width = values.len().min(cap);
                if votes.len() < width {
                    votes.resize(width, [0; 2]);
                }
                for (vote, value) in votes.iter_mut().zip(values) {
                    vote[Kind::of(value) as usize] += 1;
                }
            }
        }
        let decided = slots
            .into_iter()
            .map(|(side, tensor, votes)| {
                let known = previous
                    .and_then(|p| p.slot(side, &tensor))
                    .map(|slot| slot.kinds.as_slice());
                let kinds = votes
                    .iter()
                    .enumerate()
                    .map(
                        |(i, [numbers, categories])| match known.and_then(|k| k.get(i)) {
                            Some(kind) => *kind,
                            None if categories > numbers => Kind::Category,
                            None => Kind::Number,
                        },
                    )
                    .collect();
                (side, tensor, kinds)
            })
            .collect();
        Self::assign(decided, cap)
    }

    /// Gives every element a column, in tensor order, with collision-free names.
    fn assign(slots: Vec<(Side, String, Vec<Kind>)>, cap: usize) -> Self {
        let mut taken: HashSet<String> =
            KEY_COLUMNS.iter().map(|name| (*name).to_owned()).collect();
        let mut layout = Self {
            cap,
            ..Self::default()
        };
        for (side, tensor, kinds) in slots {
            let first = layout.columns.len();
            let single = kinds.len() == 1;
            for (i, kind) in kinds.iter().enumerate() {
                let mut name = if single {
                    tensor.clone()
                } else {
                    format!("{tensor}_{i}")
                };
                while !taken.insert(name.clone()) {
                    name.push('_');
                }
                layout.columns.push((name, *kind));
            }
            layout.index[side as usize].insert(tensor.clone(), layout.slots.len());
            layout.slots.push(Slot {
                side,
                tensor,
                first,
                kinds,
            });
        }
        layout
    }

    /// Whether every tensor element of `record` up to the cap has a column (missing ones become
    /// nulls).
    pub fn fits(&self, record: &PredictionRecord) -> bool {
        tensors(record).all(|(side, tensor, values)| {
            self.slot(side, tensor)
                .is_some_and(|slot| values.len().min(self.cap) <= slot.kinds.len())
        })
    }

    /// Values of `record` past the per-tensor cap, which no column holds.
    pub fn truncated(&self, record: &PredictionRecord) -> u64 {
        tensors(record)
            .map(|(_, _, values)| values.len().saturating_sub(self.cap) as u64)
            .sum()
    }

    fn slot(&self, side: Side, tensor: &str) -> Option<&Slot> {
        self.index[side as usize]
            .get(tensor)
            .map(|&at| &self.slots[at])
    }

    pub fn columns(&self) -> &[(String, Kind)] {
        &self.columns
    }

    /// The value of each column for `record`, `None` where the record has none.
    pub fn cells<'a>(&self, record: &'a PredictionRecord) -> Vec<Option<&'a FeatureValue>> {
        let mut cells = vec![None; self.columns.len()];
        for (side, tensor, values) in tensors(record) {
            let Some(slot) = self.slot(side, tensor) else {
                continue;
            };
            for (i, value) in values.iter().enumerate().take(slot.kinds.len()) {
                cells[slot.first + i] = Some(value);
            }
        }
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        inputs: Vec<(&str, Vec<FeatureValue>)>,
        outputs: Vec<(&str, Vec<FeatureValue>)>,
    ) -> PredictionRecord {
        let own = |t: Vec<(&str, Vec<FeatureValue>)>| {
            t.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
        };
        PredictionRecord {
            model: "m".into(),
            version: 1,
            request_id: "r".into(),
            row: 0,
            timestamp_ms: 0,
            inputs: own(inputs),
            outputs: own(outputs),
        }
    }

    use FeatureValue::{Category as C, Number as N};

    fn names(layout: &Layout) -> Vec<&str> {
        layout.columns().iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn single_and_wide_tensors_are_named_and_typed_by_their_values() {
        let r = record(
            vec![("x", vec![N(1.0), N(2.0)]), ("city", vec![C("a".into())])],
            vec![
                ("label", vec![C("yes".into())]),
                ("probabilities", vec![N(0.1), N(0.9)]),
            ],
        );
        let layout = Layout::covering(None, false, usize::MAX, [&r]);
        assert_eq!(
            names(&layout),
            [
                "x_0",
                "x_1",
                "city",
                "label",
                "probabilities_0",
                "probabilities_1"
            ]
        );
        let kinds: Vec<Kind> = layout.columns().iter().map(|(_, k)| *k).collect();
        use Kind::{Category as Ca, Number as Nu};
        assert_eq!(kinds, [Nu, Nu, Ca, Ca, Nu, Nu]);
        assert!(layout.fits(&r));
        let cells = layout.cells(&r);
        assert_eq!(cells[2], Some(&C("a".into())));
    }

    #[test]
    fn collisions_get_suffixes_and_sides_are_separate() {
        let r = record(
            vec![("row", vec![N(1.0)]), ("y", vec![N(1.0)])],
            vec![("y", vec![N(2.0)])],
        );
        let layout = Layout::covering(None, false, usize::MAX, [&r]);
        assert_eq!(names(&layout), ["row_", "y", "y_"]);
        let cells = layout.cells(&r);
        assert_eq!(cells, [Some(&N(1.0)), Some(&N(1.0)), Some(&N(2.0))]);
    }

    #[test]
    fn new_or_wider_tensors_do_not_fit_and_widening_keeps_known_kinds() {
        let a = record(vec![("x", vec![C("k".into())])], vec![]);
        let layout = Layout::covering(None, false, usize::MAX, [&a]);
        let wider = record(vec![("x", vec![N(1.0), N(2.0)])], vec![]);
        let other = record(vec![("z", vec![N(1.0)])], vec![]);
        let fewer = record(vec![], vec![]);
        assert!(!layout.fits(&wider));
        assert!(!layout.fits(&other));
        assert!(layout.fits(&fewer));
        let union = Layout::covering(Some(&layout), true, usize::MAX, [&wider, &other]);
        assert_eq!(names(&union), ["x_0", "x_1", "z"]);
        assert_eq!(union.columns()[0].1, Kind::Category);
        assert_eq!(union.columns()[1].1, Kind::Number);
        assert!(union.fits(&a) && union.fits(&wider) && union.fits(&other));
        assert_eq!(union.cells(&fewer), [None, None, None]);
    }

    #[test]
    fn kinds_follow_the_majority_then_stick() {
        let bad = record(vec![("amount", vec![C("n/a".into())])], vec![]);
        let good = |x| record(vec![("amount", vec![N(x)])], vec![]);
        let layout = Layout::covering(None, false, usize::MAX, [&bad, &good(1.0), &good(2.0)]);
        assert_eq!(layout.columns()[0].1, Kind::Number);
        // A later file starting with the bad value keeps the model's number column.
        let next = Layout::covering(Some(&layout), false, usize::MAX, [&bad]);
        assert_eq!(next.columns()[0].1, Kind::Number);
        // Without history a lone category wins; a tie goes to numbers.
        assert_eq!(
            Layout::covering(None, false, usize::MAX, [&bad]).columns()[0].1,
            Kind::Category
        );
        assert_eq!(
            Layout::covering(None, false, usize::MAX, [&bad, &good(1.0)]).columns()[0].1,
            Kind::Number
        );
        // Columns are not kept without `keep_columns`.
        let other = record(vec![("z", vec![N(1.0)])], vec![]);
        assert_eq!(
            names(&Layout::covering(
                Some(&layout),
                false,
                usize::MAX,
                [&other]
            )),
            ["z"]
        );
    }
}

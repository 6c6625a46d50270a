//! Maps a served value to its baseline bin. One [`ColumnBins`] per monitored column, compiled once
//! per model version so the ingest path only does a binary search or a hash lookup.

use std::collections::HashMap;

use crate::baseline::{BaselineColumn, Distribution};
use crate::record::FeatureValue;

/// A column's bins in a fixed order: numeric `0..=edges.len()` then NaN; categorical the
/// categories (sorted by name), then "other", then NaN.
pub(crate) struct ColumnBins {
    pub name: String,
    binner: Binner,
    /// Baseline proportion of each bin.
    pub expected: Vec<f64>,
    /// Prometheus `bin` label of each bin.
    pub labels: Vec<String>,
}

/// How far a number lies outside the baseline's training range: 0 inside it (and for NaN, categories,
/// or a baseline without min/max), negative below the minimum, positive above the maximum (infinite
/// for an infinite value). One `f64`, so the common in-range case is a single comparison with zero.
pub(crate) type Excess = f64;

enum Binner {
    Numeric {
        edges: Vec<f64>,
        /// Training minimum and maximum; -inf and +inf when the baseline has none, so nothing
        /// is out of range.
        min: f64,
        max: f64,
    },
    Categorical {
        by_name: HashMap<String, usize>,
        /// Categories whose name is a number, so a numeric label 1.0 finds category "1".
        by_number: Vec<(f64, usize)>,
        other: usize,
    },
}

impl ColumnBins {
    pub fn new(column: &BaselineColumn) -> ColumnBins {
        let (binner, mut expected, mut labels) = match &column.distribution {
            Distribution::Numeric {
                edges,
                proportions,
                min,
                max,
                ..
            } => (
                Binner::Numeric {
                    edges: edges.clone(),
                    min: min.unwrap_or(f64::NEG_INFINITY),
                    max: max.unwrap_or(f64::INFINITY),
                },
                proportions.clone(),
                (0..proportions.len()).map(|i| i.to_string()).collect(),
            ),
            Distribution::Categorical {
                categories, other, ..
            } => {
                let by_name: HashMap<String, usize> = categories
                    .keys()
                    .enumerate()
                    .map(|(i, name)| (name.clone(), i))
                    .collect();
                let mut by_number: Vec<(f64, usize)> = categories
                    .keys()
                    .enumerate()
                    .filter_map(|(i, name)| {
                        let x = name.trim().parse::<f64>().ok()?;
                        x.is_finite().then_some((x + 0.0, i))
                    })
                    .collect();
                by_number.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut expected: Vec<f64> = categories.values().copied().collect();
                expected.push(*other);
                let mut labels: Vec<String> =
                    categories.keys().map(|k| category_label(k)).collect();
                labels.push("other".into());
                (
                    Binner::Categorical {
                        by_name,
                        by_number,
                        other: categories.len(),
                    },
                    expected,
                    labels,
                )
            }
        };
        let nan = match &column.distribution {
            Distribution::Numeric { nan_proportion, .. }
            | Distribution::Categorical { nan_proportion, .. } => *nan_proportion,
        };
        expected.push(nan);
        labels.push("nan".into());
        ColumnBins {
            name: column.name.clone(),
            binner,
            expected,
            labels,
        }
    }

    /// Number of bins, NaN (and "other") included.
    pub fn len(&self) -> usize {
        self.expected.len()
    }

    /// The bin of a value; `None` for a string in a numeric column that is not a number.
    #[cfg(test)]
    pub fn bin(&self, value: &FeatureValue) -> Option<usize> {
        self.bin_and_excess(value).map(|(bin, _)| bin)
    }

    /// Whether the column is numeric (KS and Wasserstein apply).
    pub fn is_numeric(&self) -> bool {
        matches!(self.binner, Binner::Numeric { .. })
    }

    /// The baseline's training range of a numeric column, when it records one.
    pub fn range(&self) -> Option<(f64, f64)> {
        match self.binner {
            Binner::Numeric { min, max, .. } if min.is_finite() && max.is_finite() => {
                Some((min, max))
            }
            _ => None,
        }
    }

    /// The inner edges of a numeric column (empty for a categorical one).
    pub fn edges(&self) -> &[f64] {
        match &self.binner {
            Binner::Numeric { edges, .. } => edges,
            Binner::Categorical { .. } => &[],
        }
    }

    /// The bin of a value and, for a number, where it lies against the training range (one
    /// comparison, only in the outer bins); `None` for a string in a numeric column that is not
    /// a number.
    #[inline]
    pub fn bin_and_excess(&self, value: &FeatureValue) -> Option<(usize, Excess)> {
        match value {
            FeatureValue::Number(x) => Some(self.bin_number(*x)),
            FeatureValue::Category(s) => self.bin_text(s),
        }
    }

    /// [`ColumnBins::bin_and_excess`] of a number.
    #[inline]
    pub fn bin_number(&self, x: f64) -> (usize, Excess) {
        let nan = self.expected.len() - 1;
        match &self.binner {
            Binner::Numeric { edges, min, max } => {
                numeric_bin_and_excess(edges, *min, *max, nan, x)
            }
            Binner::Categorical { .. } if x.is_nan() => (nan, 0.0),
            Binner::Categorical {
                by_number, other, ..
            } => (number_category(by_number, x).unwrap_or(*other), 0.0),
        }
    }

    /// [`ColumnBins::bin_and_excess`] of a string.
    #[inline]
    pub fn bin_text(&self, s: &str) -> Option<(usize, Excess)> {
        let nan = self.expected.len() - 1;
        match &self.binner {
            Binner::Numeric { edges, min, max } => {
                let x = s.trim().parse::<f64>().ok()?;
                Some(numeric_bin_and_excess(edges, *min, *max, nan, x))
            }
            Binner::Categorical {
                by_name,
                by_number,
                other,
            } => Some((
                match by_name.get(s) {
                    Some(&i) => i,
                    None => s
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(|x| number_category(by_number, x))
                        .unwrap_or(*other),
                },
                0.0,
            )),
        }
    }

    /// A numeric column's edges, training minimum and maximum (infinite when unknown) and NaN
    /// bin, for loops that bin many numbers with them held in registers.
    #[inline]
    pub fn numeric(&self) -> Option<Numeric<'_>> {
        match &self.binner {
            Binner::Numeric { edges, min, max } => Some(Numeric {
                edges,
                min: *min,
                max: *max,
                nan: self.expected.len() - 1,
            }),
            Binner::Categorical { .. } => None,
        }
    }

    /// The column's [`RowBinner`]: `Some` for a numeric column of fewer than [`ROW_EDGES`] finite,
    /// sorted edges.
    pub fn row_binner(&self) -> Option<RowBinner> {
        match &self.binner {
            // Finite and sorted, as a validated baseline's are: the edges below a value are a prefix.
            Binner::Numeric { edges, min, max }
                if edges.len() < ROW_EDGES
                    && edges.iter().all(|e| e.is_finite())
                    && edges.is_sorted() =>
            {
                let mut padded = [f64::INFINITY; ROW_EDGES];
                padded[..edges.len()].copy_from_slice(edges);
                Some(RowBinner {
                    edges: padded,
                    min: *min,
                    max: *max,
                    last: edges.len(),
                    nan: self.expected.len() - 1,
                })
            }
            _ => None,
        }
    }
}

/// A [`RowBinner`]'s edge slots: it takes up to 15 edges (deciles have 9), the rest +inf.
pub(crate) const ROW_EDGES: usize = 16;

/// A numeric column's binning of a single-row request's value, the same bin and excess as
/// [`Numeric::bin_and_excess`]. The edges are padded with +inf to a fixed [`ROW_EDGES`], never below
/// a value, so finding its bin is four compares and adds without a branch, length check or loop,
/// and one struct holds all a value needs: per value, the general path's length checks, remainder
/// loop and lookups through the column cost more than the compares.
#[derive(Clone, Debug)]
pub(crate) struct RowBinner {
    edges: [f64; ROW_EDGES],
    min: f64,
    max: f64,
    /// The number of real edges (the last numeric bin).
    last: usize,
    nan: usize,
}

impl RowBinner {
    #[inline(always)]
    pub fn bin_and_excess(&self, x: f64) -> (usize, Excess) {
        if x.is_nan() {
            return (self.nan, 0.0);
        }
        // A binary search of four steps without a branch (a conditional add each): the edges are
        // sorted, so those below `x` are a prefix; the last slot, +inf, is never read nor needed.
        let e = &self.edges;
        let mut bin = 0;
        for step in [8, 4, 2, 1] {
            bin += usize::from(e[(bin + step - 1) % ROW_EDGES] < x) * step;
        }
        let excess = if bin == 0 && x < self.min {
            x - self.min
        } else if bin == self.last && x > self.max {
            x - self.max
        } else {
            0.0
        };
        (bin, excess)
    }
}

/// What binning a number of a numeric column needs.
#[derive(Clone, Copy)]
pub(crate) struct Numeric<'a> {
    edges: &'a [f64],
    min: f64,
    max: f64,
    nan: usize,
}

impl Numeric<'_> {
    #[inline]
    pub fn bin_and_excess(&self, x: f64) -> (usize, Excess) {
        numeric_bin_and_excess(self.edges, self.min, self.max, self.nan, x)
    }

    /// Whether [`Numeric::tally`] takes this column: at most [`TALLY_EDGES`] edges.
    #[inline]
    pub fn tallies(&self) -> bool {
        self.edges.len() <= TALLY_EDGES
    }

    /// Bins many values at once, the same counts as [`Numeric::bin_and_excess`] value by value: for
    /// each block of [`TALLY_BLOCK`] values, how many lie above each edge (a compare and an add per
    /// value and edge, which vectorise across the block), and bin `i`'s count is the difference of
    /// its two edges' counts. Binning value by value searched the edges for each one. Adds each
    /// bin's count into `counts` (the column's bins; at most [`TALLY_EDGES`] edges, see
    /// [`Numeric::tallies`]), and hands the excess of each value outside the training range (only
    /// those have one) to `excess`, in the values' order.
    pub fn tally(
        &self,
        values: impl Iterator<Item = f64>,
        counts: &mut [u64],
        mut excess: impl FnMut(Excess),
    ) {
        let edges = &self.edges[..self.edges.len().min(TALLY_EDGES)];
        let (min, max) = (self.min, self.max);
        let mut above = [0u64; TALLY_EDGES];
        let (mut total, mut nan) = (0u64, 0u64);
        let mut block = [0f64; TALLY_BLOCK];
        let mut values = values.peekable();
        while values.peek().is_some() {
            let mut n = 0;
            for (slot, x) in block.iter_mut().zip(&mut values) {
                *slot = x;
                n += 1;
            }
            let block = &block[..n];
            total += n as u64;
            for (count, &e) in above.iter_mut().zip(edges) {
                *count += block.iter().map(|&x| u64::from(e < x)).sum::<u64>();
            }
            nan += block.iter().map(|&x| u64::from(x.is_nan())).sum::<u64>();
            let outside = block
                .iter()
                .map(|&x| u64::from(x < min || x > max))
                .sum::<u64>();
            if outside > 0 {
                for &x in block.iter().filter(|&&x| x < min || x > max) {
                    excess(self.bin_and_excess(x).1);
                }
            }
        }
        // NaN is above no edge: it was counted in bin 0's share, and belongs to its own bin.
        let mut below = total - nan;
        for (bin, &count) in above[..edges.len()].iter().enumerate() {
            counts[bin] += below - count;
            below = count;
        }
        counts[edges.len()] += below;
        counts[self.nan] += nan;
    }
}

/// The most edges [`Numeric::tally`] takes (deciles have 9); a column with more bins value by value.
pub(crate) const TALLY_EDGES: usize = 32;
/// Values [`Numeric::tally`] compares with the edges at a time: a block stays in the first-level
/// cache across the edges' passes.
const TALLY_BLOCK: usize = 64;

/// A number's bin and excess. `min <= edges[0]` and `max >= edges[last]` (validated), so a value
/// below `min` is always in bin 0 and one above `max` in the last bin: the range check costs one
/// comparison and only for values in an outer bin.
#[inline]
fn numeric_bin_and_excess(
    edges: &[f64],
    min: f64,
    max: f64,
    nan: usize,
    x: f64,
) -> (usize, Excess) {
    if x.is_nan() {
        return (nan, 0.0);
    }
    let bin = numeric_bin(edges, x);
    let excess = if bin == 0 && x < min {
        x - min
    } else if bin == edges.len() && x > max {
        x - max
    } else {
        0.0
    };
    (bin, excess)
}

/// Bin `i` is `(edges[i-1], edges[i]]`: the number of edges strictly below `x`.
///
/// Counted without branches for the usual handful of edges (deciles: 9): a binary search's
/// branches follow the data and mispredict about half the time, which cost more than the
/// comparisons themselves, and the count vectorises.
#[inline]
fn numeric_bin(edges: &[f64], x: f64) -> usize {
    if edges.len() <= 32 {
        edges.iter().map(|&e| usize::from(e < x)).sum()
    } else {
        edges.partition_point(|&e| e < x)
    }
}

fn number_category(by_number: &[(f64, usize)], x: f64) -> Option<usize> {
    if !x.is_finite() {
        return None;
    }
    let x = x + 0.0; // -0.0 and 0.0 are the same label
    by_number
        .binary_search_by(|(k, _)| k.total_cmp(&x))
        .ok()
        .map(|i| by_number[i].1)
}

/// Keeps a category literally named "other" or "nan" apart from those bins in metric labels.
fn category_label(name: &str) -> String {
    match name {
        "other" | "nan" => format!("\"{name}\""),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
#[path = "bins_tests.rs"]
mod tests;

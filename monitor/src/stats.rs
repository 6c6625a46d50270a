//! Drift statistics and data-quality ratios of one column, computed at evaluation time from the
//! window's bin counts (never per row): Jensen-Shannon distance, a binned two-sample
//! Kolmogorov-Smirnov statistic, a binned Wasserstein-1 distance, and the shares of missing,
//! out-of-range and unseen values. Formulas and error bounds: docs/monitoring.md.

use std::fmt;

use crate::report::ColumnDrift;

/// A per-column statistic a rule can watch (`<name>` for the highest over all monitored columns,
/// `<name>:<column>` for one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnStat {
    /// Jensen-Shannon distance (base 2) over every bin, NaN and "other" included.
    Js,
    /// Binned Kolmogorov-Smirnov statistic over the non-NaN values of a numeric column.
    Ks,
    /// Binned Wasserstein-1 distance over the non-NaN values of a numeric column.
    Wasserstein,
    /// Share of the column's values that are NaN or null.
    MissingRatio,
    /// Share of a numeric column's values below the training minimum or above the maximum.
    OutOfRangeRatio,
    /// Share of a categorical column's values that are none of the baseline's categories.
    UnseenCategoryRatio,
}

impl ColumnStat {
    pub const ALL: [ColumnStat; 6] = [
        ColumnStat::Js,
        ColumnStat::Ks,
        ColumnStat::Wasserstein,
        ColumnStat::MissingRatio,
        ColumnStat::OutOfRangeRatio,
        ColumnStat::UnseenCategoryRatio,
    ];

    /// The rule metric name.
    pub fn name(self) -> &'static str {
        match self {
            ColumnStat::Js => "js",
            ColumnStat::Ks => "ks",
            ColumnStat::Wasserstein => "wasserstein",
            ColumnStat::MissingRatio => "missing_ratio",
            ColumnStat::OutOfRangeRatio => "out_of_range_ratio",
            ColumnStat::UnseenCategoryRatio => "unseen_category_ratio",
        }
    }

    pub fn from_name(name: &str) -> Option<ColumnStat> {
        ColumnStat::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The statistic's value in a column's drift report.
    pub fn of(self, s: &ColumnDrift) -> Option<f64> {
        match self {
            ColumnStat::Js => s.js,
            ColumnStat::Ks => s.ks,
            ColumnStat::Wasserstein => s.wasserstein,
            ColumnStat::MissingRatio => s.missing_ratio,
            ColumnStat::OutOfRangeRatio => s.out_of_range_ratio,
            ColumnStat::UnseenCategoryRatio => s.unseen_category_ratio,
        }
    }
}

impl fmt::Display for ColumnStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every statistic of one column; `None` where it does not apply or is undefined.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ColumnStats {
    pub js: Option<f64>,
    pub ks: Option<f64>,
    pub wasserstein: Option<f64>,
    pub missing_ratio: Option<f64>,
    pub out_of_range_ratio: Option<f64>,
    pub unseen_category_ratio: Option<f64>,
}

/// Served values of a numeric column outside the training range: counts, and the summed finite
/// distances to the range (for the Wasserstein tails).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OutOfRange {
    pub below: u64,
    pub above: u64,
    pub below_distance: f64,
    pub above_distance: f64,
}

/// What the statistics of one column are computed from.
pub struct ColumnInput<'a> {
    /// Window counts of every bin: the numeric bins (or categories then "other"), then NaN.
    pub counts: &'a [u64],
    /// Baseline proportions of the same bins.
    pub expected: &'a [f64],
    /// Numeric columns: the inner edges (categorical: `None`).
    pub edges: Option<&'a [f64]>,
    /// Numeric columns whose baseline has a training range: `(min, max)` and the window's values
    /// outside it.
    pub range: Option<((f64, f64), OutOfRange)>,
}

/// Every statistic of a column; `None` throughout for a column without values in the window.
pub fn column_stats(input: &ColumnInput<'_>) -> ColumnStats {
    let total: u64 = input.counts.iter().sum();
    if total == 0 {
        return ColumnStats::default();
    }
    let n = total as f64;
    let nan = input.counts.len() - 1;
    let ratio = |c: u64| Some(c as f64 / n);
    let mut stats = ColumnStats {
        js: js_distance(input.counts, input.expected),
        missing_ratio: ratio(input.counts[nan]),
        ..ColumnStats::default()
    };
    match input.edges {
        None => {
            // The bin before NaN is "other": values that are none of the baseline categories.
            stats.unseen_category_ratio = nan.checked_sub(1).and_then(|o| ratio(input.counts[o]));
        }
        Some(edges) => {
            let (counts, expected) = (&input.counts[..nan], &input.expected[..nan]);
            let (bounds, out) = match input.range {
                Some((bounds, out)) => (Some(bounds), out),
                None => (None, OutOfRange::default()),
            };
            if bounds.is_some() {
                stats.out_of_range_ratio = ratio(out.below + out.above);
            }
            stats.ks = ks_binned(counts, expected, bounds.is_some(), &out);
            stats.wasserstein =
                bounds.and_then(|b| wasserstein_binned(counts, expected, edges, b, &out));
        }
    }
    stats
}

/// Jensen-Shannon distance with base-2 logarithms, in [0, 1], between the window's bin counts
/// and the baseline proportions, both normalised to sum to 1 (as `scipy.spatial.distance.
/// jensenshannon(p, q, base=2)` does). `None` when either side is empty.
pub fn js_distance(counts: &[u64], expected: &[f64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    let expected_total: f64 = expected.iter().sum();
    if total == 0 || expected_total <= 0.0 {
        return None;
    }
    let total = total as f64;
    // x * ln(x / m) = x * ln(1 + (x - m) / m), 0 for x = 0 (scipy's rel_entr). Written with
    // ln_1p of the exact half-difference so proportions equal but for rounding give ~0 rather
    // than a divergence of 1e-16 that the square root would turn into 1e-8.
    let rel = |x: f64, m: f64, half_diff: f64| {
        if x > 0.0 {
            x * (half_diff / m).ln_1p()
        } else {
            0.0
        }
    };
    let (mut left, mut right) = (0.0, 0.0);
    for (&c, &e) in counts.iter().zip(expected) {
        let p = e / expected_total;
        let q = c as f64 / total;
        let m = (p + q) / 2.0;
        left += rel(p, m, (p - q) / 2.0);
        right += rel(q, m, (q - p) / 2.0);
    }
    let divergence = (left + right) / 2.0 / std::f64::consts::LN_2;
    Some(divergence.max(0.0).sqrt())
}

/// The largest |CDF difference| over the bin edges, both CDFs over non-NaN values: the inner
/// edges, plus, when the baseline has a training range, just below its minimum (where the
/// baseline CDF is 0 and the window's is the share below it) and at its maximum (where the
/// baseline's is 1 and the window's 1 minus the share above it). `counts`/`expected` are the
/// numeric bins without NaN.
fn ks_binned(counts: &[u64], expected: &[f64], ranged: bool, out: &OutOfRange) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    let expected_total: f64 = expected.iter().sum();
    if n == 0 || expected_total <= 0.0 {
        return None;
    }
    let nf = n as f64;
    let mut d: f64 = 0.0;
    if ranged {
        d = d.max(out.below as f64 / nf).max(out.above as f64 / nf);
    }
    let (mut current, mut baseline) = (0u64, 0.0);
    // The CDFs at each inner edge: the bins up to it.
    for (&c, &e) in counts.iter().zip(expected).take(counts.len() - 1) {
        current += c;
        baseline += e;
        d = d.max((current as f64 / nf - baseline / expected_total).abs());
    }
    Some(d)
}

/// Wasserstein-1 distance `integral |F_current - F_baseline| dx` over non-NaN values, from the
/// bins: inside the training range `[min, max]` each bin (the first `[min, e1]`, the last
/// `[e_last, max]`) has both CDFs linear (values spread evenly within it); below `min` and above
/// `max` the integral is exact, the window's summed finite distances to the range over its
/// values.
fn wasserstein_binned(
    counts: &[u64],
    expected: &[f64],
    edges: &[f64],
    (min, max): (f64, f64),
    out: &OutOfRange,
) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    let expected_total: f64 = expected.iter().sum();
    if n == 0 || expected_total <= 0.0 {
        return None;
    }
    let nf = n as f64;
    let last = counts.len() - 1;
    let mut current = out.below as f64 / nf;
    let mut baseline = 0.0;
    let mut area = (out.below_distance + out.above_distance) / nf;
    for (j, (&c, &e)) in counts.iter().zip(expected).enumerate() {
        let lo = if j == 0 { min } else { edges[j - 1] };
        let hi = if j == last { max } else { edges[j] };
        // The window's values of this bin inside the range.
        let mut inside = c;
        if j == 0 {
            inside = inside.saturating_sub(out.below);
        }
        if j == last {
            inside = inside.saturating_sub(out.above);
        }
        let d0 = current - baseline;
        current += inside as f64 / nf;
        baseline += e / expected_total;
        let d1 = current - baseline;
        area += (hi - lo) * abs_linear_mean(d0, d1);
    }
    Some(area)
}

/// The mean of |d| over a bin where d runs linearly from `d0` to `d1`.
fn abs_linear_mean(d0: f64, d1: f64) -> f64 {
    if d0 * d1 >= 0.0 {
        (d0.abs() + d1.abs()) / 2.0
    } else {
        (d0 * d0 + d1 * d1) / (2.0 * (d0.abs() + d1.abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_is_zero_for_identical_and_one_for_disjoint() {
        assert_eq!(js_distance(&[2, 2, 0], &[0.5, 0.5, 0.0]), Some(0.0));
        let d = js_distance(&[4, 0], &[0.0, 1.0]).unwrap();
        assert!((d - 1.0).abs() < 1e-12, "{d}");
        assert_eq!(js_distance(&[0, 0], &[0.5, 0.5]), None);
    }

    #[test]
    fn ks_and_wasserstein_of_a_shift() {
        // Baseline uniform on [0, 4] in four bins; the window has everything in [3, 4].
        let counts = [0, 0, 0, 10, 0];
        let expected = [0.25, 0.25, 0.25, 0.25, 0.0];
        let stats = column_stats(&ColumnInput {
            counts: &counts,
            expected: &expected,
            edges: Some(&[1.0, 2.0, 3.0]),
            range: Some(((0.0, 4.0), OutOfRange::default())),
        });
        assert_eq!(stats.ks, Some(0.75));
        // Uniform on [0, 4] against uniform on [3, 4]: mean 2 vs 3.5, W1 = 1.5.
        assert!((stats.wasserstein.unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(stats.missing_ratio, Some(0.0));
        assert_eq!(stats.out_of_range_ratio, Some(0.0));
        assert_eq!(stats.unseen_category_ratio, None);
    }

    #[test]
    fn out_of_range_tails_are_exact() {
        // One bin [0, 1]; half the window at 3 (2 above the max), half uniform inside.
        let out = OutOfRange {
            above: 5,
            above_distance: 10.0,
            ..OutOfRange::default()
        };
        let stats = column_stats(&ColumnInput {
            counts: &[10, 0],
            expected: &[1.0, 0.0],
            edges: Some(&[]),
            range: Some(((0.0, 1.0), out)),
        });
        assert_eq!(stats.out_of_range_ratio, Some(0.5));
        assert_eq!(stats.ks, Some(0.5));
        // Inside: F_b = x, F_c = x / 2: integral x / 2 = 0.25; above: 10 / 10 = 1.
        assert!((stats.wasserstein.unwrap() - 1.25).abs() < 1e-12);
    }

    #[test]
    fn categorical_has_unseen_ratio_only() {
        let stats = column_stats(&ColumnInput {
            counts: &[6, 3, 1],
            expected: &[0.9, 0.1, 0.0],
            edges: None,
            range: None,
        });
        assert_eq!(stats.unseen_category_ratio, Some(0.3));
        assert_eq!(stats.missing_ratio, Some(0.1));
        assert_eq!((stats.ks, stats.wasserstein), (None, None));
        assert!(stats.js.unwrap() > 0.0);
    }
}

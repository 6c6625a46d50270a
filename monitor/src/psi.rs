//! Population stability index: `sum over bins of (a - e) * ln(a / e)`, `a` the current and `e`
//! the baseline proportion of a bin (a symmetric Kullback-Leibler divergence). Called PSI on
//! outputs and CSI (characteristic stability index) on input features; the formula is the same.

/// Both proportions are floored here before the formula: a bin empty on either side would
/// otherwise give `ln(0)`, an infinite index from a single unlucky bin. Evidently floors empty
/// bins at the same 1e-4, so values are comparable with its reports for the same bins.
pub const PROPORTION_FLOOR: f64 = 1e-4;

/// PSI of two aligned proportion vectors (NaN and "other" bins included as ordinary bins).
pub fn psi(actual: &[f64], expected: &[f64]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| {
            let (a, e) = (a.max(PROPORTION_FLOOR), e.max(PROPORTION_FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// PSI of the current window's bin counts against baseline proportions; `None` for no rows.
pub fn psi_of_counts(counts: &[u64], expected: &[f64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let total = total as f64;
    Some(
        counts
            .iter()
            .zip(expected)
            .map(|(&c, &e)| {
                let (a, e) = (
                    (c as f64 / total).max(PROPORTION_FLOOR),
                    e.max(PROPORTION_FLOOR),
                );
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_zero_and_shift_is_positive() {
        let e = [0.25, 0.25, 0.25, 0.25];
        assert_eq!(psi(&e, &e), 0.0);
        assert_eq!(psi_of_counts(&[5, 5, 5, 5], &e), Some(0.0));
        assert!(psi(&[0.4, 0.3, 0.2, 0.1], &e) > 0.0);
        assert_eq!(psi_of_counts(&[0, 0, 0, 0], &e), None);
    }

    #[test]
    fn empty_bins_are_floored_not_infinite() {
        let value = psi(&[0.5, 0.5, 0.0], &[0.5, 0.0, 0.5]);
        assert!(value.is_finite());
        let expected = 2.0 * (0.5 - 1e-4) * (0.5f64 / 1e-4).ln();
        assert!((value - expected).abs() < 1e-12, "{value} vs {expected}");
    }
}

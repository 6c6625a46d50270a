use std::collections::BTreeMap;

use super::*;

fn numeric() -> ColumnBins {
    ColumnBins::new(&BaselineColumn {
        name: "x".into(),
        tensor: "input".into(),
        index: 0,
        distribution: Distribution::Numeric {
            edges: vec![1.0, 2.0, 3.0],
            proportions: vec![0.25; 4],
            nan_proportion: 0.0,
            min: Some(0.5),
            max: Some(3.5),
        },
    })
}

#[test]
fn numeric_bins_are_left_open_right_closed() {
    let c = numeric();
    let bin = |x: f64| c.bin(&FeatureValue::Number(x)).unwrap();
    assert_eq!(bin(-1e300), 0);
    assert_eq!(bin(1.0), 0);
    assert_eq!(bin(1.5), 1);
    assert_eq!(bin(2.0), 1);
    assert_eq!(bin(3.0), 2);
    assert_eq!(bin(3.1), 3);
    assert_eq!(bin(f64::INFINITY), 3);
    assert_eq!(bin(f64::NAN), 4);
    assert_eq!(c.bin(&FeatureValue::Category("2.5".into())), Some(2));
    assert_eq!(c.bin(&FeatureValue::Category("abc".into())), None);
    assert_eq!(c.labels, ["0", "1", "2", "3", "nan"]);
    let range = |x: f64| c.bin_and_excess(&FeatureValue::Number(x)).unwrap().1;
    assert_eq!(range(0.5), 0.0);
    assert_eq!(range(0.25), -0.25);
    assert_eq!(range(3.5), 0.0);
    assert_eq!(range(4.0), 0.5);
    assert_eq!(range(f64::NAN), 0.0);
    assert_eq!(range(f64::INFINITY), f64::INFINITY);
}

/// A numeric column of `edges`, equal proportions, and `range` as its training minimum and maximum.
fn numeric_with(edges: Vec<f64>, range: Option<(f64, f64)>) -> ColumnBins {
    let n = edges.len();
    ColumnBins::new(&BaselineColumn {
        name: "x".into(),
        tensor: "input".into(),
        index: 0,
        distribution: Distribution::Numeric {
            proportions: vec![1.0 / (n + 1) as f64; n + 1],
            edges,
            nan_proportion: 0.0,
            min: range.map(|r| r.0),
            max: range.map(|r| r.1),
        },
    })
}

/// `n` sorted random edges, the second a repeat of the first, with the lowest and the highest.
fn random_edges(rng: &mut fastrand::Rng, n: usize) -> (Vec<f64>, f64, f64) {
    let mut edges: Vec<f64> = (0..n).map(|_| rng.f64() * 10.0 - 5.0).collect();
    edges.sort_by(f64::total_cmp);
    if n > 2 {
        edges[1] = edges[0];
    }
    let lo = edges.first().copied().unwrap_or(0.0);
    let hi = edges.last().copied().unwrap_or(0.0);
    (edges, lo, hi)
}

/// Values that probe a column of `edges` (a range one beyond them, see the tests): NaN, the
/// infinities, -0.0, the range's bounds and beyond, the largest finite numbers, the edges
/// themselves and `random` more.
fn probing_values(rng: &mut fastrand::Rng, edges: &[f64], random: usize) -> Vec<f64> {
    let lo = edges.first().copied().unwrap_or(0.0);
    let hi = edges.last().copied().unwrap_or(0.0);
    let mut values = vec![
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        lo - 1.0,
        lo - 1.5,
        hi + 1.0,
        hi + 1.5,
        f64::MAX,
        -f64::MAX,
    ];
    values.extend(edges.iter().copied());
    values.extend((0..random).map(|_| rng.f64() * 16.0 - 8.0));
    values
}

/// The single-row binner puts every value where the general path does, for any number of edges
/// it takes, with and without a training range, odd values included.
#[test]
fn row_binner_bins_as_the_general_path() {
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..=ROW_EDGES + 1 {
        for ranged in [false, true] {
            let (edges, lo, hi) = random_edges(&mut rng, n);
            let range = ranged.then_some((lo - 1.0, hi + 1.0));
            let column = numeric_with(edges.clone(), range);
            let Some(row) = column.row_binner() else {
                assert!(n >= ROW_EDGES, "{n} edges");
                continue;
            };
            if n > 1 {
                let mut unsorted = edges.clone();
                unsorted.reverse();
                unsorted[0] += 1.0;
                let unsorted = numeric_with(unsorted, None);
                assert!(unsorted.row_binner().is_none(), "unsorted, {n} edges");
            }
            let general = column.numeric().unwrap();
            let values = probing_values(&mut rng, &edges, 200);
            for x in values {
                let (a, b) = (row.bin_and_excess(x), general.bin_and_excess(x));
                assert_eq!(a.0, b.0, "bin of {x} with {n} edges");
                assert_eq!(a.1.to_bits(), b.1.to_bits(), "excess of {x} with {n} edges");
            }
        }
    }
}

/// A block tally counts every bin as binning value by value does and hands over the same
/// excesses in the same order, for any number of edges it takes, across block boundaries, with
/// and without a training range, odd values included.
#[test]
fn tally_counts_as_value_by_value() {
    let mut rng = fastrand::Rng::with_seed(11);
    for n in 0..=TALLY_EDGES + 1 {
        for ranged in [false, true] {
            let (edges, lo, hi) = random_edges(&mut rng, n);
            let column = numeric_with(edges.clone(), ranged.then_some((lo - 1.0, hi + 1.0)));
            let numeric = column.numeric().unwrap();
            if !numeric.tallies() {
                assert!(n > TALLY_EDGES, "{n} edges");
                continue;
            }
            let mut values = probing_values(&mut rng, &edges, 300);
            rng.shuffle(&mut values);
            for len in [
                0,
                1,
                TALLY_BLOCK - 1,
                TALLY_BLOCK,
                TALLY_BLOCK + 1,
                values.len(),
            ] {
                let values = &values[..len];
                let mut want = vec![0u64; column.len()];
                let mut want_excess = Vec::new();
                for &x in values {
                    let (bin, excess) = numeric.bin_and_excess(x);
                    want[bin] += 1;
                    if excess != 0.0 {
                        want_excess.push(excess.to_bits());
                    }
                }
                let mut got = vec![0u64; column.len()];
                let mut got_excess = Vec::new();
                numeric.tally(values.iter().copied(), &mut got, |excess| {
                    if excess != 0.0 {
                        got_excess.push(excess.to_bits());
                    }
                });
                assert_eq!(got, want, "{len} values, {n} edges, range {ranged}");
                assert_eq!(
                    got_excess, want_excess,
                    "{len} values, {n} edges, range {ranged}"
                );
            }
        }
    }
}

#[test]
fn categories_match_by_name_or_number() {
    let c = ColumnBins::new(&BaselineColumn {
        name: "label".into(),
        tensor: "label".into(),
        index: 0,
        distribution: Distribution::Categorical {
            categories: BTreeMap::from([
                ("0".into(), 0.4),
                ("1".into(), 0.4),
                ("other".into(), 0.2),
            ]),
            other: 0.0,
            nan_proportion: 0.0,
        },
    });
    let bin = |v: FeatureValue| c.bin(&v).unwrap();
    assert_eq!(bin(FeatureValue::Number(1.0)), 1);
    assert_eq!(bin(FeatureValue::Number(-0.0)), 0);
    assert_eq!(bin(FeatureValue::Category("1".into())), 1);
    assert_eq!(bin(FeatureValue::Category("1.0".into())), 1);
    assert_eq!(bin(FeatureValue::Number(7.0)), 3);
    assert_eq!(bin(FeatureValue::Category("zebra".into())), 3);
    assert_eq!(bin(FeatureValue::Number(f64::NAN)), 4);
    assert_eq!(c.labels, ["0", "1", "\"other\"", "other", "nan"]);
}

"""Independent numpy/scipy computation of the drift statistics and data-quality ratios for the
drift core's tests (monitor/tests/stats_reference.rs).

Writes monitor/tests/fixtures/stats_reference.json: training and current values of five columns
with known answers (10% NaN in "missing", 20% above the training maximum in "above", a mean shift
in "shift", 15% unseen categories in "colour", the identical distribution in "same"), and per column
the expected

- missing, out-of-range and unseen-category ratios (exact: 0.10, 0.20, 0.15 by construction);
- Jensen-Shannon distance: scipy.spatial.distance.jensenshannon(base=2) on the bin proportions,
  NaN and "other" bins included;
- binned KS and Wasserstein-1 over the non-NaN values, computed here in numpy on the same bins
  (np.quantile edges, bins (e[i-1], e[i]] via searchsorted side="left", training min/max as the
  outer bounds);
- the exact statistics on the raw non-NaN values (scipy.stats.ks_2samp, wasserstein_distance)
  and the error bounds of docs/monitoring.md, asserted here and again by the Rust test.

Values are rounded to 3 decimals (ties exercise the right-closed bins; the fixture stays small).
Run from the repository root:

    .venv/bin/python monitor/tests/stats_reference.py
"""

import json
import math
import pathlib

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, wasserstein_distance

OUT = pathlib.Path(__file__).parent / "fixtures" / "stats_reference.json"
BINS = 10
N_TRAIN = 1000
N_CURRENT = 1000


def edges_of(train):
    finite = train[~np.isnan(train)]
    return np.unique(np.quantile(finite, np.arange(1, BINS) / BINS))


def numeric_expected(train, current):
    edges = edges_of(train)
    lo, hi = float(np.min(train[np.isfinite(train)])), float(np.max(train[np.isfinite(train)]))
    t_ok, c_ok = train[~np.isnan(train)], current[~np.isnan(current)]
    t_counts = np.bincount(np.searchsorted(edges, t_ok, side="left"), minlength=len(edges) + 1)
    c_counts = np.bincount(np.searchsorted(edges, c_ok, side="left"), minlength=len(edges) + 1)
    t_nan, c_nan = np.isnan(train).sum(), np.isnan(current).sum()

    # JS over every bin, NaN included; scipy normalises both vectors.
    js = float(jensenshannon(np.append(t_counts, t_nan) / len(train),
                             np.append(c_counts, c_nan) / len(current), base=2))

    below, above = c_ok < lo, c_ok > hi
    n = len(c_ok)
    b = t_counts / t_counts.sum()  # baseline bin masses over non-NaN values
    c_in = c_counts.astype(np.float64)
    c_in[0] -= below.sum()
    c_in[-1] -= above.sum()
    c = c_in / n  # the window's in-range bin masses

    # KS at the inner edges (both ECDFs exactly), just below min and at max.
    f_t = np.cumsum(t_counts)[:-1] / t_counts.sum()
    f_c = np.cumsum(c_counts)[:-1] / n
    ks = float(max(np.max(np.abs(f_c - f_t), initial=0.0), below.sum() / n, above.sum() / n))

    # W1: CDFs linear within [min, e1], ..., [e_k, max]; |difference| integrated on a grid refined
    # at its zero crossings (trapezoids are exact there), exact tails outside [min, max].
    knots = np.concatenate([[lo], edges, [hi]])
    cdf_t = np.concatenate([[0.0], np.cumsum(b)])
    cdf_c = np.concatenate([[below.sum() / n], below.sum() / n + np.cumsum(c)])
    d = cdf_c - cdf_t
    xs, ds = [knots[0]], [d[0]]
    for i in range(len(knots) - 1):
        if d[i] * d[i + 1] < 0:
            t = d[i] / (d[i] - d[i + 1])
            xs.append(knots[i] + t * (knots[i + 1] - knots[i]))
            ds.append(0.0)
        xs.append(knots[i + 1])
        ds.append(d[i + 1])
    w1 = float(np.trapezoid(np.abs(ds), xs))
    w1 += float(np.sum(lo - c_ok[below]) + np.sum(c_ok[above] - hi)) / n

    ks_exact = float(ks_2samp(t_ok, c_ok).statistic)
    w1_exact = float(wasserstein_distance(t_ok, c_ok))
    widths = np.diff(knots)
    ks_bound = float(np.max(np.minimum(b, c)))
    w1_bound = float(np.sum(widths * (3 * np.maximum(b, c) + np.minimum(b, c)) / 4))
    assert ks - 1e-12 <= ks_exact <= ks + ks_bound + 1e-12, (ks, ks_exact, ks_bound)
    assert abs(w1_exact - w1) <= w1_bound + 1e-12, (w1, w1_exact, w1_bound)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "min": lo,
        "max": hi,
        "missing_ratio": float(c_nan / len(current)),
        "out_of_range_ratio": float((below.sum() + above.sum()) / len(current)),
        "unseen_category_ratio": None,
        "js": js,
        "ks": ks,
        "wasserstein": w1,
        "ks_exact": ks_exact,
        "ks_bound": ks_bound,
        "wasserstein_exact": w1_exact,
        "wasserstein_bound": w1_bound,
    }


def categorical_expected(train, current):
    cats = sorted({v for v in train if v is not None})

    def props(values):
        n = len(values)
        known = [sum(v == k for v in values) / n for k in cats]
        other = sum(v is not None and v not in cats for v in values) / n
        nan = sum(v is None for v in values) / n
        return known + [other, nan]

    cur = props(current)
    return {
        "kind": "categorical",
        "missing_ratio": cur[-1],
        "out_of_range_ratio": None,
        "unseen_category_ratio": cur[-2],
        "js": float(jensenshannon(props(train), cur, base=2)),
        "ks": None,
        "wasserstein": None,
    }


def nullify(values):
    return [None if math.isnan(v) else float(v) for v in values]


def main():
    rng = np.random.default_rng(20261201)
    r3 = lambda x: np.round(x, 3)  # noqa: E731

    columns = {}
    # 10% NaN exactly, otherwise the training distribution.
    train = r3(rng.normal(5.0, 2.0, N_TRAIN))
    current = r3(rng.normal(5.0, 2.0, N_CURRENT))
    current[rng.permutation(N_CURRENT)[: N_CURRENT // 10]] = np.nan
    columns["missing"] = (train, current)

    # 20% exactly above the training maximum, the rest inside the training range.
    train = r3(rng.uniform(0.0, 10.0, N_TRAIN))
    lo, hi = train.min(), train.max()
    current = r3(rng.uniform(lo, hi, N_CURRENT))
    current = np.clip(current, lo, hi)
    current[rng.permutation(N_CURRENT)[: N_CURRENT // 5]] = r3(hi + rng.uniform(0.5, 5.0, N_CURRENT // 5))
    columns["above"] = (train, current)

    # A mean shift of 0.8 standard deviations (some values fall below/above the training range).
    train = r3(rng.normal(0.0, 1.0, N_TRAIN))
    current = r3(rng.normal(0.8, 1.0, N_CURRENT))
    columns["shift"] = (train, current)

    # Identical values: every statistic 0.
    same = r3(rng.lognormal(0.0, 0.5, N_TRAIN))
    columns["same"] = (same, same.copy())

    cases = []
    for name, (train, current) in columns.items():
        case = {"name": name, "train": nullify(train), "current": nullify(current)}
        case.update(numeric_expected(train, current))
        cases.append(case)

    colours = ["red", "green", "blue"]
    train = rng.choice(colours, N_TRAIN, p=[0.5, 0.3, 0.2]).tolist()
    current = rng.choice(colours, N_CURRENT, p=[0.4, 0.4, 0.2]).tolist()
    for i in rng.permutation(N_CURRENT)[: N_CURRENT * 15 // 100]:
        current[i] = "purple"
    case = {"name": "colour", "train": train, "current": current}
    case.update(categorical_expected(train, current))
    cases.append(case)

    by_name = {c["name"]: c for c in cases}
    assert by_name["missing"]["missing_ratio"] == 0.1
    assert by_name["above"]["out_of_range_ratio"] == 0.2
    assert by_name["colour"]["unseen_category_ratio"] == 0.15
    assert by_name["same"]["js"] == 0.0 and by_name["same"]["ks"] == 0.0
    assert by_name["same"]["wasserstein"] == 0.0

    OUT.parent.mkdir(exist_ok=True)
    doc = {
        "generator": "monitor/tests/stats_reference.py (numpy %s)" % np.__version__,
        "bins": BINS,
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc) + "\n")
    for c in cases:
        print(f"{c['name']}: js {c['js']:.6f} ks {c['ks']} (exact {c.get('ks_exact')}, bound "
              f"+{c.get('ks_bound')}) w1 {c['wasserstein']} (exact {c.get('wasserstein_exact')}, "
              f"bound {c.get('wasserstein_bound')}) missing {c['missing_ratio']} out "
              f"{c['out_of_range_ratio']} unseen {c['unseen_category_ratio']}")


if __name__ == "__main__":
    main()

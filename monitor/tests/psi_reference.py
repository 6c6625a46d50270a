"""Independent numpy computation of baselines and PSI for the drift core's tests.

Writes monitor/tests/fixtures/psi_reference.json: for each case the baseline and current values,
the expected baseline (np.quantile edges, deduplicated, bins (e[i-1], e[i]] via searchsorted
side="left"; NaN its own bin; unknown categories "other") and the expected PSI, with both
proportions floored at 1e-4. Run from the repository root:

    .venv/bin/python monitor/tests/psi_reference.py
"""

import json
import math
import pathlib

import numpy as np

FLOOR = 1e-4
OUT = pathlib.Path(__file__).parent / "fixtures" / "psi_reference.json"


def psi(actual, expected):
    a = np.maximum(np.asarray(actual, dtype=np.float64), FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_props(values, edges):
    """Proportions of the numeric bins and of NaN, over all values."""
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    bins = np.searchsorted(edges, x[~nan], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return counts / len(x), nan.sum() / len(x)


def numeric_case(name, baseline, current, bins):
    x = np.asarray(baseline, dtype=np.float64)
    finite = x[~np.isnan(x)]
    edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins))
    props, nan = numeric_props(baseline, edges)
    cur, cur_nan = numeric_props(current, edges)
    return {
        "name": name,
        "kind": "numeric",
        "bins": bins,
        "baseline": nullify(baseline),
        "current": nullify(current),
        "edges": edges.tolist(),
        "proportions": props.tolist(),
        "nan_proportion": float(nan),
        "psi": psi(np.append(cur, cur_nan), np.append(props, nan)),
    }


def categorical_props(values, categories):
    """Proportions of each known category, of "other" and of NaN (None)."""
    n = len(values)
    known = [sum(v == c for v in values) / n for c in categories]
    nan = sum(v is None for v in values) / n
    other = sum(v is not None and v not in categories for v in values) / n
    return known, other, nan


def categorical_case(name, baseline, current):
    categories = sorted({v for v in baseline if v is not None})
    known, other, nan = categorical_props(baseline, categories)
    cur_known, cur_other, cur_nan = categorical_props(current, categories)
    return {
        "name": name,
        "kind": "categorical",
        "bins": 10,
        "baseline": baseline,
        "current": current,
        "categories": dict(zip(categories, known)),
        "other": other,
        "nan_proportion": nan,
        "psi": psi(cur_known + [cur_other, cur_nan], known + [other, nan]),
    }


def nullify(values):
    return [None if math.isnan(v) else float(v) for v in values]


def with_nans(rng, values, fraction):
    values = np.array(values, dtype=np.float64)
    values[rng.random(len(values)) < fraction] = np.nan
    return values


def main():
    rng = np.random.default_rng(20240611)
    cases = []

    base = rng.normal(0.0, 1.0, 2000)
    cases.append(numeric_case(
        "numeric_shift_with_nan",
        with_nans(rng, base, 0.02),
        with_nans(rng, rng.normal(0.4, 1.3, 1500), 0.05),
        10,
    ))

    # 45% zeros, 10% tens, 45% twenties: deciles collapse to edges {0, 10, 20}, so the bin above
    # 20 is empty in the baseline; the current window puts rows there (and between 0 and 10).
    discrete = np.repeat([0.0, 10.0, 20.0], [450, 100, 450])
    rng.shuffle(discrete)
    current = rng.choice([0.0, 5.0, 10.0, 20.0, 25.0], 800, p=[0.3, 0.1, 0.1, 0.3, 0.2])
    case = numeric_case("numeric_empty_baseline_bin", discrete, current, 10)
    assert 0.0 in case["proportions"], case["proportions"]
    cases.append(case)

    labels = ["a", "b", "c", None]
    cases.append(categorical_case(
        "categorical_with_nan_and_unknown",
        rng.choice(labels, 1200, p=[0.5, 0.3, 0.15, 0.05]).tolist(),
        rng.choice(labels + ["d"], 900, p=[0.3, 0.3, 0.2, 0.1, 0.1]).tolist(),
    ))

    same = rng.lognormal(0.0, 0.7, 1000)
    case = numeric_case("identical", same, same, 10)
    assert case["psi"] == 0.0
    cases.append(case)

    cases.append(numeric_case(
        "five_bins_out_of_range",
        rng.uniform(-1.0, 1.0, 1000),
        rng.uniform(-3.0, 3.0, 1000),
        5,
    ))

    OUT.parent.mkdir(exist_ok=True)
    doc = {
        "generator": "monitor/tests/psi_reference.py (numpy %s)" % np.__version__,
        "floor": FLOOR,
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc) + "\n")
    for c in cases:
        print(f"{c['name']}: psi {c['psi']:.6f}")


if __name__ == "__main__":
    main()

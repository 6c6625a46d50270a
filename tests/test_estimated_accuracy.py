"""Accuracy estimated without labels (CBPE): `keel baseline --label-column` fits the isotonic
calibration map of the breast-cancer model's probabilities[1], `keel serve` exports
keel_model_estimated_accuracy next to keel_model_accuracy, and an estimated_accuracy rule fires a
webhook whose data says why (drift statistics, estimated and measured performance)."""

import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.isotonic import IsotonicRegression

from conftest import KEEL_BIN, ROOT, Keel, reference
from test_monitoring import SECRET, Receiver, metric, wait_for

MODEL = ROOT / "models/breast-cancer/1/model.onnx"
MONITOR_TOML = """
[monitor]
task = "classifier"
prediction_output = "label"
positive_label = 1
min_samples = 500

[[monitor.rules]]
metric = "estimated_accuracy"
fire = 0.995
clear = 0.999
consecutive = 1
"""


@pytest.fixture(scope="module")
def data():
    x = np.load(ROOT / "tests/data/breast_cancer.npy")
    y = np.load(ROOT / "tests/data/breast_cancer_labels.npy")
    return x, y


@pytest.fixture(scope="module")
def repo(tmp_path_factory, data):
    """A repository with breast-cancer v1 and a baseline computed with --label-column."""
    x, y = data
    tmp = tmp_path_factory.mktemp("estimate")
    train = pd.read_csv(ROOT / "tests/data/breast_cancer_train.csv")
    train.insert(3, "diagnosis", y)  # anywhere: the label column is taken out by name
    train.to_csv(tmp / "train.csv", index=False)
    repo = tmp / "repo"
    shutil.copytree(ROOT / "models/breast-cancer/1", repo / "breast-cancer/1")
    (repo / "breast-cancer/1/baseline.json").unlink()
    (repo / "breast-cancer/model.toml").write_text(MONITOR_TOML)
    done = subprocess.run([KEEL_BIN, "baseline", "--model-repository", str(repo), "--model", "breast-cancer",
                           "--version", "1", "--data", str(tmp / "train.csv"), "--label-column", "diagnosis"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return repo


def test_label_column_fits_sklearns_isotonic_map(repo, data):
    x, y = data
    baseline = json.loads((repo / "breast-cancer/1/baseline.json").read_text())
    shipped = json.loads((ROOT / "models/breast-cancer/1/baseline.json").read_text())
    # The label is not a feature: the features are the shipped baseline's.
    assert [f["name"] for f in baseline["features"]] == [f["name"] for f in shipped["features"]]
    cal = baseline["calibration"]
    assert (cal["method"], cal["tensor"], cal["index"], cal["threshold"], cal["rows"]) == \
        ("isotonic", "probabilities", 1, 0.5, len(y))
    p = reference(MODEL, {"input": x})["probabilities"][:, 1].astype(np.float64)
    assert abs(cal["reference_accuracy"] - ((p >= 0.5) == y).mean()) < 1e-12
    iso = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    grid = np.concatenate([p, np.linspace(-0.1, 1.1, 2001)])
    ours = np.interp(grid, cal["scores"], cal["calibrated"])
    np.testing.assert_allclose(ours, iso.predict(grid), rtol=0, atol=1e-9)


def test_served_rows_show_estimated_next_to_measured_accuracy(repo, data, tmp_path):
    x, y = data
    cal = json.loads((repo / "breast-cancer/1/baseline.json").read_text())["calibration"]
    receiver = Receiver()
    os.environ["KEEL_WEBHOOK_SECRET"] = SECRET
    try:
        keel = Keel(repo, "--monitor-window", "120", "--monitor-evaluate-every", "0.3",
                    "--webhook-url", receiver.url, "--state-dir", str(tmp_path / "state"))
    finally:
        os.environ.pop("KEEL_WEBHOOK_SECRET", None)
    try:
        served = []
        for start in range(0, len(x), 50):
            rows = x[start:start + 50]
            body = {"id": f"est-{start}", "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                                     "data": rows.flatten().tolist()}]}
            reply = requests.post(f"http://{keel.http}/v2/models/breast-cancer/versions/1/infer", json=body,
                                  timeout=30).json()
            probabilities = next(o for o in reply["outputs"] if o["name"] == "probabilities")
            served.extend(np.asarray(probabilities["data"]).reshape(-1, 2)[:, 1])
        p = np.asarray(served)
        c = np.interp(p, cal["scores"], cal["calibrated"])
        expected = np.where(p >= 0.5, c, 1 - c).mean()
        estimated = wait_for("the estimated accuracy of every row", lambda: [
            v for v in metric(keel.metrics, "keel_model_estimated_accuracy", model="breast-cancer", version="1")
            if abs(v - expected) < 1e-6])
        report = requests.get(f"http://{keel.http}/v2/models/breast-cancer/versions/1/drift", timeout=5).json()
        assert report["estimated"]["rows"] == len(x) and abs(report["estimated"]["accuracy"] - expected) < 1e-6

        # Labels arrive: the measured accuracy appears next to the estimate.
        items = [{"id": f"est-{start}", "row": row, "label": int(label)}
                 for start in range(0, len(x), 50) for row, label in enumerate(y[start:start + 50])]
        assert requests.post(f"http://{keel.http}/v2/models/breast-cancer/feedback", json={"feedback": items},
                             timeout=30).json()["matched"] == len(x)
        measured = wait_for("the measured accuracy", lambda: metric(keel.metrics, "keel_model_accuracy",
                                                                    model="breast-cancer", version="1"))
        truth = ((p >= 0.5) == y).mean()
        assert abs(measured[0] - truth) < 1e-9, (measured, truth)
        assert abs(estimated[0] - measured[0]) < 0.02, (estimated, measured)

        # The rule fired once the window held min_samples rows, and the event says why.
        wait_for("the webhook", lambda: receiver.events, timeout=30)
        assert not receiver.bad and len(receiver.events) == 1, receiver.events
        event = receiver.events[0][1]
        assert event["type"] == "dev.keel.performance.degraded"
        data = event["data"]
        assert data["metric"] == "estimated_accuracy" and data["threshold"] == 0.995
        assert 500 <= data["rows"] <= len(x) and data["value"] <= 0.995
        assert {"top_features", "files", "window_start", "window_end_ms"} <= data.keys()
        performance = data["performance"]
        assert performance["estimated"]["accuracy"] == data["value"]
        assert performance["estimated"]["rows"] == data["rows"]
        assert performance["measured"]["rows"] == 0  # no feedback yet when it fired
        features = data["drift"]["features"]
        assert 0 < len(features) <= 5 and all({"feature", "rows", "csi"} <= f.keys() for f in features)
        assert [f["csi"] for f in features] == sorted((f["csi"] for f in features), reverse=True)
        assert [o["output"] for o in data["drift"]["outputs"]] == ["label", "probabilities[0]", "probabilities[1]"]
        assert [(f["rule"], f["value"], f["fire"]) for f in data["firing"]] == \
            [("estimated_accuracy", data["value"], 0.995)]
        assert data["data_quality"] == []
    finally:
        keel.stop()
        receiver.close()

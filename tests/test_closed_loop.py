"""The closed MLOps loop on real MLflow, Keel and HTTP: drift fires one signed webhook, the retraining
hook runs the retraining pipeline (deploy/kubeflow/, with kfp.local), which trains on the logged, labelled
rows, beats the champion on a holdout, registers a version and moves the alias, Keel serves it, and
the new version's window shows the drift gone. The loop is models/demo.py's (`make demo`); this test
runs it once and asserts each step."""

import json
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT

sys.path.insert(0, str(ROOT / "models"))
from demo import (ALIAS, CLEAR, FIRE, MODEL, SETTLE_ROWS, SHIFT, ClosedLoop, csi, samples,  # noqa: E402
                  window_rows)
from retrain_hook import signature, signing_key  # noqa: E402


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    with ClosedLoop(tmp_path_factory.mktemp("closed-loop")) as loop:
        loop.result = loop.run()
        yield loop


def test_drift_fires_exactly_one_signed_event(loop):
    hook, v1 = loop.hook, loop.result.v1
    # Redeliveries keep their webhook-id, so a retry would show as a duplicate, a bad MAC as rejected.
    assert (hook.rejected, hook.duplicates, len(hook.events)) == (0, 0, 1), (hook.rejected, hook.duplicates, hook.events)
    event = hook.events[0]["event"]
    assert event["type"] == "dev.keel.drift.detected" and event["specversion"] == "1.0"
    data = event["data"]
    assert (data["model"], data["version"], data["metric"]) == (MODEL, v1, "csi")
    assert data["value"] >= FIRE and data["threshold"] == FIRE
    assert sorted(f["feature"] for f in data["top_features"][:2]) == sorted(SHIFT), data["top_features"]
    assert data["files"] and all(Path(f).is_file() for f in data["files"]), data["files"]
    delivered = samples(loop.keel.metrics, "keel_webhook_deliveries_total", outcome="delivered")
    assert sum(value for _, value in delivered) == 1, delivered


def test_hook_refuses_forgeries_and_ignores_redeliveries(loop):
    hook = loop.hook
    accepted = hook.events[0]
    body = json.dumps(accepted["event"]).encode()
    now = str(int(time.time()))

    def deliver(msg_id: str, timestamp: str, key: bytes) -> int:
        headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp,
                   "webhook-signature": f"v1,{signature(key, msg_id, timestamp, body)}"}
        return requests.post(hook.url, data=body, headers=headers, timeout=5).status_code

    key = signing_key(loop.secret)
    assert deliver("evt_forged", now, b"not-the-secret") == 401
    assert deliver("evt_stale", str(int(time.time()) - 3600), key) == 401
    assert requests.post(hook.url, data=body, timeout=5).status_code == 401  # unsigned
    assert hook.rejected == 3
    # Keel's retry of an event it already delivered: acknowledged, not retrained again.
    assert deliver(accepted["id"], now, key) == 202
    assert hook.duplicates == 1 and len(hook.events) == 1 and len(hook.retrains) == 1


def test_new_version_registered_and_alias_moved(loop):
    result, client = loop.result, loop.mlflow.client
    assert not loop.hook.failures and len(loop.hook.retrains) == 1
    assert result.new_version == result.v1 + 1
    assert client.get_model_version_by_alias(MODEL, ALIAS).version == str(result.new_version)
    version = client.get_model_version(MODEL, str(result.new_version))
    files = sorted(a.path for a in client.list_artifacts(version.run_id, "model"))
    assert files == ["model/baseline.json", "model/model.onnx"], files
    # Trained on labelled rows logged after the detection: drifted traffic only.
    assert result.retrain["rows"] >= 1000 and result.retrain["accuracy"] > 0.9, result.retrain


def test_keel_serves_the_new_version(loop):
    new = str(loop.result.new_version)
    http = f"http://{loop.keel.http}/v2/models/{MODEL}"
    assert requests.get(http, timeout=5).json()["versions"] == [new]
    row = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                       "data": loop.replay.traffic.x[0].tolist()}]}
    assert requests.post(f"{http}/infer", json=row, timeout=5).json()["model_version"] == new
    assert loop.replay.rows_by_version.get(new, 0) >= SETTLE_ROWS, loop.replay.rows_by_version


def test_new_window_fills_and_the_drift_is_gone(loop):
    result, metrics = loop.result, loop.keel.metrics
    assert any(result.csi_v1_drifted[f] >= FIRE for f in SHIFT), result.csi_v1_drifted
    assert window_rows(metrics, result.new_version) >= SETTLE_ROWS
    now = csi(metrics, result.new_version)
    assert all(now[f] < CLEAR for f in SHIFT), {f: now[f] for f in SHIFT}
    assert max(now.values()) < FIRE, max(now.items(), key=lambda kv: kv[1])  # no feature near firing
    alert = samples(metrics, "keel_drift_alert", model=MODEL, version=result.new_version)
    assert alert and all(value == 0 for _, value in alert), alert


def test_time_from_drift_onset_to_new_version_serving(loop):
    t = loop.result.times
    order = ["drift_onset", "csi_over", "webhook", "registered", "alias_moved", "new_serving", "new_window"]
    assert [t[s] for s in order] == sorted(t[s] for s in order), {s: t[s] - t["drift_onset"] for s in order}
    took = loop.result.onset_to_serving
    print(f"\ndrift onset -> v{loop.result.new_version} serving: {took:.2f} s "
          f"(webhook +{t['webhook'] - t['drift_onset']:.2f} s, registered +{t['registered'] - t['drift_onset']:.2f} s)")
    assert took < 60

"""Hot reload from a real MLflow Model Registry: Keel follows the `champion` alias, swaps under load
without a failed request, survives corrupt versions and an MLflow outage."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import ROOT, Keel, reference
from mlflow_server import MlflowServer

MODEL = "m"
REGISTERED = "breast-cancer-registry"
V1_FILE = ROOT / "models/breast-cancer/1/model.onnx"
V2_FILE = ROOT / "models/breast-cancer/2/model.onnx"
TOKEN = "reload-token"


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registry(mlflow):
    """Versions 1 and 2 registered, the alias on 1."""
    v1 = mlflow.register(REGISTERED, {"model.onnx": V1_FILE.read_bytes()})
    v2 = mlflow.register(REGISTERED, {"model.onnx": V2_FILE.read_bytes()})
    mlflow.set_alias(REGISTERED, "champion", v1)
    return {v1: V1_FILE, v2: V2_FILE}


@pytest.fixture(scope="module")
def keel(mlflow, registry, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    (repo / MODEL).mkdir()
    (repo / MODEL / "model.toml").write_text(
        f'[source.mlflow]\ntracking_uri = "{mlflow.uri}"\nname = "{REGISTERED}"\nalias = "champion"\npoll_interval = 0.2\n')
    server = Keel(repo, "--repository-poll", "0.5", "--cache-dir", str(tmp_path_factory.mktemp("cache")),
                  "--admin-token", TOKEN)
    yield server
    assert server.stop() == 0


def serving(keel) -> list[str]:
    response = requests.get(f"http://{keel.http}/v2/models/{MODEL}", timeout=5)
    return response.json().get("versions", []) if response.ok else []


def wait_serving(keel, version: int, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if serving(keel) == [str(version)]:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"version {version} not serving after {timeout} s; serving {serving(keel)}\n"
                         + "".join(keel.log[-20:]))


def index(keel) -> list[dict]:
    return requests.post(f"http://{keel.http}/v2/repository/index", json={},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()


def test_follows_the_alias_forward_and_back(keel, mlflow, registry):
    v1, v2 = sorted(registry)
    wait_serving(keel, v1)
    mlflow.set_alias(REGISTERED, "champion", v2)
    took = wait_serving(keel, v2)
    assert took < 0.2 + 5, f"promotion took {took:.1f} s"
    mlflow.set_alias(REGISTERED, "champion", v1)
    wait_serving(keel, v1)


def test_twenty_swaps_under_load_fail_no_request(keel, mlflow, registry, features):
    """16 clients send requests while the alias alternates 20 times; every response must be what the
    version it names computes."""
    versions = sorted(registry)
    stop = threading.Event()
    results, errors = [], []

    def client(worker: int):
        session = requests.Session()
        i = worker
        while not stop.is_set():
            row = features[i % len(features)][None, :]
            i += 16
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                "data": row.flatten().tolist()}]}
            try:
                r = session.post(f"http://{keel.http}/v2/models/{MODEL}/infer", json=body, timeout=30)
            except requests.RequestException as e:
                errors.append(repr(e))
                continue
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text}")
                continue
            results.append((row, r.json()))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    try:
        current = int(serving(keel)[0])
        for swap in range(20):
            target = versions[(versions.index(current) + 1) % len(versions)]
            mlflow.set_alias(REGISTERED, "champion", target)
            wait_serving(keel, target)
            current = target
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} failed requests, first: {errors[:3]}"
    seen = {int(body["model_version"]) for _, body in results}
    assert seen == set(versions), seen
    for row, body in results:
        expected = reference(registry[int(body["model_version"])], {"input": row})
        outputs = {o["name"]: np.array(o["data"]) for o in body["outputs"]}
        assert outputs["label"].tolist() == expected["label"].tolist()
        np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"].flatten(), atol=1e-5)
    print(f"{len(results)} requests across 20 swaps, none failed")


def test_corrupt_version_keeps_the_old_one_serving(keel, mlflow, registry):
    serving_before = serving(keel)
    broken = mlflow.register(REGISTERED, {"model.onnx": V1_FILE.read_bytes()[:200]})
    mlflow.set_alias(REGISTERED, "champion", broken)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = [r for r in index(keel) if r.get("version") == str(broken)]
        if rows and rows[0]["state"] == "UNAVAILABLE":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the index never showed version {broken} failing: {index(keel)}")
    assert "ONNX" in rows[0]["reason"], rows
    assert serving(keel) == serving_before
    good = mlflow.register(REGISTERED, {"model.onnx": V2_FILE.read_bytes()})
    registry[good] = V2_FILE
    mlflow.set_alias(REGISTERED, "champion", good)
    wait_serving(keel, good)


def test_mlflow_outage_keeps_serving_and_recovers(keel, mlflow, registry, features):
    before = serving(keel)
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": features[0].tolist()}]}
    mlflow.stop()
    try:
        time.sleep(2)
        for _ in range(5):
            r = requests.post(f"http://{keel.http}/v2/models/{MODEL}/infer", json=body, timeout=5)
            assert r.status_code == 200, r.text
        assert serving(keel) == before
        assert any("model source unreadable" in line for line in keel.log), "".join(keel.log[-10:])
    finally:
        mlflow.start()
    target = min(v for v in registry if str(v) not in before)
    mlflow.set_alias(REGISTERED, "champion", target)
    # The registry is polled again within the backoff (at most 16 s after a short outage).
    wait_serving(keel, target, timeout=60)
    metrics = requests.get(f"http://{keel.metrics}/metrics", timeout=5).text
    assert f'keel_model_swaps_total{{model="{MODEL}"}}' in metrics
    assert json.dumps(serving(keel)) == json.dumps([str(target)])


def drift_series(keel, version) -> bool:
    metrics = requests.get(f"http://{keel.metrics}/metrics", timeout=5).text
    labels = f'{{model="{MODEL}",version="{version}"}}'
    return any(line.startswith("keel_drift_window_rows" + labels) for line in metrics.splitlines())


def wait_until(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def control(keel, action: str) -> requests.Response:
    return requests.post(f"http://{keel.http}/v2/repository/models/{MODEL}/{action}",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


def test_an_unloaded_registry_model_stays_unloaded_and_leaves_the_monitor(keel, mlflow, registry):
    """Unloading the MLflow-sourced model through the API: alias polls (every 0.2 s) never bring it back,
    its drift series leave /metrics, and an explicit load serves the alias' version again."""
    monitored = mlflow.register(REGISTERED, {"model.onnx": V1_FILE.read_bytes(),
                                             "baseline.json": (V1_FILE.parent / "baseline.json").read_bytes()})
    registry[monitored] = V1_FILE
    mlflow.set_alias(REGISTERED, "champion", monitored)
    wait_serving(keel, monitored)
    wait_until("the version is monitored", lambda: drift_series(keel, monitored))

    assert control(keel, "unload").status_code == 200
    wait_until("the version leaves the monitor", lambda: not drift_series(keel, monitored))
    # Moving the alias while unloaded changes nothing: 15 alias polls later it is still unloaded.
    mlflow.set_alias(REGISTERED, "champion", min(registry))
    time.sleep(3)
    assert requests.get(f"http://{keel.http}/v2/models/{MODEL}/ready", timeout=5).status_code == 404
    assert not drift_series(keel, monitored)
    rows = [r for r in index(keel) if r["name"] == MODEL]
    assert rows == [{"name": MODEL, "state": "UNAVAILABLE", "reason": "unloaded"}], rows

    response = control(keel, "load")
    assert response.status_code == 200, response.text
    wait_serving(keel, min(registry))


def test_a_restart_while_mlflow_is_down_serves_the_cached_version(mlflow, registry, tmp_path):
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    (repo / MODEL).mkdir(parents=True)
    (repo / MODEL / "model.toml").write_text(
        f'[source.mlflow]\ntracking_uri = "{mlflow.uri}"\nname = "{REGISTERED}"\nalias = "champion"\n'
        "poll_interval = 0.2\n")
    first = Keel(repo, "--cache-dir", str(cache))
    try:
        versions = serving(first)
        assert versions, "".join(first.log[-10:])
    finally:
        assert first.stop() == 0
    mlflow.stop()
    try:
        second = Keel(repo, "--cache-dir", str(cache))
        try:
            assert serving(second) == versions, "".join(second.log[-10:])
            assert any("serving the cached version" in line for line in second.log)
            ready = requests.get(f"http://{second.http}/v2/health/ready", timeout=5)
            assert ready.status_code == 200
        finally:
            assert second.stop() == 0
    finally:
        mlflow.start()


def test_keel_check_loads_the_version_the_alias_names(mlflow, tmp_path):
    """`keel check` asks MLflow for the alias, downloads that version and loads it as `keel serve` would."""
    import subprocess

    from conftest import KEEL_BIN

    name = "breast-cancer-check"
    good = mlflow.register(name, {"model.onnx": V1_FILE.read_bytes(),
                                  "baseline.json": (V1_FILE.parent / "baseline.json").read_bytes()})
    mlflow.set_alias(name, "champion", good)
    repo = tmp_path / "repo"
    (repo / MODEL).mkdir(parents=True)
    (repo / MODEL / "model.toml").write_text(
        f'[source.mlflow]\ntracking_uri = "{mlflow.uri}"\nname = "{name}"\nalias = "champion"\n')

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([KEEL_BIN, "check", str(repo)], capture_output=True, text=True, timeout=120)

    passed = check()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"ok    version {good}" in passed.stdout and "baseline.json: 30 features" in passed.stdout
    broken = mlflow.register(name, {"model.onnx": V1_FILE.read_bytes()[:200]})
    mlflow.set_alias(name, "champion", broken)
    failed = check()
    assert failed.returncode == 1, failed.stdout
    assert f"FAIL  version {broken}" in failed.stdout and "ONNX" in failed.stdout

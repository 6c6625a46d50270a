"""Prometheus metrics on their own port: the exposition passes `promtool check metrics`, every family
named in the docs is there with its help text, and the counters follow the traffic."""

import re
import shutil
import subprocess

import numpy as np
import requests
import tritonclient.grpc as grpcclient

from test_deploy import SERVING_FAMILIES

FAMILIES = SERVING_FAMILIES


def scrape(keel) -> str:
    r = requests.get(f"http://{keel.metrics}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_exposition_passes_promtool_and_counts_traffic(keel, features):
    before = scrape(keel)
    x = features[:3]
    body = {"inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP32", "data": x.ravel().tolist()}]}
    for _ in range(4):
        assert requests.post(f"http://{keel.http}/v2/models/breast-cancer/versions/1/infer", json=body).ok
    bad = {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": [0.0] * 29}]}
    assert requests.post(f"http://{keel.http}/v2/models/breast-cancer/versions/1/infer", json=bad).status_code == 400
    client = grpcclient.InferenceServerClient(keel.grpc)
    inp = grpcclient.InferInput("input", [3, 30], "FP32")
    inp.set_data_from_numpy(x)
    client.infer("breast-cancer", [inp], model_version="1")
    client.close()
    after = scrape(keel)

    labels = dict(model="breast-cancer", version="1")
    delta = lambda name, **l: value(after, name, **labels, **l) - value(before, name, **labels, **l)
    assert delta("keel_inference_requests_total", protocol="http", outcome="success") == 4
    assert delta("keel_inference_requests_total", protocol="http", outcome="invalid") == 1
    assert delta("keel_inference_requests_total", protocol="grpc", outcome="success") == 1
    assert delta("keel_inference_rows_total") == 15
    assert delta("keel_request_duration_seconds_count", protocol="http") == 4
    assert delta("keel_batch_rows_sum") == 15
    assert value(after, "keel_model_info", model="breast-cancer", version="2", backend="onnxruntime") == 1
    assert value(after, "process_resident_memory_bytes") > 1e6

    for name, kind in FAMILIES.items():
        assert f"# TYPE {name} {kind}" in after, name
        assert re.search(rf"^# HELP {name} \S", after, re.M), name

    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    check = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_metrics_port_serves_only_metrics(keel):
    assert requests.get(f"http://{keel.metrics}/v2/health/live").status_code == 404
    assert requests.get(f"http://{keel.http}/metrics").status_code == 404

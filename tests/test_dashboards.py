"""Every panel of the Grafana dashboards, run against a real Prometheus that scrapes a live Keel.

One Keel (the example models, plus a model that fails to load) is started with whatever monitoring its
binary offers (the prediction log, the embedded monitor with a webhook, or a `keel monitor` sidecar), and
a `prometheus` (Debian's package) scrapes it every second with deploy/prometheus/rules loaded. When the
binary monitors, breast-cancer gets a `[monitor]` table (classifier, a PSI and an accuracy rule) unless
its model.toml has one; the drift metrics also need its baseline.json. Traffic:
more than 1000 single-row requests with ids (the later ones shifted, so drift shows), bad requests (so
error series exist), a hot reload, and ground-truth feedback for every request. Then every panel query
(variables at "All", $__rate_interval = 1m) goes through /api/v1/query: each must parse and, at some
point while the test waits, return at least one finite sample.
"""

import base64
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import ADMIN_TOKEN, KEEL_BIN, ROOT, Keel, build_repository
from test_deploy import contract_name, metric_names, substitute

DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "grafana/dashboards").glob("*.json"))}
RULES = ROOT / "deploy/prometheus/rules/keel.rules.yml"
MODEL = "breast-cancer"
ROWS = 1200  # in-distribution rows, one per request
SHIFTED = 400  # then rows with every feature scaled by 1.6
WAIT_S = float(os.environ.get("KEEL_DASHBOARD_WAIT", "90"))
MONITOR_FLAGS = ("--prediction-log-dir", "--monitor-endpoint", "--webhook-url")
MONITOR_TOML = """
[monitor]
task = "classifier"
prediction_output = "label"
positive_label = 1
min_samples = 300

[[monitor.rules]]
metric = "psi"
consecutive = 1

[[monitor.rules]]
metric = "accuracy"
fire = 0.95
clear = 0.97
consecutive = 1
"""


def queries() -> list[tuple[str, str]]:
    out = []
    for name, d in DASHBOARDS.items():
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((f"{name}: {p['title']} [{t['refId']}]", t["expr"]))
    return out


def variables() -> list[tuple[str, str, str]]:
    out = []
    for name, d in DASHBOARDS.items():
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                selector, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]).groups()
                out.append((f"{name}: ${v['name']}", selector, label))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sources(expr: str) -> set[str]:
    """Contract metrics an expression depends on, through the recording rules."""
    recorded = {r["record"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    out = set()
    for name in metric_names(expr):
        out |= sources(recorded[name]) if name in recorded else {contract_name(name)}
    return out


def finite(result: list[dict]) -> bool:
    for series in result:
        values = [series["value"]] if "value" in series else series.get("values", [])
        if any(math.isfinite(float(v[1])) for v in values):
            return True
    return False


class Stack:
    """Keel (+ monitor sidecar if that is how this binary monitors), a webhook receiver, Prometheus."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.keel = None
        self.mode = "serve only"
        serve_help = subprocess.run([KEEL_BIN, "serve", "--help"], capture_output=True, text=True).stdout
        monitor_ok = subprocess.run([KEEL_BIN, "monitor", "--help"], capture_output=True).returncode == 0

        repo = build_repository(tmp / "repo")
        monitoring = monitor_ok or any(f in serve_help for f in MONITOR_FLAGS)
        toml = repo / MODEL / "model.toml"
        if monitoring and "[monitor]" not in toml.read_text():
            # Feedback metrics need the classifier task; rules that fire on this traffic (10% wrong labels,
            # a shifted tail) produce webhook deliveries.
            toml.write_text(toml.read_text() + MONITOR_TOML)
        # A model that fails to load: load-failure and UNAVAILABLE series.
        (repo / "broken/1").mkdir(parents=True)
        (repo / "broken/1/model.onnx").write_bytes(b"not an onnx model")

        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        (tmp / "webhook_secret").write_text(secret)
        self.webhook_url = self._start_webhook_receiver()

        args = ["--admin-token", ADMIN_TOKEN]
        if "--prediction-log-dir" in serve_help:
            (tmp / "predictions").mkdir()
            args += ["--prediction-log-dir", str(tmp / "predictions")]
        self.metrics_targets: dict[str, list[str]] = {}
        env_before = dict(os.environ)
        os.environ["KEEL_WEBHOOK_SECRET"] = secret
        try:
            if "--webhook-url" in serve_help:
                self.mode = "embedded monitor"
                args += ["--webhook-url", self.webhook_url]
            elif monitor_ok and "--monitor-endpoint" in serve_help:
                self.mode = "monitor sidecar"
                listen, metrics = free_port(), free_port()
                log = open(tmp / "monitor.log", "w")
                self.procs.append(subprocess.Popen(
                    [KEEL_BIN, "monitor", "--listen", f"127.0.0.1:{listen}", "--metrics-addr",
                     f"127.0.0.1:{metrics}", "--webhook-url", self.webhook_url],
                    stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, NO_COLOR="1")))
                self._wait_http(f"http://127.0.0.1:{metrics}/healthz", "keel monitor")
                self.metrics_targets["keel-monitor"] = [f"127.0.0.1:{metrics}"]
                args += ["--monitor-endpoint", f"http://127.0.0.1:{listen}"]
            self.keel = Keel(repo, *args)
        finally:
            os.environ.clear()
            os.environ.update(env_before)
        self.metrics_targets["keel"] = [self.keel.metrics]
        self.prometheus = self._start_prometheus()

    def _start_webhook_receiver(self) -> str:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy/container/webhook_receiver.py"), "--host", "127.0.0.1", "--port",
             "0", "--secret-file", str(self.tmp / "webhook_secret")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        port = re.search(r":(\d+)$", proc.stdout.readline().strip()).group(1)
        return f"http://127.0.0.1:{port}/keel"

    def _wait_http(self, url: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up at {url}")

    def _start_prometheus(self) -> str:
        prometheus = shutil.which("prometheus")
        assert prometheus, "prometheus missing: `make test` installs Debian's prometheus package"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.metrics_targets.items()],
        }
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(self.tmp / "prometheus.log", "w")
        self.procs.append(subprocess.Popen(
            [prometheus, f"--config.file={self.tmp / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={self.tmp / 'tsdb'}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        self._wait_http(f"{url}/-/ready", "prometheus")
        # Traffic must come after a first scrape, or rates over it would be 0 (no "before" sample).
        deadline = time.monotonic() + 30
        jobs = set(self.metrics_targets)
        while time.monotonic() < deadline:
            up = requests.get(f"{url}/api/v1/query", params={"query": "up == 1"}, timeout=5).json()
            if {r["metric"]["job"] for r in up["data"]["result"]} >= jobs:
                return url
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not scrape {self.metrics_targets}")

    def exported(self) -> set[str]:
        """Metric families the scraped processes export right now."""
        names = {"up"}
        for targets in self.metrics_targets.values():
            for target in targets:
                text = requests.get(f"http://{target}/metrics", timeout=5).text
                names |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        return names

    def query(self, expr: str) -> dict:
        r = requests.get(f"{self.prometheus}/api/v1/query", params={"query": substitute(expr)}, timeout=10)
        return r.json()

    def stop(self) -> None:
        if self.keel:
            self.keel.stop()
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def drive_traffic(stack: Stack, features: np.ndarray) -> dict:
    """Requests with ids, bad requests, a reload, and feedback for every request; returns what happened."""
    http = f"http://{stack.keel.http}"
    session = requests.Session()
    truth, statuses = {}, {}
    for i in range(ROWS + SHIFTED):
        row = features[i % len(features)] * (1.6 if i >= ROWS else 1.0)
        path = f"/v2/models/{MODEL}/versions/1/infer" if i % 4 == 0 else f"/v2/models/{MODEL}/infer"
        body = {"id": f"dash-{i}", "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                               "data": row.astype(np.float32).tolist()}]}
        r = session.post(http + path, json=body, timeout=10)
        assert r.status_code == 200, r.text
        label = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"][0]
        truth[f"dash-{i}"] = int(label) if i % 10 else 1 - int(label)  # 10% wrong: accuracy < 1, FPR > 0
    bad = {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": [0.0] * 29}]}
    for _ in range(5):
        assert session.post(f"{http}/v2/models/{MODEL}/infer", json=bad, timeout=10).status_code == 400
    # A hot reload: a load, a swap, a load duration.
    r = session.post(f"{http}/v2/repository/models/{MODEL}/load", timeout=60,
                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    statuses["reload"] = r.status_code
    ids = list(truth)
    for start in range(0, len(ids), 200):
        chunk = [{"id": i, "label": truth[i]} for i in ids[start:start + 200]]
        r = session.post(f"{http}/v2/models/{MODEL}/feedback", json={"feedback": chunk}, timeout=30)
        statuses.setdefault("feedback", set()).add(r.status_code)
    return statuses


@pytest.fixture(scope="module")
def results(tmp_path_factory, features):
    stack = Stack(tmp_path_factory.mktemp("dashboards"))
    try:
        statuses = drive_traffic(stack, features)
        traffic_done = time.monotonic()
        best: dict[str, dict] = {}
        all_queries = queries()
        while True:
            time.sleep(2)
            exported = stack.exported()
            for where, expr in all_queries:
                if where in best and best[where]["data"]:
                    continue
                answer = stack.query(expr)
                data = answer.get("status") == "success" and finite(answer["data"]["result"])
                best[where] = {"answer": answer, "data": data,
                               "missing": sorted(sources(substitute(expr)) - exported)}
            possible = [w for w, r in best.items() if not r["missing"]]
            if all(best[w]["data"] for w in best):
                break
            waited = time.monotonic() - traffic_done
            # Queries over metrics no process exports can never get data: wait only for the others (at
            # least 10 s, so rates have samples on both sides of the traffic).
            if waited > WAIT_S or (waited > 10 and all(best[w]["data"] for w in possible)):
                break
        variable_values = {}
        for where, selector, label in variables():
            r = requests.get(f"{stack.prometheus}/api/v1/label/{label}/values",
                             params={"match[]": substitute(selector)}, timeout=10).json()
            variable_values[where] = r.get("data", [])
        rules = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        yield {"best": best, "statuses": statuses, "mode": stack.mode, "variables": variable_values,
               "rules": rules}
    finally:
        stack.stop()


QUERIES = queries()


def test_every_query_parses(results):
    bad = {w: r["answer"] for w, r in results["best"].items() if r["answer"].get("status") != "success"}
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.parametrize("where", [w for w, _ in QUERIES])
def test_panel_returns_data(results, where):
    r = results["best"][where]
    if r["data"]:
        return
    expr = dict(QUERIES)[where]
    why = (f"Keel does not export {', '.join(r['missing'])} (mode: {results['mode']}; "
           f"reload/feedback HTTP statuses: {results['statuses']})" if r["missing"]
           else f"the metrics exist but the query returned no finite sample: {r['answer']}")
    pytest.fail(f"{where}: no data.\n  query: {substitute(expr)}\n  {why}")


@pytest.mark.parametrize("where", [w for w, _, _ in variables()])
def test_variable_has_values(results, where):
    assert results["variables"][where], f"{where}: label_values returned nothing"


def test_recording_and_alerting_rules_evaluate_cleanly(results):
    """The rules file loaded into a live Prometheus: no rule fails to evaluate on Keel's real series."""
    errors = [(r["name"], r.get("lastError")) for g in results["rules"] for r in g["rules"]
              if r.get("health") == "err"]
    assert not errors
    assert sum(len(g["rules"]) for g in results["rules"]) == sum(
        len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])


#!/usr/bin/env python3
"""Soak and chaos bench: Keel under mixed HTTP/gRPC traffic for a long time while everything around it
fails once, then the books are balanced.

    cargo build --release --bin keel
    KEEL_BIN=target/release/keel ORT_DYLIB_PATH=... .venv/bin/python benches/soak.py --duration 1800 --out soak.json

Everything runs on 127.0.0.1, in a scratch folder (`--workdir`, kept when given, else a temporary one):

- a real MLflow server (tests/mlflow_server.py) holding breast-cancer v1 and v2 as `soak-registry`;
- a webhook receiver that verifies the Standard Webhooks signature of every event and remembers every
  `webhook-id` it was offered, delivered or not;
- `keel monitor` (the sidecar) with `--state-dir` and the webhook;
- `keel serve --monitor-endpoint <sidecar> --prediction-log-dir ...` serving two models: `fs` (a
  filesystem model, a new version directory renamed in at every swap, alternating v1/v2 content) and
  `reg` (the MLflow alias `champion`, moved between v1 and v2 at every swap). Both carry a low-threshold
  CSI rule, so drifted traffic fires webhook events;
- HTTP (requests, JSON) and gRPC (tritonclient) client threads, paced to `--rate` requests/s in all,
  1 to 8 rows each, both models; during drift phases two features are shifted by 3 training standard
  deviations.

The chaos schedule, as fractions of `--duration` (each event once):

    every --swap-every s   swap: new `fs` version directory, and the `reg` alias moved
    0.10k .. 0.10k+0.05    drift phases (k = 1..9)
    0.15 .. 0.35           the webhook receiver answers 500
    0.25                   the sidecar is killed (-9), restarted a few seconds later, same state dir
    0.45 .. 0.55           MLflow stopped, then restarted (same store and port)
    0.70                   keel is killed (-9) and restarted at once (same log dir, state dir, ports)
    end                    traffic stops; wait until every webhook event is delivered; SIGTERM keel

Figures (printed, and written as JSON with `--out`): requests and errors per protocol, the error rate
outside the kill window (kill to ready again + `--grace` s), p50/p99 latency, keel's RSS over time and its
least-squares slope (MB/hour) excluding the first minute after each start, rows served = rows logged +
rows dropped (keel's counters, accumulated over both process lifetimes; the killed lifetime's last scrape
is taken just before the kill, and rows in flight during that scrape are the uncertainty), rows in the
Parquet files against rows logged, every Parquet file read back with pyarrow after the kill and at the
end, webhook events offered vs delivered.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benches/logging.py would shadow the standard library's `logging` (which requests imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from mlflow_server import MlflowServer, free_port  # noqa: E402

SECRET_KEY = b"keel-soak-webhook-key-0123456789"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
REGISTERED = "soak-registry"
SHIFTED = ["mean radius", "worst area"]
MONITOR_TOML = """
[monitor]
min_samples = 200

[[monitor.rules]]
metric = "csi"
consecutive = 2
cooldown_s = 0

[reload]
warmup_runs = 1
"""


def log(msg: str):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Webhook receiver


class Receiver:
    """Verifies every event's signature; answers 500 while `failing` is set. `offered` holds every
    webhook-id it saw (with attempts), `delivered` those it answered 2xx to."""

    def __init__(self, retry_after: int | None = None):
        self.failing = False
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.offered: dict[str, dict] = {}
        self.delivered: dict[str, dict] = {}
        self.bad: list[dict] = []
        self.answered_500 = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                msg_id = self.headers.get("webhook-id", "")
                ts = self.headers.get("webhook-timestamp", "0")
                expected = base64.b64encode(hmac.new(
                    SECRET_KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
                given = [s.split(",", 1)[-1] for s in self.headers.get("webhook-signature", "").split()]
                valid = expected in given and abs(time.time() - int(ts)) < 300
                now = time.time()
                with receiver.lock:
                    if not valid:
                        receiver.bad.append({"id": msg_id, "headers": dict(self.headers)})
                    else:
                        entry = receiver.offered.setdefault(msg_id, {"first": now, "attempts": 0,
                                                                     "type": json.loads(body).get("type")})
                        entry["attempts"] += 1
                    failing = receiver.failing
                    if failing:
                        receiver.answered_500 += 1
                    elif valid:
                        receiver.delivered.setdefault(msg_id, {"at": now, "type": json.loads(body).get("type"),
                                                               "event": json.loads(body)})
                if failing:
                    self.send_response(500)
                    if receiver.retry_after is not None:
                        self.send_header("Retry-After", str(receiver.retry_after))
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def undelivered(self) -> list[str]:
        with self.lock:
            return sorted(set(self.offered) - set(self.delivered))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------------
# Processes


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(4))))
        except ValueError:
            pass
    return out


def total(samples, name: str, **labels) -> float:
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def by_label(samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for n, l, v in samples:
        if n == name:
            out[l.get(label, "")] += v
    return dict(out)


class Proc:
    """A child process whose output goes to a file; killed by its own pid only."""

    def __init__(self, argv: list[str], logfile: Path, env: dict | None = None):
        self.logfile = logfile
        self.fh = open(logfile, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.fh, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, NO_COLOR="1", **(env or {})))
        self.pid = self.proc.pid
        self.started = time.time()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.fh.close()

    def terminate(self, timeout: float = 30) -> tuple[int | None, float]:
        start = time.monotonic()
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            rc = None
        self.fh.close()
        return rc, time.monotonic() - start

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


def wait_http(url: str, timeout: float, proc: Proc | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"process exited; see {proc.logfile}:\n" + proc.logfile.read_text()[-3000:])
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------------
# The bench


class Soak:
    def __init__(self, args):
        self.args = args
        self.keel_bin = os.environ.get("KEEL_BIN", str(ROOT / "target/release/keel"))
        self.D = float(args.duration)
        if args.workdir:
            self.work = Path(args.workdir).resolve()
            if self.work.exists():
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True)
            self.keep = True
        else:
            self.work = Path(tempfile.mkdtemp(prefix="keel-soak-"))
            self.keep = args.keep
        self.repo = self.work / "repo"
        self.log_dir = self.work / "prediction-log"
        self.state_dir = self.work / "sidecar-state"
        self.keel_state = self.work / "keel-state"
        self.ports = {k: free_port() for k in ("http", "grpc", "metrics", "sidecar", "sidecar_metrics")}
        self.x = np.load(ROOT / "tests/data/breast_cancer.npy").astype(np.float32)
        from sklearn.datasets import load_breast_cancer
        names = list(load_breast_cancer().feature_names)
        self.shift_idx = [names.index(f) for f in SHIFTED]
        self.std = self.x.std(axis=0)
        self.stop_traffic = threading.Event()
        self.stop_all = threading.Event()
        self.drift = False
        self.t0 = None
        self.results: list[list] = []  # per thread: (t_start, t_end, proto, ok, rows, error)
        self.results_lock = threading.Lock()
        self.kill_windows: list[list] = []  # [t_kill, t_ready + grace]
        self.events: list[dict] = []  # chaos timeline
        self.keel_lock = threading.RLock()
        self.keel: Proc | None = None
        self.lifetimes: list[dict] = []
        self.sidecar: Proc | None = None
        self.sidecar_lifetimes: list[dict] = []
        self.fs_version = 1
        self.swaps = Counter()
        self.parquet_after_kill: dict | None = None
        self.rss: list[tuple[float, float, int]] = []
        self.metrics_size: list[tuple[float, int, int]] = []  # keel's /metrics page: lines, bytes

    def event(self, what: str, **extra):
        t = time.time() - (self.t0 or time.time())
        self.events.append({"t": round(t, 2), "event": what, **extra})
        log(f"t={t:7.1f}s {what} {extra if extra else ''}")

    # --- setup ---

    def setup(self):
        log(f"workdir {self.work}; keel {self.keel_bin}")
        self.mlflow = MlflowServer(self.work / "mlflow")
        files = {}
        for v in (1, 2):
            d = ROOT / f"models/breast-cancer/{v}"
            files[v] = {"model.onnx": (d / "model.onnx").read_bytes(),
                        "baseline.json": (d / "baseline.json").read_bytes()}
        self.reg_versions = [self.mlflow.register(REGISTERED, files[1]), self.mlflow.register(REGISTERED, files[2])]
        self.mlflow.set_alias(REGISTERED, "champion", self.reg_versions[0])
        self.reg_current = 0
        (self.repo / "fs").mkdir(parents=True)
        shutil.copytree(ROOT / "models/breast-cancer/1", self.repo / "fs/1")
        (self.repo / "fs/model.toml").write_text(MONITOR_TOML)
        (self.repo / "reg").mkdir()
        (self.repo / "reg/model.toml").write_text(
            f'[source.mlflow]\ntracking_uri = "{self.mlflow.uri}"\nname = "{REGISTERED}"\n'
            f'alias = "champion"\npoll_interval = 1\n' + MONITOR_TOML)
        self.receiver = Receiver(self.args.webhook_retry_after)
        self.start_sidecar()
        self.start_keel()

    def start_sidecar(self):
        n = len(self.sidecar_lifetimes)
        self.sidecar = Proc([self.keel_bin, "monitor", "--listen", f"127.0.0.1:{self.ports['sidecar']}",
                             "--metrics-addr", f"127.0.0.1:{self.ports['sidecar_metrics']}",
                             "--window-seconds", "30", "--evaluate-every", "0.5", "--min-samples", "200",
                             "--webhook-url", self.receiver.url, "--state-dir", str(self.state_dir)],
                            self.work / f"sidecar-{n}.log", env={"KEEL_WEBHOOK_SECRET": SECRET})
        if not wait_http(f"http://127.0.0.1:{self.ports['sidecar_metrics']}/healthz", 60, self.sidecar):
            raise RuntimeError("sidecar not healthy")
        self.sidecar_lifetimes.append({"pid": self.sidecar.pid, "start": time.time(), "last": None})

    def start_keel(self) -> float:
        n = len(self.lifetimes)
        with self.keel_lock:
            self.keel = Proc([self.keel_bin, "serve", "--model-repository", str(self.repo),
                              "--http-addr", f"127.0.0.1:{self.ports['http']}",
                              "--grpc-addr", f"127.0.0.1:{self.ports['grpc']}",
                              "--metrics-addr", f"127.0.0.1:{self.ports['metrics']}",
                              "--monitor-endpoint", f"http://127.0.0.1:{self.ports['sidecar']}",
                              "--prediction-log-dir", str(self.log_dir),
                              "--prediction-log-rotate", str(self.args.rotate),
                              "--repository-poll", "1", "--cache-dir", str(self.work / "cache"),
                              "--state-dir", str(self.keel_state)],
                             self.work / f"keel-{n}.log")
            life = {"pid": self.keel.pid, "start": time.time(), "ready": None, "last": None, "end": None}
            self.lifetimes.append(life)
        if not wait_http(f"http://127.0.0.1:{self.ports['http']}/v2/health/ready", 120, self.keel):
            raise RuntimeError(f"keel not ready; see {self.keel.logfile}")
        life["ready"] = time.time()
        return life["ready"]

    # --- scraping ---

    def scrape_keel(self) -> dict | None:
        t_start = time.time()
        try:
            text = requests.get(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        s = parse_metrics(text)
        return {
            "t_start": t_start, "t_end": time.time(),
            "served": by_label(s, "keel_model_rows_total", "model"),
            "logged": by_label(s, "keel_prediction_log_records_total", "model"),
            "dropped": {r: v for r, v in by_label(s, "keel_prediction_log_dropped_total", "reason").items()},
            "requests": _req_totals(s),
            "swaps": by_label(s, "keel_model_swaps_total", "model"),
            "rss_mb": total(s, "process_resident_memory_bytes") / 2**20,
            "metrics_lines": len(text.splitlines()), "metrics_bytes": len(text),
        }

    def scrape_sidecar(self) -> dict | None:
        try:
            text = requests.get(f"http://127.0.0.1:{self.ports['sidecar_metrics']}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        s = parse_metrics(text)
        return {"t": time.time(),
                "deliveries": by_label(s, "keel_webhook_deliveries_total", "outcome"),
                "pending": total(s, "keel_webhook_pending_events")}

    def scraper(self):
        while not self.stop_all.is_set():
            with self.keel_lock:
                keel, life = self.keel, self.lifetimes[-1] if self.lifetimes else None
                if keel and keel.alive() and life and life["ready"]:
                    snap = self.scrape_keel()
                    if snap:
                        life["last"] = snap
                    rss = keel.rss_mb()
                    if rss is not None:
                        self.rss.append((time.time(), rss, len(self.lifetimes) - 1))
                    if snap:
                        self.metrics_size.append((time.time(), snap["metrics_lines"], snap["metrics_bytes"]))
            sidecar = self.sidecar
            if sidecar and sidecar.alive():
                snap = self.scrape_sidecar()
                if snap and sidecar is self.sidecar:
                    self.sidecar_lifetimes[-1]["last"] = snap
            self.stop_all.wait(self.args.scrape_every)

    # --- traffic ---

    def rows(self, rng, n):
        x = self.x[rng.integers(0, len(self.x), n)].copy()
        if self.drift:
            for i in self.shift_idx:
                x[:, i] += np.float32(3.0 * self.std[i])
        return x

    def pace(self, rate: float):
        period = 1.0 / rate
        nxt = time.monotonic()
        while not self.stop_traffic.is_set():
            yield
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                nxt = time.monotonic()

    def http_client(self, worker: int, rate: float, out: list):
        rng = np.random.default_rng(1000 + worker)
        session = requests.Session()
        url = f"http://127.0.0.1:{self.ports['http']}/v2/models/%s/infer"
        n = 0
        for _ in self.pace(rate):
            if n >= self.args.max_requests:
                break
            model = ("fs", "reg")[n % 2]
            k = int(rng.integers(1, 9))
            x = self.rows(rng, k)
            body = {"id": f"h{worker}-{n}", "inputs": [{"name": "input", "shape": [k, 30], "datatype": "FP32",
                                                         "data": x.flatten().tolist()}]}
            n += 1
            t = time.time()
            try:
                r = session.post(url % model, json=body, timeout=10)
                ok = r.status_code == 200 and len(r.json()["outputs"]) == 2
                err = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
            except Exception as e:  # noqa: BLE001 - every failure is a figure
                ok, err = False, f"{type(e).__name__}: {str(e)[:200]}"
                session.close()
                session = requests.Session()
            out.append((t, time.time(), 0, ok, k, err))

    def grpc_client(self, worker: int, rate: float, out: list):
        import tritonclient.grpc as grpcclient
        rng = np.random.default_rng(2000 + worker)
        addr = f"127.0.0.1:{self.ports['grpc']}"
        client = grpcclient.InferenceServerClient(addr)
        n = 0
        for _ in self.pace(rate):
            if n >= self.args.max_requests:
                break
            model = ("reg", "fs")[n % 2]
            k = int(rng.integers(1, 9))
            inp = grpcclient.InferInput("input", [k, 30], "FP32")
            inp.set_data_from_numpy(self.rows(rng, k))
            rid = f"g{worker}-{n}"
            n += 1
            t = time.time()
            try:
                res = client.infer(model, [inp], request_id=rid, client_timeout=10)
                labels = res.as_numpy("label")
                ok = labels is not None and len(labels) == k
                err = None if ok else "wrong answer"
            except Exception as e:  # noqa: BLE001
                ok, err = False, f"{type(e).__name__}: {str(e)[:200]}"
                # A channel in reconnect backoff would keep failing after the server is back: a new one.
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
                client = grpcclient.InferenceServerClient(addr)
            out.append((t, time.time(), 1, ok, k, err))
        client.close()

    # --- chaos ---

    def at(self, frac: float, fn, *a):
        def run():
            delay = self.t0 + frac * self.D - time.time()
            if delay > 0 and self.stop_traffic.wait(delay):
                return
            try:
                fn(*a)
            except Exception as e:  # noqa: BLE001
                self.event("chaos step failed", step=fn.__name__, error=repr(e))
        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th

    def swapper(self):
        k = 0
        while not self.stop_traffic.wait(self.args.swap_every):
            k += 1
            # filesystem: a new version directory, staged then renamed in; alternating v1/v2 content
            self.fs_version += 1
            v = self.fs_version
            stage = self.repo / "fs" / f".staging-{v}"
            shutil.copytree(ROOT / f"models/breast-cancer/{1 + (v + 1) % 2}", stage)
            os.rename(stage, self.repo / "fs" / str(v))
            self.swaps["fs_published"] += 1
            old = self.repo / "fs" / str(v - 3)
            if old.exists():
                shutil.rmtree(old)
            # MLflow: move the alias (plain REST with a short timeout, so an outage does not stall us)
            target = self.reg_versions[1 - self.reg_current]
            try:
                r = requests.post(f"{self.mlflow.uri}/api/2.0/mlflow/registered-models/alias",
                                  json={"name": REGISTERED, "alias": "champion", "version": str(target)},
                                  timeout=3)
                r.raise_for_status()
                self.reg_current = 1 - self.reg_current
                self.swaps["mlflow_alias_moved"] += 1
            except requests.RequestException:
                self.swaps["mlflow_alias_failed"] += 1

    def drifter(self):
        while not self.stop_traffic.wait(0.2):
            f = (time.time() - self.t0) / self.D
            k = math.floor(f * 10)
            on = 1 <= k <= 9 and (f * 10 - k) < 0.5
            if on != self.drift:
                self.drift = on
                self.event("drift on" if on else "drift off")

    def webhook_500(self, on: bool):
        self.receiver.failing = on
        self.event("webhook answers 500" if on else "webhook answers 204 again")

    def kill_sidecar(self):
        pending = sorted(p.stem for p in self.state_dir.rglob("*.json"))
        last = self.scrape_sidecar()
        if last:
            self.sidecar_lifetimes[-1]["last"] = last
        self.sidecar.kill9()
        self.sidecar_lifetimes[-1]["end"] = time.time()
        self.event("sidecar killed (-9)", pending_in_state_dir=len(pending))
        self.pending_at_sidecar_kill = pending
        time.sleep(max(2.0, 0.01 * self.D))
        self.start_sidecar()
        self.event("sidecar restarted")

    def mlflow_stop(self):
        self.mlflow.stop()
        self.event("mlflow stopped")

    def mlflow_start(self):
        self.mlflow.start()
        self.event("mlflow restarted")

    def kill_keel(self):
        with self.keel_lock:
            life = self.lifetimes[-1]
            snap = self.scrape_keel()  # the last look at the counters before they are lost
            if snap:
                life["last"] = snap
            t_kill = time.time()
            self.keel.kill9()
            life["end"] = t_kill
        window = [t_kill, None]
        self.kill_windows.append(window)
        self.event("keel killed (-9)")
        self.parquet_after_kill = check_parquet(self.log_dir)
        self.event("parquet after kill", readable=self.parquet_after_kill["readable"],
                   unreadable=len(self.parquet_after_kill["unreadable"]),
                   partial=len(self.parquet_after_kill["partial"]))
        ready = self.start_keel()
        window[1] = ready + self.args.grace
        self.event("keel restarted and ready", took_s=round(ready - t_kill, 2))

    # --- run ---

    def run(self) -> dict:
        try:
            self.setup()
            return self._run()
        finally:
            self.teardown()

    def _run(self) -> dict:
        a = self.args
        threading.Thread(target=self.scraper, daemon=True).start()
        self.t0 = time.time()
        self.event("traffic starts", duration_s=self.D)
        outs, threads = [], []
        for i in range(a.http_threads):
            out = []
            outs.append(out)
            threads.append(threading.Thread(target=self.http_client, args=(i, a.rate * 0.6 / a.http_threads, out)))
        for i in range(a.grpc_threads):
            out = []
            outs.append(out)
            threads.append(threading.Thread(target=self.grpc_client, args=(i, a.rate * 0.4 / a.grpc_threads, out)))
        for th in threads + [threading.Thread(target=self.swapper), threading.Thread(target=self.drifter)]:
            th.daemon = True
            th.start()
        chaos = [self.at(0.15, self.webhook_500, True), self.at(0.25, self.kill_sidecar),
                 self.at(0.35, self.webhook_500, False), self.at(0.45, self.mlflow_stop),
                 self.at(0.55, self.mlflow_start), self.at(0.70, self.kill_keel)]
        end = self.t0 + self.D
        while time.time() < end:
            time.sleep(min(1.0, max(0.0, end - time.time())))
        self.stop_traffic.set()
        for th in threads:
            th.join(timeout=30)
        for th in chaos:
            th.join(timeout=300)
        self.drift = False
        self.receiver.failing = False
        t_end = time.time()
        self.event("traffic stopped")
        # Recovery: every event offered must be delivered; the sidecar's backlog must empty.
        deadline = time.time() + a.recovery_timeout
        while time.time() < deadline:
            sc = self.scrape_sidecar()
            if not self.receiver.undelivered() and sc and sc["pending"] == 0 \
                    and not list(self.state_dir.rglob("*.json")):
                break
            time.sleep(1)
        self.event("recovery wait over", undelivered=len(self.receiver.undelivered()))
        time.sleep(max(2.0, a.scrape_every))
        with self.keel_lock:
            final = self.scrape_keel()  # traffic has stopped: exact
            if final:
                self.lifetimes[-1]["last"] = final
        sc = self.scrape_sidecar()
        if sc:
            self.sidecar_lifetimes[-1]["last"] = sc
        rc, took = self.keel.terminate()
        self.lifetimes[-1]["end"] = time.time()
        self.event("keel stopped (SIGTERM)", rc=rc, took_s=round(took, 2))
        self.keel_exit = {"rc": rc, "took_s": took}
        return self.figures(outs, t_end)

    def teardown(self):
        self.stop_traffic.set()
        self.stop_all.set()
        for p in (self.keel, self.sidecar):
            if p and p.alive():
                p.terminate(timeout=15)
        if getattr(self, "mlflow", None):
            self.mlflow.stop()
        if getattr(self, "receiver", None):
            self.receiver.close()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # --- figures ---

    def in_kill_window(self, t0: float, t1: float) -> bool:
        return any(t1 >= k0 and (k1 is None or t0 <= k1) for k0, k1 in self.kill_windows)

    def figures(self, outs: list[list], t_end: float) -> dict:
        res = [r for out in outs for r in out]
        protos = ("http", "grpc")
        req = {}
        errors_outside, lat = Counter(), {}
        sent_outside = 0
        failed_outside_examples = []
        for p, name in enumerate(protos):
            mine = [r for r in res if r[2] == p]
            outside = [r for r in mine if not self.in_kill_window(r[0], r[1])]
            sent_outside += len(outside)
            bad = [r for r in outside if not r[3]]
            for r in bad:
                errors_outside[name] += 1
                if len(failed_outside_examples) < 10:
                    failed_outside_examples.append({"t": round(r[0] - self.t0, 2), "protocol": name, "error": r[5]})
            okl = np.array([(r[1] - r[0]) * 1000 for r in outside if r[3]])
            req[name] = {"sent": len(mine), "ok": sum(1 for r in mine if r[3]),
                         "errors": sum(1 for r in mine if not r[3]),
                         "errors_in_kill_window": sum(1 for r in mine if not r[3]) - len(bad),
                         "errors_outside_kill_window": len(bad),
                         "rows_ok": sum(r[4] for r in mine if r[3])}
            lat[name] = {"p50_ms": round(float(np.percentile(okl, 50)), 3) if len(okl) else None,
                         "p99_ms": round(float(np.percentile(okl, 99)), 3) if len(okl) else None,
                         "max_ms": round(float(okl.max()), 3) if len(okl) else None}
        n_err = sum(errors_outside.values())
        error_kinds = Counter((r[5] or "")[:80] for r in res if not r[3] and not self.in_kill_window(r[0], r[1]))

        # rows: per process lifetime, from its last scrape
        lifetimes = []
        served = logged = 0.0
        dropped = Counter()
        uncertainty = 0
        for i, life in enumerate(self.lifetimes):
            last = life["last"] or {}
            s = sum(last.get("served", {}).values())
            lg = sum(last.get("logged", {}).values())
            d = Counter(last.get("dropped", {}))
            # Requests in flight during the last scrape: the counters were read at slightly different
            # moments, so these rows may sit in one and not yet the other.
            unc = after = 0
            if last and i < len(self.lifetimes) - 1:
                unc = sum(r[4] for r in res if r[0] <= last["t_end"] and r[1] >= last["t_start"])
                # rows the clients got answers for after the last scrape: served, never counted
                after = sum(r[4] for r in res if r[3] and last["t_start"] <= r[1] <= life["end"])
            served += s
            logged += lg
            dropped += d
            uncertainty += unc
            lifetimes.append({"pid": life["pid"], "start": round(life["start"] - self.t0, 2),
                              "ready_after_s": round((life["ready"] or life["start"]) - life["start"], 2),
                              "end": round((life["end"] or time.time()) - self.t0, 2),
                              "served": s, "logged": lg, "dropped": dict(d),
                              "balance": s - lg - d.get("queue_full", 0) - d.get("queue_bytes", 0), "uncertainty_rows": unc,
                              "client_rows_after_last_scrape": after,
                              "requests": last.get("requests"), "swaps": last.get("swaps")})
        client_rows_ok = sum(r[4] for r in res if r[3])
        balance = served - logged - dropped.get("queue_full", 0) - dropped.get("queue_bytes", 0)

        # parquet at the end
        spans = [(l["start"], l["end"] or time.time()) for l in self.lifetimes]
        pq_end = check_parquet(self.log_dir, spans)
        file_errors = dropped.get("file_error", 0)
        for life, in_files in zip(lifetimes, pq_end["prediction_rows_by_lifetime"]):
            life["rows_in_parquet"] = in_files
            life["rows_missing_from_parquet"] = life["logged"] - life["dropped"].get("file_error", 0) - in_files

        # webhook
        wh_lifetimes = [{"pid": l["pid"], **(l["last"] or {})} for l in self.sidecar_lifetimes]
        outcomes = Counter()
        for l in self.sidecar_lifetimes:
            outcomes.update((l["last"] or {}).get("deliveries", {}))
        offered = dict(self.receiver.offered)
        pending_at_kill = getattr(self, "pending_at_sidecar_kill", [])
        generated = set(offered) | set(pending_at_kill)
        webhook = {
            "events_generated": len(generated),
            "events_delivered": len(set(self.receiver.delivered) & generated),
            "undelivered": sorted(generated - set(self.receiver.delivered)),
            "bad_signatures": len(self.receiver.bad),
            "answered_500": self.receiver.answered_500,
            "pending_in_state_dir_at_sidecar_kill": len(pending_at_kill),
            "pending_at_kill_delivered_after_restart": len(set(pending_at_kill) & set(self.receiver.delivered)),
            "by_type": dict(Counter(e["type"] for e in offered.values())),
            "max_attempts_seen": max((e["attempts"] for e in offered.values()), default=0),
            "sidecar_outcomes": dict(outcomes),
            "sidecar_pending_at_end": (self.sidecar_lifetimes[-1]["last"] or {}).get("pending"),
            "state_dir_files_at_end": sorted(p.name for p in self.state_dir.rglob("*.json")),
            "sidecar_lifetimes": wh_lifetimes,
        }

        # RSS slope over the steady part: per lifetime, excluding the first minute (or first 20 % of a short run)
        skip = min(60.0, 0.2 * self.D)
        steady_t, steady_mb = [], []
        per_life = []
        for i, life in enumerate(self.lifetimes):
            pts = [(t, mb) for t, mb, li in self.rss if li == i and t >= (life["ready"] or life["start"]) + skip]
            if len(pts) >= 3:
                t = np.array([p[0] for p in pts])
                mb = np.array([p[1] for p in pts])
                slope = float(np.polyfit(t - t[0], mb, 1)[0] * 3600)
                per_life.append({"lifetime": i, "samples": len(pts), "first_mb": round(float(mb[0]), 1),
                                 "last_mb": round(float(mb[-1]), 1), "max_mb": round(float(mb.max()), 1),
                                 "slope_mb_per_hour": round(slope, 2), "span_s": round(float(t[-1] - t[0]), 1)})
                steady_t.append(t - t.mean())
                steady_mb.append(mb - mb.mean())
        pooled = None
        if steady_t:
            tt, mm = np.concatenate(steady_t), np.concatenate(steady_mb)
            if (tt ** 2).sum() > 0:
                pooled = float((tt * mm).sum() / (tt ** 2).sum() * 3600)

        duration = t_end - self.t0
        fig = {
            "duration_s": round(duration, 1),
            "swap_every_s": self.args.swap_every,
            "rate_target_rps": self.args.rate,
            "keel_bin": self.keel_bin,
            "requests": req,
            "requests_outside_kill_window": sent_outside,
            "errors_outside_kill_window": n_err,
            "error_rate_outside_kill_window": n_err / sent_outside if sent_outside else None,
            "error_kinds_outside_kill_window": dict(error_kinds.most_common(10)),
            "error_examples_outside_kill_window": failed_outside_examples,
            "kill_windows": [[round(a - self.t0, 2), round(b - self.t0, 2) if b else None]
                             for a, b in self.kill_windows],
            "latency": lat,
            "swaps": dict(self.swaps),
            "metrics_page": {"first": list(self.metrics_size[0][1:]) if self.metrics_size else None,
                             "last": list(self.metrics_size[-1][1:]) if self.metrics_size else None,
                             "max_lines": max((m[1] for m in self.metrics_size), default=None)},
            "rss": {"slope_mb_per_hour_pooled": round(pooled, 2) if pooled is not None else None,
                    "per_lifetime": per_life, "excluded_after_start_s": skip,
                    "samples": [[round(t - self.t0, 1), round(mb, 2), li] for t, mb, li in self.rss]},
            "rows": {"served": served, "logged": logged, "dropped": dict(dropped),
                     "served_minus_logged_minus_dropped_queue_full": balance,
                     "uncertainty_rows": uncertainty, "client_rows_ok": client_rows_ok,
                     "client_rows_ok_minus_served": client_rows_ok - served,
                     "lifetimes": lifetimes},
            "parquet": {
                "after_kill": self.parquet_after_kill,
                "at_end": pq_end,
                "rows_in_prediction_files": pq_end["prediction_rows"],
                "rows_logged_minus_file_errors": logged - file_errors,
                "rows_missing_from_files": logged - file_errors - pq_end["prediction_rows"],
            },
            "webhook": webhook,
            "keel_exit": self.keel_exit,
            "timeline": self.events,
            "workdir": str(self.work) if self.keep else None,
        }
        return fig


def _req_totals(samples) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for n, l, v in samples:
        if n == "keel_inference_requests_total":
            out[f"{l.get('protocol')}/{l.get('outcome')}"] += v
    return dict(out)


def check_parquet(log_dir: Path, spans: list[tuple[float, float]] = ()) -> dict:
    """Reads every Parquet file under the log folder with pyarrow; lists unfinished (`.tmp-*`) files.
    `spans` (unix seconds): prediction rows are also counted by which span their timestamp falls in."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    finished, unreadable, partial, other = 0, [], [], []
    pred_rows = fb_rows = 0
    by_span = [0] * len(spans)
    for path in sorted(log_dir.rglob("*")) if log_dir.exists() else []:
        if not path.is_file():
            continue
        name = path.name
        if name.endswith(".partial") or name.startswith("."):
            partial.append({"file": str(path.relative_to(log_dir)), "bytes": path.stat().st_size})
            continue
        if not name.endswith(".parquet"):
            other.append(str(path.relative_to(log_dir)))
            continue
        try:
            table = pq.read_table(path)
            n = table.num_rows
        except Exception as e:  # noqa: BLE001
            unreadable.append({"file": str(path.relative_to(log_dir)), "error": str(e)[:200]})
            continue
        finished += 1
        if name.startswith("predictions"):
            pred_rows += n
            if spans and "timestamp_ms" in table.column_names:
                ts = table.column("timestamp_ms")
                for i, (a, b) in enumerate(spans):
                    inside = pc.and_(pc.greater_equal(ts, int(a * 1000)), pc.less_equal(ts, int(b * 1000)))
                    by_span[i] += int(pc.sum(pc.cast(inside, "int64")).as_py() or 0)
        else:
            fb_rows += n
    return {"readable": finished, "unreadable": unreadable, "partial": partial, "other_files": other,
            "prediction_rows": pred_rows, "feedback_rows": fb_rows, "prediction_rows_by_lifetime": by_span}


def summary(f: dict) -> str:
    r, w, p = f["rows"], f["webhook"], f["parquet"]
    lines = [
        f"duration {f['duration_s']} s, swaps {f['swaps']}",
        "requests: " + ", ".join(f"{k} sent {v['sent']} ok {v['ok']} errors {v['errors']} "
                                 f"(outside kill window {v['errors_outside_kill_window']})"
                                 for k, v in f["requests"].items()),
        f"error rate outside kill window: {f['errors_outside_kill_window']}/{f['requests_outside_kill_window']}"
        f" = {f['error_rate_outside_kill_window']}",
        "latency: " + ", ".join(f"{k} p50 {v['p50_ms']} ms p99 {v['p99_ms']} ms" for k, v in f["latency"].items()),
        f"kill windows: {f['kill_windows']}",
        f"RSS slope (pooled, steady part): {f['rss']['slope_mb_per_hour_pooled']} MB/h; per lifetime "
        + "; ".join(f"#{x['lifetime']} {x['first_mb']}->{x['last_mb']} MB (max {x['max_mb']}) "
                    f"{x['slope_mb_per_hour']} MB/h over {x['span_s']} s" for x in f["rss"]["per_lifetime"]),
        f"rows: served {r['served']:.0f} = logged {r['logged']:.0f} + dropped(queue_full) "
        f"{r['dropped'].get('queue_full', 0):.0f}  -> balance {r['served_minus_logged_minus_dropped_queue_full']:.0f}"
        f" (uncertainty {r['uncertainty_rows']} rows); other drops {r['dropped']}; client rows ok {r['client_rows_ok']};"
        f" per lifetime in Parquet/missing: "
        + ", ".join(f"{x.get('rows_in_parquet')}/{x.get('rows_missing_from_parquet')}" for x in r["lifetimes"]),
        f"parquet: after kill readable {p['after_kill']['readable'] if p['after_kill'] else None} unreadable "
        f"{len(p['after_kill']['unreadable']) if p['after_kill'] else None} partial "
        f"{len(p['after_kill']['partial']) if p['after_kill'] else None}; at end readable {p['at_end']['readable']} "
        f"unreadable {len(p['at_end']['unreadable'])} partial {len(p['at_end']['partial'])}; rows in files "
        f"{p['rows_in_prediction_files']} vs logged-file_errors {p['rows_logged_minus_file_errors']:.0f} "
        f"(missing {p['rows_missing_from_files']:.0f})",
        f"webhook: generated {w['events_generated']} delivered {w['events_delivered']} undelivered "
        f"{len(w['undelivered'])} bad signatures {w['bad_signatures']} 500s {w['answered_500']}; pending at sidecar "
        f"kill {w['pending_in_state_dir_at_sidecar_kill']} -> delivered after restart "
        f"{w['pending_at_kill_delivered_after_restart']}; by type {w['by_type']}; outcomes {w['sidecar_outcomes']}",
        f"keel /metrics page (lines, bytes): first {f['metrics_page']['first']} last {f['metrics_page']['last']}",
        f"keel exit on SIGTERM: {f['keel_exit']}",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1800, help="seconds of traffic (default 1800)")
    p.add_argument("--swap-every", type=float, default=10, help="seconds between swaps (default 10)")
    p.add_argument("--rate", type=float, default=150, help="requests/s over all client threads (60%% HTTP)")
    p.add_argument("--http-threads", type=int, default=3)
    p.add_argument("--grpc-threads", type=int, default=2)
    p.add_argument("--max-requests", type=int, default=10**7, help="per client thread")
    p.add_argument("--rotate", type=float, default=60, help="--prediction-log-rotate for keel (s)")
    p.add_argument("--grace", type=float, default=2.0, help="seconds after keel is ready again still in the kill window")
    p.add_argument("--scrape-every", type=float, default=2.0)
    p.add_argument("--recovery-timeout", type=float, default=600,
                   help="how long to wait after traffic for every webhook event to be delivered")
    p.add_argument("--webhook-retry-after", type=int, default=None,
                   help="Retry-After (s) on the receiver's 500s (default: none, keel's own backoff)")
    p.add_argument("--workdir", help="scratch folder (kept); default a temporary one, removed")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--out", help="write the figures as JSON here")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    figures = Soak(args).run()
    print(summary(figures), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1, default=str))
        log(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

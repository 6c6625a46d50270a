#!/usr/bin/env python3
"""Retraining hook: receives Keel's drift webhook, retrains on the prediction log, registers the new
version in MLflow and moves the alias Keel follows. The other half of the closed loop (models/demo.py).

    KEEL_WEBHOOK_SECRET=whsec_... .venv/bin/python models/retrain_hook.py --listen 127.0.0.1:8090 \\
        --mlflow-uri http://127.0.0.1:5000 --model-name breast-cancer --keel-model breast-cancer \\
        --prediction-log-dir /var/lib/keel/log [--alias champion] [--secret-file F]

For every signed `dev.keel.drift.detected` (or `dev.keel.performance.degraded`) event of --keel-model:
  1. verify the Standard Webhooks signature (HMAC-SHA256 over `id.timestamp.body`, 401 otherwise),
     answer 202 at once and ignore redeliveries of a webhook-id already seen (Keel retries with it);
  2. in a background thread, wait until --min-rows labelled rows logged after the detection are in
     finished Parquet files (predictions joined with feedback on request_id and row): the traffic the
     model serves now, without the pre-drift rows that the alert's window still holds;
  3. fit standardisation + logistic regression on them, export it with make_models.logistic_regression,
     compute its baseline.json from the same rows with make_models.baseline;
  4. log both as a run's `model/` artifacts, register them as a new version of --model-name, move --alias.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import queue
import re
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_models import N_FEATURES, baseline, logistic_regression  # noqa: E402

RETRAIN_ON = {"dev.keel.drift.detected", "dev.keel.performance.degraded"}
# Standard Webhooks' replay window: older (or future) timestamps are refused even with a valid MAC.
TIMESTAMP_TOLERANCE_S = 300
EXPERIMENT = "keel-retrain"


def log(message: str):
    print(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]} [hook] {message}", flush=True)


def num(value) -> str:
    """Keel sends non-finite numbers as null."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


# --- Standard Webhooks -------------------------------------------------------------------------------

def signing_key(secret: str) -> bytes:
    """The key as Keel derives it: `whsec_<base64>` decoded, any other text used as raw bytes."""
    secret = secret.strip()
    if secret.startswith("whsec_"):
        encoded = secret[len("whsec_"):]
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return secret.encode()


def signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()


def verify(key: bytes, headers, body: bytes, now: float | None = None) -> str | None:
    """The webhook-id of a correctly signed, fresh delivery; None for anything else."""
    msg_id, timestamp, signatures = (headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and timestamp and signatures and timestamp.isdigit()):
        return None
    if abs((now or time.time()) - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
        return None
    expected = signature(key, msg_id, timestamp, body)
    # The header may carry several space-separated `v1,<sig>` entries (key rotation): any may match.
    given = [s.split(",", 1)[1] for s in signatures.split() if s.startswith("v1,")]
    return msg_id if any(hmac.compare_digest(expected, g) for g in given) else None


# --- The prediction log --------------------------------------------------------------------------------

def model_folder(log_dir: Path, model: str) -> Path:
    """Keel's folder for a model's log: anything but [A-Za-z0-9._-] becomes `_`."""
    return log_dir / re.sub(r"[^A-Za-z0-9._-]", "_", model)


def finished_files(folder: Path, kind: str, since_ms: int) -> list[Path]:
    """Finished `<kind>-<first_ms>-<last_ms>-<seq>.parquet` files holding rows at or after since_ms:
    the names tell, so no file is opened to find them (files being written are hidden `.tmp-*`)."""
    found = []
    for path in folder.glob(f"{kind}-*.parquet"):
        parts = path.stem.split("-")
        if len(parts) == 4 and parts[2].isdigit() and int(parts[2]) >= since_ms:
            found.append(path)
    return sorted(found)


def read(files: list[Path]) -> pd.DataFrame | None:
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None


def labelled_rows(log_dir: Path, model: str, since_ms: int) -> pd.DataFrame:
    """Logged rows at or after since_ms that have feedback, with their true label as `truth`."""
    folder = model_folder(log_dir, model)
    predictions = read(finished_files(folder, "predictions", since_ms))
    # Feedback arrives after its prediction, so a file of feedback for these rows ends after since_ms too.
    feedback = read(finished_files(folder, "feedback", since_ms))
    if predictions is None or feedback is None:
        return pd.DataFrame()
    predictions = predictions[predictions["timestamp_ms"] >= since_ms]
    truth = feedback["truth_value"] if "truth_label" not in feedback else \
        feedback["truth_value"].fillna(pd.to_numeric(feedback["truth_label"], errors="coerce"))
    feedback = feedback.assign(truth=truth).dropna(subset=["truth"])
    # A label sent twice counts once, the later one winning (a correction).
    feedback = feedback.sort_values("timestamp_ms").drop_duplicates(["request_id", "row"], keep="last")
    return predictions.merge(feedback[["request_id", "row", "truth"]], on=["request_id", "row"])


def wait_for_rows(log_dir: Path, model: str, since_ms: int, min_rows: int, timeout_s: float,
                  stop: threading.Event) -> pd.DataFrame:
    """Polls the log until min_rows labelled rows are there (rotation makes files appear every few
    seconds); `stop` cuts the wait short when the hook shuts down."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = labelled_rows(log_dir, model, since_ms)
        if len(rows) >= min_rows:
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rows)} labelled rows after {timeout_s:.0f} s (need {min_rows})")
        if stop.wait(0.25):
            raise RuntimeError(f"stopped while waiting for labelled rows ({len(rows)} of {min_rows})")


# --- Training ------------------------------------------------------------------------------------------

def train(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[bytes, float]:
    """Standardisation + logistic regression (make_models' recipe) on 80% of the rows; returns the ONNX
    model and its accuracy on the other 20%, which it never saw."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * 0.8)
    fit, held = order[:cut], order[cut:]
    scaler = StandardScaler().fit(x[fit])
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x[fit]), y[fit])
    accuracy = float((clf.predict(scaler.transform(x[held])) == y[held]).mean())
    return logistic_regression(scaler.mean_, scaler.scale_, clf.coef_[0], clf.intercept_[0]), accuracy


# --- MLflow --------------------------------------------------------------------------------------------

def register_version(client: MlflowClient, name: str, files: dict[str, bytes], params: dict | None = None,
                     metrics: dict | None = None) -> int:
    """Logs `files` as a run's `model/` artifacts (where Keel looks) and registers them as the next
    version of `name`."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id)
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, value)
    for key, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, key, value)
    with tempfile.TemporaryDirectory() as stage:
        for file, data in files.items():
            Path(stage, file).write_bytes(data)
        client.log_artifacts(run.info.run_id, stage, artifact_path="model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return int(version.version)


def next_version(client: MlflowClient, name: str) -> int:
    """Only written into baseline.json, where the version is informational (monitor/BASELINE.md)."""
    versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
    return max(versions, default=0) + 1


def feature_names(client: MlflowClient, name: str, version: int) -> list[str]:
    """The feature names of the version that drifted, from its baseline.json, so that the new version's
    CSI series carry the same `feature` labels; input_<i> when it has none."""
    try:
        run_id = client.get_model_version(name, str(version)).run_id
        with tempfile.TemporaryDirectory() as dst:
            path = client.download_artifacts(run_id, "model/baseline.json", dst)
            names = [f["name"] for f in json.loads(Path(path).read_text())["features"]]
        if len(names) == N_FEATURES:
            return names
    except Exception as error:  # noqa: BLE001 - any failure here only costs the names
        log(f"no feature names from version {version} ({error}); using input_<i>")
    return [f"input_{i}" for i in range(N_FEATURES)]


# --- The service ---------------------------------------------------------------------------------------

class RetrainHook:
    """The webhook receiver and its retraining worker. `events`, `retrains` and the counters let a
    caller (demo, test) observe each step; every entry carries time.time() of when it happened."""

    def __init__(self, listen: str, mlflow_uri: str, model_name: str, keel_model: str, log_dir: Path,
                 secret: str, alias: str = "champion", min_rows: int = 1000, wait_timeout_s: float = 120):
        self.mlflow_uri, self.model_name, self.keel_model = mlflow_uri, model_name, keel_model
        self.log_dir, self.alias, self.min_rows, self.wait_timeout_s = Path(log_dir), alias, min_rows, wait_timeout_s
        self.key = signing_key(secret)
        self.client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        self.events: list[dict] = []      # {"id", "received", "event"}: each webhook-id once
        self.retrains: list[dict] = []    # {"event_id", "version", "rows", "accuracy", "registered", "alias_moved"}
        self.failures: list[str] = []
        self.rejected = 0                 # deliveries with a missing, wrong or stale signature
        self.duplicates = 0               # redeliveries of a webhook-id already accepted
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        host, port = listen.rsplit(":", 1)
        self.server = ThreadingHTTPServer((host, int(port)), self._handler())
        self.url = f"http://{host}:{self.server.server_port}/hook"
        self._threads = [threading.Thread(target=self.server.serve_forever, daemon=True, name="hook-http"),
                         threading.Thread(target=self._work, daemon=True, name="hook-retrain")]

    def start(self) -> "RetrainHook":
        for thread in self._threads:
            thread.start()
        log(f"listening on {self.url}; retrains {self.keel_model} into MLflow {self.model_name}@{self.alias}")
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self._stopping.set()
        self._jobs.put(None)
        self._threads[1].join(timeout=60)

    def _handler(self):
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(hook.accept(self.headers, body))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass  # the hook logs its own steps

        return Handler

    def accept(self, headers, body: bytes) -> int:
        """The HTTP status for one delivery; queues the retraining, never runs it here, so that Keel's
        delivery is answered at once."""
        msg_id = verify(self.key, headers, body)
        if msg_id is None:
            with self._lock:
                self.rejected += 1
            log("rejected a delivery: missing, invalid or stale signature (401)")
            return 401
        try:
            event = json.loads(body)
        except ValueError:
            log(f"webhook {msg_id}: signed, but not JSON (400)")
            return 400
        with self._lock:
            if msg_id in self._seen:
                self.duplicates += 1
                log(f"webhook {msg_id} again: a redelivery, already accepted")
                return 202
            self._seen.add(msg_id)
            self.events.append({"id": msg_id, "received": time.time(), "event": event})
        data = event.get("data") or {}
        log(f"webhook {msg_id}: {event.get('type')} {data.get('model')} v{data.get('version')} "
            f"{data.get('metric')}={num(data.get('value'))} (threshold {data.get('threshold')}), "
            f"top {[(f.get('feature'), num(f.get('csi'))) for f in (data.get('top_features') or [])[:3]]}, "
            f"{len(data.get('files') or [])} log files")
        if event.get("type") in RETRAIN_ON and data.get("model") == self.keel_model:
            self._jobs.put((msg_id, event))
        return 202

    def _work(self):
        while (job := self._jobs.get()) is not None:
            msg_id, event = job
            try:
                self.retrains.append(self.retrain(msg_id, event))
            except Exception as error:  # noqa: BLE001 - one failed retraining must not stop the worker
                log(f"retraining for {msg_id} failed: {error!r}")
                self.failures.append(repr(error))

    def retrain(self, msg_id: str, event: dict) -> dict:
        data = event["data"]
        since_ms = int(data["window_end_ms"])
        log(f"waiting for {self.min_rows} labelled rows logged after the detection "
            f"({datetime.fromtimestamp(since_ms / 1000).strftime('%H:%M:%S.%f')[:-3]})")
        rows = wait_for_rows(self.log_dir, self.keel_model, since_ms, self.min_rows, self.wait_timeout_s,
                             self._stopping)
        x = rows[[f"input_{i}" for i in range(N_FEATURES)]].to_numpy(np.float32)
        y = rows["truth"].to_numpy().astype(np.int64)
        served_accuracy = float((rows["label"].to_numpy() == y).mean())
        log(f"training on {len(rows)} labelled rows (positives {y.mean():.2f}); the serving model "
            f"v{data['version']} got {served_accuracy:.3f} of them right")
        model, accuracy = train(x, y)
        version = next_version(self.client, self.model_name)
        names = feature_names(self.client, self.model_name, int(data["version"]))
        files = {"model.onnx": model, "baseline.json": baseline(self.keel_model, version, model, x, names)}
        log(f"trained: held-out accuracy {accuracy:.3f}; baseline.json from the same {len(rows)} rows")
        version = register_version(
            self.client, self.model_name, files,
            params={"trigger_event": msg_id, "trigger_metric": data.get("metric"), "rows": len(rows),
                    "since_ms": since_ms, "previous_version": data["version"]},
            metrics={"holdout_accuracy": accuracy, "served_accuracy": served_accuracy})
        registered = time.time()
        log(f"registered {self.model_name} version {version}")
        self.client.set_registered_model_alias(self.model_name, self.alias, str(version))
        log(f"moved alias {self.alias} -> version {version}")
        return {"event_id": msg_id, "version": version, "rows": len(rows), "accuracy": accuracy,
                "served_accuracy": served_accuracy, "registered": registered, "alias_moved": time.time()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--mlflow-uri", required=True)
    parser.add_argument("--model-name", required=True, help="registered model in MLflow")
    parser.add_argument("--keel-model", required=True, help="Keel's model (directory) name, as in the events")
    parser.add_argument("--prediction-log-dir", type=Path, required=True)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--secret-file", type=Path, help="else KEEL_WEBHOOK_SECRET")
    parser.add_argument("--min-rows", type=int, default=1000, help="labelled rows to train on")
    args = parser.parse_args()
    secret = args.secret_file.read_text() if args.secret_file else os.environ.get("KEEL_WEBHOOK_SECRET")
    if not secret:
        parser.error("no secret: --secret-file or KEEL_WEBHOOK_SECRET")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hook = RetrainHook(args.listen, args.mlflow_uri, args.model_name, args.keel_model,
                       args.prediction_log_dir, secret, args.alias, args.min_rows).start()
    while not stop.wait(1):
        pass
    log("stopping")
    hook.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

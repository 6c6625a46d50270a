#!/usr/bin/env python3
"""Retraining hook: receives Keel's drift webhook and starts the retraining pipeline
(deploy/kubeflow/retrain_pipeline.py), which trains a challenger on the prediction log, evaluates it against
the champion, registers it in MLflow and moves the alias Keel follows if it won. The other half of the
closed loop (models/demo.py).

    KEEL_WEBHOOK_SECRET=whsec_... .venv/bin/python models/retrain_hook.py --listen 127.0.0.1:8090 \\
        --mlflow-uri http://127.0.0.1:5000 --model-name breast-cancer --keel-model breast-cancer \\
        --prediction-log-dir /var/lib/keel/log [--alias champion] [--secret-file F] \\
        [--kfp-host URL | --pipeline-root DIR] [--pipeline-arg metric=roc_auc ...]

For every signed `dev.keel.drift.detected` (or `dev.keel.performance.degraded`) event of --keel-model:
  1. verify the Standard Webhooks signature (HMAC-SHA256 over `id.timestamp.body`, 401 otherwise),
     answer 202 at once and ignore redeliveries of a webhook-id already seen (Keel retries with it);
  2. in a background thread, start the pipeline with the event's detection time (`window_end_ms`: it
     trains on rows logged after it, the traffic the model serves now, once --min-rows labelled rows are
     in finished Parquet files) and the webhook-id:
       - by default a local run (kfp.local, in a child process of this interpreter, its steps' outputs and
         log under --pipeline-root), whose outputs (winner, versions, scores) are recorded;
       - with --kfp-host (or KFP_HOST) a run of the compiled spec, deploy/kubeflow/retrain_pipeline.yaml,
         on that KFP API endpoint; the run id is recorded. --prediction-log-dir must then be what the
         cluster reads (an s3:// URI, or the path of a volume mounted into the steps).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "deploy/kubeflow/retrain_pipeline.py"
PIPELINE_SPEC = ROOT / "deploy/kubeflow/retrain_pipeline.yaml"

RETRAIN_ON = {"dev.keel.drift.detected", "dev.keel.performance.degraded"}
# Standard Webhooks' replay window: older (or future) timestamps are refused even with a valid MAC.
TIMESTAMP_TOLERANCE_S = 300
EXPERIMENT = "keel-retrain"  # the KFP experiment of submitted runs, and the MLflow one of their results


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


# --- The pipeline --------------------------------------------------------------------------------------

def run_local_pipeline(arguments: dict, pipeline_root: Path, stop: threading.Event | None = None) -> dict:
    """Runs the pipeline with kfp.local in a child process (kfp.local's settings are per process, and its
    steps' logs go to `pipeline_root/run.log`, not to this process's output); returns its outputs.
    Raises RuntimeError with the failing step's error when the run fails, or when `stop` is set."""
    pipeline_root = Path(pipeline_root)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    outputs, log_file = pipeline_root / "outputs.json", pipeline_root / "run.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(PIPELINE), "run-local", "--pipeline-root", str(pipeline_root),
             "--arguments", json.dumps(arguments), "--outputs", str(outputs)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                try:
                    proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    if stop is not None and stop.is_set():
                        raise RuntimeError("stopped while the pipeline was running") from None
        finally:
            if proc.poll() is None:  # its steps run in their own processes: end the whole group
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    if proc.returncode != 0:
        lines = log_file.read_text(errors="replace").splitlines()
        # A step's exception is the last line of its traceback; kfp.local then says which task failed.
        errors = [line.strip() for line in lines if "Error:" in line or "FAILURE" in line]
        raise RuntimeError(f"the pipeline failed (exit {proc.returncode}, log {log_file}): "
                           + (" | ".join(errors[-3:]) or " | ".join(lines[-5:])))
    return json.loads(outputs.read_text())


def submit_pipeline(host: str, arguments: dict, run_name: str, experiment: str = EXPERIMENT) -> str:
    """Starts a run of the compiled spec on a KFP API endpoint (kfp.Client); returns its run id."""
    import kfp

    client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_package(str(PIPELINE_SPEC), arguments=arguments, run_name=run_name,
                                                  experiment_name=experiment)
    return run.run_id


# --- The service ---------------------------------------------------------------------------------------

class RetrainHook:
    """The webhook receiver and its pipeline starter. `events`, `retrains` and the counters let a caller
    (demo, test) observe each step; every entry carries time.time() of when it happened.

    `log_dir` is what the pipeline reads (a folder, or a URI for a cluster); `pipeline_args` adds or
    overrides pipeline parameters (holdout_fraction, metric, min_improvement, ...); `kfp_host` submits
    runs there instead of running them locally under `pipeline_root` (default: a temporary folder)."""

    def __init__(self, listen: str, mlflow_uri: str, model_name: str, keel_model: str, log_dir: Path | str,
                 secret: str, alias: str = "champion", min_rows: int = 1000, wait_timeout_s: float = 120,
                 kfp_host: str | None = None, pipeline_root: Path | None = None, pipeline_args: dict | None = None,
                 experiment: str = EXPERIMENT):
        self.mlflow_uri, self.model_name, self.keel_model = mlflow_uri, model_name, keel_model
        self.log_dir, self.alias, self.min_rows, self.wait_timeout_s = str(log_dir), alias, min_rows, wait_timeout_s
        self.kfp_host, self.pipeline_args, self.experiment = kfp_host, dict(pipeline_args or {}), experiment
        self.pipeline_root = Path(pipeline_root or tempfile.mkdtemp(prefix="keel-retrain-"))
        self.key = signing_key(secret)
        self.events: list[dict] = []      # {"id", "received", "event"}: each webhook-id once
        # local: {"event_id", "started", "winner", "version", "champion_version", "rows", "accuracy",
        #         "champion_accuracy", "served_accuracy", "alias_version", "registered", "alias_moved", "outputs"}
        # KFP:   {"event_id", "started", "run_id"}
        self.retrains: list[dict] = []
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
        where = f"KFP at {self.kfp_host}" if self.kfp_host else f"kfp.local under {self.pipeline_root}"
        log(f"listening on {self.url}; retrains {self.keel_model} into MLflow {self.model_name}@{self.alias} "
            f"with the pipeline ({where})")
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

    def arguments(self, msg_id: str, event: dict) -> dict:
        """The pipeline's parameters for one event."""
        data = event["data"]
        return {"prediction_log_dir": self.log_dir, "keel_model": self.keel_model, "tracking_uri": self.mlflow_uri,
                "registered_model": self.model_name, "alias": self.alias, "since_ms": int(data["window_end_ms"]),
                "min_rows": self.min_rows, "wait_timeout_s": float(self.wait_timeout_s), "trigger_event": msg_id,
                "served_version": int(data.get("version") or 0), **self.pipeline_args}

    def retrain(self, msg_id: str, event: dict) -> dict:
        arguments = self.arguments(msg_id, event)
        since = datetime.fromtimestamp(arguments["since_ms"] / 1000).strftime("%H:%M:%S.%f")[:-3]
        started = time.time()
        if self.kfp_host:
            run_id = submit_pipeline(self.kfp_host, arguments, run_name=f"{EXPERIMENT}-{msg_id}",
                                     experiment=self.experiment)
            log(f"started run {run_id} on {self.kfp_host} for {msg_id} (rows logged after {since})")
            return {"event_id": msg_id, "started": started, "run_id": run_id}
        root = self.pipeline_root / f"run-{len(self.retrains) + len(self.failures) + 1}"
        log(f"running the pipeline locally for {msg_id}: {self.min_rows} labelled rows logged after {since}, "
            f"challenger vs {self.model_name}@{self.alias} (log {root / 'run.log'})")
        out = run_local_pipeline(arguments, root, self._stopping)
        log(f"pipeline done in {time.time() - started:.1f} s: {out['rows']} rows, challenger "
            f"v{out['challenger_version']} {num(out['challenger_score'])} vs champion v{out['champion_version']} "
            f"{num(out['champion_score'])}: the {out['winner']} wins; {self.alias} -> v{out['alias_version']}")
        return {"event_id": msg_id, "started": started, "winner": out["winner"], "version": out["challenger_version"],
                "champion_version": out["champion_version"], "rows": out["rows"],
                "accuracy": out["challenger_score"], "champion_accuracy": out["champion_score"],
                "served_accuracy": out["served_accuracy"], "alias_version": out["alias_version"],
                "registered": out["registered_at"], "alias_moved": out["promoted_at"] if out["alias_moved"] else None,
                "outputs": out}


def pipeline_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value as JSON when it parses (numbers, quoted strings), else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--mlflow-uri", required=True)
    parser.add_argument("--model-name", required=True, help="registered model in MLflow")
    parser.add_argument("--keel-model", required=True, help="Keel's model (directory) name, as in the events")
    parser.add_argument("--prediction-log-dir", required=True,
                        help="Keel's --prediction-log-dir, or the URI the pipeline reads it from (s3://bucket/prefix)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--secret-file", type=Path, help="else KEEL_WEBHOOK_SECRET")
    parser.add_argument("--min-rows", type=int, default=1000, help="labelled rows to train and evaluate on")
    parser.add_argument("--wait-timeout", type=float, default=120,
                        help="seconds the pipeline waits for them before failing")
    parser.add_argument("--kfp-host", default=os.environ.get("KFP_HOST"),
                        help="KFP API endpoint to submit runs to (else KFP_HOST; unset: run locally with kfp.local)")
    parser.add_argument("--kfp-experiment", default=EXPERIMENT, help="KFP experiment of submitted runs")
    parser.add_argument("--pipeline-root", type=Path, help="local runs' outputs and logs (default: a temporary folder)")
    parser.add_argument("--pipeline-arg", type=pipeline_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="another pipeline parameter, e.g. metric=roc_auc, min_improvement=0.01 (repeatable)")
    args = parser.parse_args()
    secret = args.secret_file.read_text() if args.secret_file else os.environ.get("KEEL_WEBHOOK_SECRET")
    if not secret:
        parser.error("no secret: --secret-file or KEEL_WEBHOOK_SECRET")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hook = RetrainHook(args.listen, args.mlflow_uri, args.model_name, args.keel_model, args.prediction_log_dir,
                       secret, args.alias, args.min_rows, args.wait_timeout, kfp_host=args.kfp_host,
                       pipeline_root=args.pipeline_root, pipeline_args=dict(args.pipeline_arg),
                       experiment=args.kfp_experiment).start()
    while not stop.wait(1):
        pass
    log("stopping")
    hook.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The closed MLOps loop, end to end, on real components (`make demo`):

  MLflow (sqlite) holds breast-cancer v1 under the alias `champion`; Keel serves whatever the alias
  points at, logs every row to Parquet and watches drift; traffic is replayed with true labels sent
  back as feedback; two features drift by 2 training standard deviations; Keel's CSI rule fires a
  signed webhook; models/retrain_hook.py starts the retraining pipeline (deploy/kubeflow/, run with
  kfp.local), which trains a challenger on the logged, labelled, drifted rows, beats v1 on a holdout,
  registers v2 and moves the alias; Keel picks v2 up, starts a fresh window against v2's baseline, and
  the drift is gone there. Every step is printed with its time; the summary gives drift onset -> v2
  serving. The pipeline's own log (each step's output) is in <workdir>/kfp/run-1/run.log.

    KEEL_BIN=target/release/keel .venv/bin/python models/demo.py [--rate 1000] [--workdir DIR]

KEEL_BIN defaults to target/debug/keel (as for the tests); ONNX Runtime comes from ORT_DYLIB_PATH or the
.venv. tests/test_closed_loop.py runs this same loop (ClosedLoop) and asserts each step.
"""

import argparse
import base64
import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
# The building blocks: Keel and MLflow launchers from the tests, the hook and traffic from models/.
sys.path[:0] = [str(ROOT / "models"), str(ROOT / "tests")]
from conftest import Keel  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402
from retrain_hook import RetrainHook  # noqa: E402
from traffic import Traffic, post  # noqa: E402

MODEL = "breast-cancer"          # Keel's model directory and the registered model's name
ALIAS = "champion"
V1_DIR = ROOT / "models/breast-cancer/1"
SHIFT = {"mean radius": 2.0, "worst area": 2.0}   # training standard deviations
FIRE, CLEAR = 0.25, 0.1          # the csi rule's thresholds (Keel's defaults, written out below)
MIN_SAMPLES = 500                # rows before Keel reports CSI
SETTLE_ROWS = 2000               # rows of the new version's window before its CSI is judged
MODEL_TOML = """\
[source.mlflow]
tracking_uri = "{uri}"
name = "{name}"
alias = "{alias}"
poll_interval = 0.5

[monitor]
task = "classifier"
prediction_output = "label"
positive_label = 1

[[monitor.rules]]
metric = "csi"
fire = {fire}
clear = {clear}
consecutive = 2
cooldown_s = 30
"""


def register_version(client, name: str, files: dict[str, bytes]) -> int:
    """Logs `files` as a run's `model/` artifacts (where Keel looks) and registers them as the next
    version of `name`: how the demo puts v1 into the registry."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    experiment = client.get_experiment_by_name("keel-demo")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("keel-demo")
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as stage:
        for file, data in files.items():
            Path(stage, file).write_bytes(data)
        client.log_artifacts(run.info.run_id, stage, artifact_path="model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return int(version.version)


def say(message: str, when: float | None = None):
    stamp = datetime.fromtimestamp(when or time.time()).strftime("%H:%M:%S.%f")[:-3]
    print(f"{stamp} [demo] {message}", flush=True)


# --- Keel's metrics ------------------------------------------------------------------------------------

SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(addr: str, name: str, **labels) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of `name` whose labels include `labels`."""
    found = []
    for line in requests.get(f"http://{addr}/metrics", timeout=5).text.splitlines():
        match = SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        have = dict(LABEL.findall(match.group(2)))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            found.append((have, float(match.group(3))))
    return found


def window_rows(addr: str, version: int) -> int:
    rows = samples(addr, "keel_drift_window_rows", model=MODEL, version=version)
    return int(rows[0][1]) if rows else 0


def csi(addr: str, version: int) -> dict[str, float]:
    """CSI per feature of a version's window; empty until the window holds MIN_SAMPLES rows."""
    return {labels["feature"]: value for labels, value in samples(addr, "keel_drift_csi", model=MODEL, version=version)}


# --- Traffic -------------------------------------------------------------------------------------------

class Replay:
    """Paced traffic in a background thread: `rate` rows/s in requests of `batch` rows, the true labels
    posted as feedback after every few requests (a labelling process that keeps up, so a retraining has
    labels), the drift switched on live by setting `shift`."""

    def __init__(self, url: str, rate: float, batch: int = 50, feedback_every: int = 5):
        self.traffic = Traffic(url, MODEL, seed=0, prefix="demo")
        self.url, self.rate, self.batch, self.feedback_every = url, rate, batch, feedback_every
        self.shift: dict[str, float] | None = None
        self.rows_by_version: dict[str, int] = {}
        self.errors: list[str] = []
        self.labelled = 0  # entries of traffic.sent whose labels were posted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="replay")

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self):
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                for response in self.traffic.send(self.batch, self.batch, self.shift):
                    version = response["model_version"]
                    self.rows_by_version[version] = self.rows_by_version.get(version, 0) + self.batch
                if len(self.traffic.sent) - self.labelled >= self.feedback_every:
                    self._feedback()
                next_at += self.batch / self.rate
                # Pacing, not waiting on a condition: the rate is what the demo's timeline is made of.
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        except Exception as error:  # noqa: BLE001 - reported by the loop's waits
            self.errors.append(repr(error))

    def _feedback(self):
        sent = self.traffic.sent[self.labelled:]
        items = [{"id": request_id, "row": row, "label": int(label)}
                 for request_id, labels, _ in sent for row, label in enumerate(labels)]
        post(f"{self.url}/v2/models/{MODEL}/feedback", {"feedback": items})
        self.labelled += len(sent)


# --- The loop ------------------------------------------------------------------------------------------

@dataclass
class Result:
    v1: int
    new_version: int = 0
    times: dict[str, float] = field(default_factory=dict)   # step -> time.time()
    csi_v1_undrifted: dict[str, float] = field(default_factory=dict)
    csi_v1_drifted: dict[str, float] = field(default_factory=dict)
    csi_new: dict[str, float] = field(default_factory=dict)
    new_window_rows: int = 0
    retrain: dict = field(default_factory=dict)

    @property
    def onset_to_serving(self) -> float:
        return self.times["new_serving"] - self.times["drift_onset"]

    @property
    def recovered(self) -> bool:
        return bool(self.csi_new) and all(self.csi_new[f] < CLEAR for f in SHIFT)


class ClosedLoop(contextlib.ExitStack):
    """MLflow, the retraining hook and Keel, started on entry and stopped on exit (also on an error or
    Ctrl-C), newest first; run() drives the loop once and returns what it saw."""

    def __init__(self, workdir: Path, rate: float = 1000):
        super().__init__()
        self.workdir, self.rate = Path(workdir), rate
        self.secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()

    def __enter__(self) -> "ClosedLoop":
        super().__enter__()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        (self.workdir / "mlflow").mkdir(parents=True, exist_ok=True)
        say("starting MLflow (sqlite store, artifacts served by the tracking server)")
        self.mlflow = MlflowServer(self.workdir / "mlflow")
        self.callback(say, "MLflow stopped")
        self.callback(self.mlflow.stop)
        say(f"MLflow at {self.mlflow.uri}")
        self.v1 = register_version(self.mlflow.client, MODEL, {
            "model.onnx": (V1_DIR / "model.onnx").read_bytes(), "baseline.json": (V1_DIR / "baseline.json").read_bytes()})
        self.mlflow.set_alias(MODEL, ALIAS, self.v1)
        say(f"registered {MODEL} v{self.v1} (models/breast-cancer/1) and set {ALIAS} -> {self.v1}")

        log_dir = self.workdir / "prediction-log"
        self.hook = RetrainHook("127.0.0.1:0", self.mlflow.uri, MODEL, MODEL, log_dir, self.secret, ALIAS,
                                pipeline_root=self.workdir / "kfp").start()
        self.callback(say, "retraining hook stopped")
        self.callback(self.hook.stop)

        repo = self.workdir / "repository"
        (repo / MODEL).mkdir(parents=True, exist_ok=True)
        (repo / MODEL / "model.toml").write_text(
            MODEL_TOML.format(uri=self.mlflow.uri, name=MODEL, alias=ALIAS, fire=FIRE, clear=CLEAR))
        secret_file = self.workdir / "webhook-secret"
        secret_file.write_text(self.secret)
        secret_file.chmod(0o600)
        self.keel = Keel(repo, "--repository-poll", "0.5", "--cache-dir", str(self.workdir / "cache"),
                         "--prediction-log-dir", str(log_dir), "--prediction-log-rotate", "2",
                         "--monitor-window", "60", "--monitor-evaluate-every", "0.5",
                         "--monitor-min-samples", str(MIN_SAMPLES), "--webhook-url", self.hook.url,
                         "--webhook-secret-file", str(secret_file), "--state-dir", str(self.workdir / "state"))
        self.callback(self._stop_keel)
        say(f"Keel at http://{self.keel.http} (metrics {self.keel.metrics}): {MODEL} from MLflow "
            f"{MODEL}@{ALIAS}, embedded monitor, webhook -> {self.hook.url}, prediction log {log_dir}")
        self.replay = Replay(f"http://{self.keel.http}", self.rate)
        self.callback(self.replay.stop)

    def _stop_keel(self):
        code = self.keel.stop()
        say(f"Keel stopped (exit {code})")

    # --- waiting on conditions ---

    def wait(self, what: str, check, timeout: float = 60, every: float = 0.1):
        """Polls `check` until it returns something truthy; fails early when a component died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replay.errors:
                raise RuntimeError(f"traffic failed while waiting for {what}: {self.replay.errors[0]}")
            if self.keel.proc.poll() is not None:
                raise RuntimeError(f"Keel exited while waiting for {what}:\n" + "".join(self.keel.log[-20:]))
            if self.hook.failures:
                raise RuntimeError(f"the retraining failed: {self.hook.failures[0]}")
            result = check()
            if result:
                return result
            time.sleep(every)
        raise TimeoutError(f"no {what} after {timeout:.0f} s; Keel's last lines:\n" + "".join(self.keel.log[-15:]))

    def serving(self) -> list[str]:
        response = requests.get(f"http://{self.keel.http}/v2/models/{MODEL}", timeout=5)
        return response.json().get("versions", []) if response.ok else []

    def wait_serving(self, version: int, timeout: float = 60) -> float:
        self.wait(f"Keel serving v{version}", lambda: self.serving() == [str(version)], timeout, every=0.05)
        return time.time()

    def full_window(self, version: int, rows: int) -> dict[str, float] | None:
        """The version's CSI once its window holds `rows` rows (rows and CSI come from one scrape's
        evaluation, so the values describe at least that many rows)."""
        values = csi(self.keel.metrics, version)
        return values if values and window_rows(self.keel.metrics, version) >= rows else None

    # --- the loop ---

    def run(self) -> Result:
        result = Result(v1=self.v1)
        t, addr = result.times, self.keel.metrics

        def step(name: str, message: str, when: float | None = None):
            t[name] = when or time.time()
            onset = t.get("drift_onset")
            suffix = f"   [drift onset +{t[name] - onset:.2f} s]" if onset and name != "drift_onset" else ""
            say(message + suffix, t[name])

        step("v1_serving", f"1. Keel serving {MODEL} v{self.v1}", self.wait_serving(self.v1))
        self.replay.start()
        say(f"   traffic: {self.rate:.0f} rows/s in requests of {self.replay.batch} rows, true labels as feedback")
        result.csi_v1_undrifted = self.wait(f"v{self.v1}'s window of {2 * MIN_SAMPLES} rows",
                                            lambda: self.full_window(self.v1, 2 * MIN_SAMPLES))
        worst = max(result.csi_v1_undrifted.items(), key=lambda kv: kv[1])
        step("v1_undrifted", f"   undrifted: v{self.v1}'s window {window_rows(addr, self.v1)} rows, "
                             f"max CSI {worst[1]:.3f} ({worst[0]}), under {FIRE}")

        self.replay.shift = SHIFT
        step("drift_onset", "2. drift onset: " + ", ".join(f"{f} +{k:g} std" for f, k in SHIFT.items()))

        def over():
            values = csi(addr, self.v1)
            return values if any(values.get(f, 0) >= FIRE for f in SHIFT) else None
        result.csi_v1_drifted = self.wait("CSI over the threshold", over)
        step("csi_over", "3. CSI over the threshold: " + ", ".join(
            f"{f} {result.csi_v1_drifted[f]:.3f}" for f in SHIFT) + f" (fire at {FIRE}, 2 evaluations in a row)")

        event = self.wait("the webhook", lambda: self.hook.events and self.hook.events[0])
        data = event["event"]["data"]
        step("webhook", f"4. webhook received: {event['event']['type']} {data['metric']}={data['value']:.3f}, "
                        f"signature valid, id {event['id']}", event["received"])

        retrain = self.wait("the retraining pipeline", lambda: self.hook.retrains and self.hook.retrains[0],
                            timeout=180)
        result.retrain, result.new_version = retrain, retrain["version"]
        step("registered", f"5. pipeline: trained on {retrain['rows']} labelled drifted rows; on the holdout the "
                           f"challenger got {retrain['accuracy']:.3f} right, champion v{retrain['champion_version']} "
                           f"{retrain['champion_accuracy']:.3f}; registered v{result.new_version}",
             retrain["registered"])
        if retrain["winner"] != "challenger":
            raise RuntimeError(f"the champion v{retrain['champion_version']} won on the holdout, so {ALIAS} stays: "
                               f"{retrain['outputs']}")

        # Read back from the registry rather than trusting the hook's word for it.
        self.wait(f"{ALIAS} -> {result.new_version} in MLflow",
                  lambda: int(self.mlflow.client.get_model_version_by_alias(MODEL, ALIAS).version) == result.new_version)
        step("alias_moved", f"6. alias {ALIAS} -> v{result.new_version} in MLflow", retrain["alias_moved"])

        step("new_serving", f"7. Keel serving v{result.new_version}", self.wait_serving(result.new_version))
        self.wait(f"v{result.new_version}'s window", lambda: window_rows(addr, result.new_version) > 0)
        step("new_window", f"8. new window started for v{result.new_version}, against its own baseline")

        result.csi_new = self.wait(f"v{result.new_version}'s window of {SETTLE_ROWS} rows",
                                   lambda: self.full_window(result.new_version, SETTLE_ROWS))
        result.new_window_rows = window_rows(addr, result.new_version)
        verdict = "drift back under the threshold" if result.recovered else f"STILL DRIFTING (clear at {CLEAR})"
        step("settled", f"9. {verdict} on v{result.new_version}: " + ", ".join(
            f"{f} {result.csi_new[f]:.3f}" for f in SHIFT) + f" over {result.new_window_rows} rows of the same drifted traffic")
        self.replay.stop()
        return result


def summary(result: Result):
    onset = result.times["drift_onset"]
    print("\n  step                          since drift onset")
    for name in ("csi_over", "webhook", "registered", "alias_moved", "new_serving", "new_window", "settled"):
        print(f"  {name:<28} {result.times[name] - onset:8.2f} s")
    print(f"\n  drift onset -> v{result.new_version} serving: {result.onset_to_serving:.2f} s")
    print(f"  shifted features' CSI: v{result.v1} " + ", ".join(f"{result.csi_v1_drifted[f]:.3f}" for f in SHIFT)
          + f" -> v{result.new_version} " + ", ".join(f"{result.csi_new[f]:.3f}" for f in SHIFT) + "\n")


def interrupt(*_):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="rows per second of replayed traffic")
    parser.add_argument("--workdir", type=Path, help="keep MLflow, the repository and the logs here "
                                                      "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the `with` blocks stop everything either way.
    signal.signal(signal.SIGTERM, interrupt)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-demo-")))
        try:
            with ClosedLoop(workdir, args.rate) as loop:
                result = loop.run()
        except KeyboardInterrupt:
            say("interrupted; everything stopped")
            return 130
    summary(result)
    return 0 if result.recovered else 1


if __name__ == "__main__":
    sys.exit(main())

"""The retraining loop as a Kubeflow pipeline (deploy/kubeflow/retrain_pipeline.py): the committed spec is
current and is the compiler's output; the pipeline runs end to end with kfp.local on real Parquet files
written by Keel and a real MLflow server, moving the alias when the challenger beats the champion on the
holdout and leaving it when it does not; and the retraining hook submits the compiled spec to a KFP API
endpoint when given one."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from conftest import ROOT, Keel
from mlflow_server import MlflowServer

sys.path[:0] = [str(ROOT / "deploy/kubeflow"), str(ROOT / "models")]
_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in deploy/
import retrain_pipeline  # noqa: E402

sys.dont_write_bytecode = _bytecode
from retrain_hook import RetrainHook, run_local_pipeline, signature, signing_key  # noqa: E402
from traffic import Traffic  # noqa: E402

MODEL = "breast-cancer"
ALIAS = "champion"
V1 = ROOT / "models/breast-cancer/1"
SHIFT = {"mean radius": 2.0, "worst area": 2.0}  # the demo's drift: v1 loses accuracy on it
ROWS = 1500
REGENERATE = "regenerate it with `make kubeflow` (.venv/bin/python deploy/kubeflow/retrain_pipeline.py compile)"


# --- The compiled spec -------------------------------------------------------------------------------

def test_committed_spec_is_current():
    committed = retrain_pipeline.SPEC.read_text()
    spec = retrain_pipeline.SPEC.relative_to(ROOT)
    assert committed == retrain_pipeline.compile_text(), f"{spec} is stale: {REGENERATE}"


def test_committed_spec_is_the_compilers_output(tmp_path):
    """The committed file is only restyled (for yamllint): as data it is what kfp's compiler writes."""
    raw = retrain_pipeline.compile_raw(tmp_path / "raw.yaml").read_text()
    assert yaml.safe_load(raw) == yaml.safe_load(retrain_pipeline.SPEC.read_text())


def executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def test_local_runs_the_same_pipeline_without_installing(tmp_path):
    """kfp.local runs build(local=True): the same DAG, components and code, without the pip installs that
    each step does on a cluster (the local interpreter has the packages)."""
    cluster = yaml.safe_load(retrain_pipeline.SPEC.read_text())
    local = yaml.safe_load(retrain_pipeline.compile_raw(tmp_path / "local.yaml", local=True).read_text())
    for name, executor in executors(cluster).items():
        command = executor["container"]["command"]
        # sh -c "<pip install ...> && $0 $@"  sh -ec "<run the executor>"  <the step's code>
        assert command[:2] == ["sh", "-c"] and "pip install" in command[2] and "'kfp==" in command[2], name
        assert executors(local)[name]["container"]["command"] == command[3:], name
        executor["container"]["command"] = command[3:]
    assert cluster == local
    # Every step installs what it imports, at the versions the tests pin.
    pins = retrain_pipeline.requirements()
    committed = executors(yaml.safe_load(retrain_pipeline.SPEC.read_text()))
    installs = " ".join(executor["container"]["command"][2] for executor in committed.values())
    for package in ("numpy", "pandas", "pyarrow", "scikit-learn", "onnx", "onnxruntime"):
        assert f"'{package}=={pins[package]}'" in installs, package
    assert f"'mlflow-skinny=={pins['mlflow']}'" in installs


# --- End to end with kfp.local ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """MLflow with breast-cancer v1 as the champion; a prediction log of ROWS drifted rows, each with its
    true label, written by Keel (stopped afterwards, so every row is in a finished file)."""
    work = tmp_path_factory.mktemp("kubeflow")
    mlflow = MlflowServer(work / "mlflow")
    try:
        v1 = mlflow.register(MODEL, {"model.onnx": (V1 / "model.onnx").read_bytes(),
                                     "baseline.json": (V1 / "baseline.json").read_bytes()})
        mlflow.set_alias(MODEL, ALIAS, v1)
        repo = work / "repository"
        shutil.copytree(V1, repo / MODEL / "1")
        (repo / MODEL / "model.toml").write_text(
            '[monitor]\ntask = "classifier"\nprediction_output = "label"\npositive_label = 1\nrules = []\n')
        log_dir = work / "prediction-log"
        keel = Keel(repo, "--prediction-log-dir", str(log_dir), "--prediction-log-rotate", "1")
        try:
            start_ms = int(time.time() * 1000)
            traffic = Traffic(f"http://{keel.http}", MODEL, seed=1, prefix="kfp")
            traffic.send(ROWS, 100, SHIFT)
            assert traffic.feedback()["received"] == ROWS
        finally:
            assert keel.stop() == 0, "".join(keel.log[-20:])
        yield {"mlflow": mlflow, "log_dir": log_dir, "v1": v1, "start_ms": start_ms, "work": work}
    finally:
        mlflow.stop()


def arguments(world, **extra) -> dict:
    return {"prediction_log_dir": str(world["log_dir"]), "keel_model": MODEL, "tracking_uri": world["mlflow"].uri,
            "registered_model": MODEL, "alias": ALIAS, "since_ms": world["start_ms"], "min_rows": ROWS,
            "wait_timeout_s": 5.0, **extra}


def champion(world) -> int:
    return int(world["mlflow"].client.get_model_version_by_alias(MODEL, ALIAS).version)


@pytest.fixture(scope="module")
def challenger_run(world):
    """The pipeline on the drifted rows: a challenger trained on them against v1, trained before the drift."""
    started = time.monotonic()
    outputs = run_local_pipeline(arguments(world, trigger_event="evt_test"), world["work"] / "kfp-1")
    print(f"\npipeline run (challenger wins): {time.monotonic() - started:.1f} s")
    return outputs


def test_challenger_better_than_champion_moves_the_alias(world, challenger_run):
    out, client = challenger_run, world["mlflow"].client
    assert out["winner"] == "challenger" and out["alias_moved"], out
    assert out["champion_version"] == world["v1"] and out["challenger_version"] == world["v1"] + 1, out
    assert out["challenger_score"] > out["champion_score"], out
    assert out["challenger_score"] > 0.95 and out["rows"] == ROWS, out
    assert out["registered_at"] <= out["promoted_at"], out
    assert champion(world) == out["alias_version"] == out["challenger_version"]
    # Registered where Keel looks, with the evaluation on the run.
    version = client.get_model_version(MODEL, str(out["challenger_version"]))
    assert sorted(a.path for a in client.list_artifacts(version.run_id, "model")) == ["model/baseline.json",
                                                                                     "model/model.onnx"]
    run = client.get_run(version.run_id)
    assert run.data.metrics["holdout_accuracy"] == pytest.approx(out["challenger_score"])
    assert run.data.metrics["champion_holdout_accuracy"] == pytest.approx(out["champion_score"])
    assert run.data.params["trigger_event"] == "evt_test" and run.data.tags["keel.winner"] == "challenger"
    assert version.tags["keel.winner"] == "challenger"


def test_challenger_model_and_baseline_are_what_keel_loads(world, challenger_run, tmp_path):
    """model.onnx has the serving signature and agrees with onnxruntime's verdicts on the drifted rows;
    baseline.json keeps v1's feature names and describes the drifted traffic."""
    import numpy as np
    import onnxruntime as ort

    client = world["mlflow"].client
    run_id = client.get_model_version(MODEL, str(challenger_run["challenger_version"])).run_id
    model = Path(client.download_artifacts(run_id, "model/model.onnx", str(tmp_path)))
    baseline = json.loads(Path(client.download_artifacts(run_id, "model/baseline.json", str(tmp_path))).read_text())
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", ["N", 30])]
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    v1_names = [f["name"] for f in json.loads((V1 / "baseline.json").read_text())["features"]]
    assert [f["name"] for f in baseline["features"]] == v1_names
    assert (baseline["model"], baseline["version"]) == (MODEL, challenger_run["challenger_version"])
    # The shifted feature's baseline is the drifted distribution: its median moved by ~2 std.
    x = np.load(ROOT / "tests/data/breast_cancer.npy")
    i = v1_names.index("mean radius")
    median = baseline["features"][i]["edges"][len(baseline["features"][i]["edges"]) // 2]
    assert median > np.median(x[:, i]) + 1.5 * x[:, i].std(), (median, np.median(x[:, i]))


def test_champion_better_than_challenger_keeps_the_alias(world, challenger_run):
    """Same rows, same split, but an over-regularised challenger (C=1e-6: close to predicting the
    majority class) against the champion the first run promoted: registered, not promoted."""
    before = champion(world)
    started = time.monotonic()
    out = run_local_pipeline(arguments(world, regularization=1e-6), world["work"] / "kfp-2")
    print(f"\npipeline run (champion wins): {time.monotonic() - started:.1f} s")
    assert out["winner"] == "champion" and not out["alias_moved"], out
    assert out["champion_version"] == before and out["challenger_version"] == before + 1, out
    assert out["champion_score"] > out["challenger_score"], out
    assert champion(world) == before == out["alias_version"]
    version = world["mlflow"].client.get_model_version(MODEL, str(out["challenger_version"]))
    assert version.tags["keel.winner"] == "champion"


def test_too_few_rows_fails_the_run_and_changes_nothing(world, challenger_run):
    before = sorted(int(v.version) for v in world["mlflow"].client.search_model_versions(f"name = '{MODEL}'"))
    with pytest.raises(RuntimeError, match=r"only 1500 labelled rows .* \(need 100000\)"):
        run_local_pipeline(arguments(world, min_rows=100_000, wait_timeout_s=0.5), world["work"] / "kfp-3")
    after = sorted(int(v.version) for v in world["mlflow"].client.search_model_versions(f"name = '{MODEL}'"))
    assert after == before


# --- The hook submits to a KFP API endpoint --------------------------------------------------------------

class FakeKfp:
    """Answers the KFP v2beta1 REST calls kfp.Client makes to start a run, and records them."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.calls.append(("GET", self.path, {}))
                self._answer({})  # no experiment of that name yet; healthz and the rest: nothing

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.calls.append(("POST", self.path, body))
                if self.path.startswith("/apis/v2beta1/experiments"):
                    self._answer({"experiment_id": "exp-1", "display_name": body.get("display_name")})
                elif self.path.startswith("/apis/v2beta1/runs"):
                    self._answer({"run_id": "run-1", "display_name": body.get("display_name")})
                else:
                    self._answer({})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def deliver(url: str, secret: str, msg_id: str, event: dict) -> int:
    body = json.dumps(event).encode()
    now = str(int(time.time()))
    headers = {"webhook-id": msg_id, "webhook-timestamp": now,
               "webhook-signature": f"v1,{signature(signing_key(secret), msg_id, now, body)}"}
    return requests.post(url, data=body, headers=headers, timeout=5).status_code


DRIFT = {"specversion": "1.0", "type": "dev.keel.drift.detected", "id": "evt_1",
         "data": {"model": MODEL, "version": 3, "metric": "csi", "value": 0.4, "threshold": 0.25,
                  "window_end_ms": 1_700_000_000_000, "top_features": [], "files": []}}


def started_run(fake: FakeKfp, timeout: float = 30) -> dict:
    """The body of the one CreateRun call the fake received."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [body for method, path, body in fake.calls if method == "POST" and path.startswith("/apis/v2beta1/runs")]
        if runs:
            (run,) = runs
            assert run["experiment_id"] == "exp-1"
            assert run["pipeline_spec"] == yaml.safe_load(retrain_pipeline.SPEC.read_text())
            return run
        time.sleep(0.05)
    raise AssertionError(f"no run started; calls: {fake.calls}")


@pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")
def test_hook_submits_the_compiled_spec_to_a_kfp_endpoint(tmp_path):
    fake = FakeKfp()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    hook = RetrainHook("127.0.0.1:0", "http://mlflow.invalid:5000", "bc-registered", MODEL, tmp_path / "log", secret,
                       min_rows=500, kfp_host=fake.url, pipeline_args={"metric": "roc_auc"}).start()
    try:
        assert deliver(hook.url, secret, "msg_1", DRIFT) == 202
        run = started_run(fake)
        deadline = time.monotonic() + 10
        while not (hook.retrains or hook.failures) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        hook.stop()
        fake.stop()
    assert not hook.failures and hook.retrains[0]["run_id"] == "run-1", (hook.failures, hook.retrains)
    assert run["runtime_config"]["parameters"] == {
        "prediction_log_dir": str(tmp_path / "log"), "keel_model": MODEL, "tracking_uri": "http://mlflow.invalid:5000",
        "registered_model": "bc-registered", "alias": "champion", "since_ms": 1_700_000_000_000, "min_rows": 500,
        "wait_timeout_s": 120.0, "trigger_event": "msg_1", "served_version": 3, "metric": "roc_auc"}


def test_container_receiver_starts_the_pipeline_on_a_kfp_endpoint(tmp_path):
    """deploy/container/webhook_receiver.py with --kfp-host: the same compiled spec, the event's model,
    detection time, version and id, and the --pipeline-arg parameters."""
    fake = FakeKfp()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    (tmp_path / "secret").write_text(secret)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/container/webhook_receiver.py"), "--host", "127.0.0.1", "--port", "0",
         "--secret-file", str(tmp_path / "secret"), "--kfp-host", fake.url,
         "--pipeline-arg", "prediction_log_dir=s3://keel-log/prod", "--pipeline-arg", "tracking_uri=http://mlflow:5000",
         "--pipeline-arg", "min_rows=500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        port = int(re.search(r"listening on \S+:(\d+)", proc.stdout.readline()).group(1))
        assert deliver(f"http://127.0.0.1:{port}/keel", secret, "msg_2", DRIFT) == 204
        run = started_run(fake)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        fake.stop()
    assert run["runtime_config"]["parameters"] == {
        "keel_model": MODEL, "registered_model": MODEL, "since_ms": 1_700_000_000_000, "trigger_event": "msg_2",
        "served_version": 3, "prediction_log_dir": "s3://keel-log/prod", "tracking_uri": "http://mlflow:5000",
        "min_rows": 500}
    assert "started pipeline run run-1 for msg_2" in out, out

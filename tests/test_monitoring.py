"""End to end: Keel logs what it serves, measures drift against the shipped baseline, joins feedback,
and calls a signed retraining webhook exactly once, with the monitor embedded and as a sidecar."""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import KEEL_BIN, ROOT, Keel
from mlflow_server import free_port

sys.path.insert(0, str(ROOT / "models"))
from traffic import Traffic  # noqa: E402

SECRET_KEY = b"keel-test-webhook-key-0123456789"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
SHIFTED = ["mean radius", "worst area"]
MONITOR_TOML = """
[monitor]
task = "classifier"
prediction_output = "label"
positive_label = 1
min_feedback = 100

[[monitor.rules]]
metric = "csi"
consecutive = 2
"""


class Receiver:
    """A webhook receiver that verifies Standard Webhooks signatures on its own; https with `tls`
    (certificate, key)."""

    def __init__(self, tls: tuple[Path, Path] | None = None):
        self.events, self.bad, self.handshake_failures = [], [], 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                msg_id, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
                expected = base64.b64encode(
                    hmac.new(SECRET_KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
                given = [s.split(",", 1)[1] for s in self.headers["webhook-signature"].split()]
                if expected in given and abs(time.time() - int(ts)) < 300:
                    receiver.events.append((msg_id, json.loads(body)))
                else:
                    receiver.bad.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                receiver.handshake_failures += 1

        self.server = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake runs in the handler's thread, so a client that refuses the certificate
            # cannot stall the accept loop.
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Sidecar:
    def __init__(self, port: int, receiver: Receiver, state_dir: Path, log_dir: Path):
        env = dict(os.environ, NO_COLOR="1", KEEL_WEBHOOK_SECRET=SECRET)
        self.proc = subprocess.Popen(
            [KEEL_BIN, "monitor", "--listen", f"127.0.0.1:{port}", "--metrics-addr", "127.0.0.1:0",
             "--window-seconds", "120", "--evaluate-every", "0.3", "--min-samples", "1000",
             "--webhook-url", receiver.url, "--state-dir", str(state_dir),
             "--prediction-log-dir", str(log_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.log = []
        for line in self.proc.stdout:
            self.log.append(line)
            match = re.search(r"metrics_addr=(\S+)", line)
            if match:
                self.metrics = match.group(1)
                break
        else:
            raise RuntimeError("keel monitor did not start:\n" + "".join(self.log))
        threading.Thread(target=lambda: [self.log.append(l) for l in self.proc.stdout], daemon=True).start()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def metric(addr: str, name: str, **labels) -> list[float]:
    import requests
    text = requests.get(f"http://{addr}/metrics", timeout=5).text
    values = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            values.append(float(line.rsplit(" ", 1)[1]))
    return values


def wait_for(what: str, check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module", params=["embedded", "sidecar"])
def stack(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    repo = tmp / "repo"
    (repo / "breast-cancer").mkdir(parents=True)
    shutil.copytree(ROOT / "models/breast-cancer/1", repo / "breast-cancer/1")
    (repo / "breast-cancer/model.toml").write_text(MONITOR_TOML)
    receiver = Receiver()
    log_dir = tmp / "prediction-log"
    sidecar = None
    os.environ["KEEL_WEBHOOK_SECRET"] = SECRET
    try:
        if request.param == "embedded":
            keel = Keel(repo, "--monitor-window", "120", "--monitor-evaluate-every", "0.3",
                        "--monitor-min-samples", "1000", "--webhook-url", receiver.url,
                        "--state-dir", str(tmp / "state"), "--prediction-log-dir", str(log_dir))
            monitor_metrics = keel.metrics
        else:
            port = free_port()
            sidecar = Sidecar(port, receiver, tmp / "state", log_dir)
            keel = Keel(repo, "--monitor-endpoint", f"http://127.0.0.1:{port}",
                        "--prediction-log-dir", str(log_dir))
            monitor_metrics = sidecar.metrics
    finally:
        os.environ.pop("KEEL_WEBHOOK_SECRET", None)
    state = {"mode": request.param, "keel": keel, "sidecar": sidecar, "receiver": receiver, "tmp": tmp,
             "log_dir": log_dir, "monitor_metrics": monitor_metrics,
             "traffic": Traffic(f"http://{keel.http}", prefix=request.param)}
    yield state
    keel.stop()
    if state["sidecar"]:
        state["sidecar"].kill()


def test_undrifted_traffic_stays_below_thresholds(stack):
    stack["traffic"].send(2000)
    addr = stack["monitor_metrics"]
    rows = wait_for("a full window", lambda: [r for r in metric(addr, "keel_drift_window_rows", model="breast-cancer")
                                              if r >= 2000])
    assert rows
    time.sleep(1)
    csi = metric(addr, "keel_drift_csi", model="breast-cancer", version="1")
    psi = metric(addr, "keel_drift_psi", model="breast-cancer", version="1")
    assert len(csi) == 30 and psi, (csi, psi)
    assert max(csi) < 0.1 and max(psi) < 0.1, (max(csi), max(psi))
    assert not stack["receiver"].events


def test_feedback_with_wrong_labels_shows_in_accuracy(stack):
    traffic = stack["traffic"]
    rng_state = traffic.rng.bit_generator.state
    reply = traffic.feedback(wrong=0.3)
    assert reply["received"] == 2000, reply
    if stack["mode"] == "embedded":
        assert reply["matched"] == 2000 and reply["unmatched"] == 0, reply
    # What the accuracy must be: predictions against the (partly flipped) labels just sent.
    traffic.rng.bit_generator.state = rng_state
    correct = total = 0
    for _, labels, predicted in traffic.sent:
        for label, prediction in zip(labels, predicted):
            truth = 1 - int(label) if traffic.rng.random() < 0.3 else int(label)
            correct += truth == prediction
            total += 1
    expected = correct / total
    addr = stack["monitor_metrics"]
    accuracy = wait_for("the accuracy gauge", lambda: metric(addr, "keel_model_accuracy", model="breast-cancer"))
    assert abs(accuracy[0] - expected) < 1e-9, (accuracy, expected)
    assert 0.6 < accuracy[0] < 0.75


def test_drifted_features_fire_exactly_one_signed_event(stack):
    stack["traffic"].send(4000, shift={f: 2.0 for f in SHIFTED})
    receiver = stack["receiver"]
    wait_for("the webhook", lambda: receiver.events, timeout=30)
    time.sleep(2)  # several more evaluations over the threshold: still one event
    assert not receiver.bad, receiver.bad
    assert len(receiver.events) == 1, receiver.events
    _, event = receiver.events[0]
    assert event["type"] == "dev.keel.drift.detected" and event["specversion"] == "1.0"
    data = event["data"]
    assert data["model"] == "breast-cancer" and data["version"] == 1 and data["value"] >= 0.25
    top = [f["feature"] for f in data["top_features"]][:2]
    assert sorted(top) == sorted(SHIFTED), data["top_features"]
    addr = stack["monitor_metrics"]
    for feature in SHIFTED:
        assert metric(addr, "keel_drift_csi", model="breast-cancer", feature=feature)[0] > 0.25
    assert metric(addr, "keel_drift_alert", model="breast-cancer")[0] == 1
    # The event lists the files holding every row of its window, the newest included: the writer
    # finished its open file for the event instead of leaving them to the 5-minute rotation.
    files = [Path(f) for f in data["files"]]
    assert files and all(f.is_file() for f in files), files
    rows = pd.concat(pd.read_parquet(f, columns=["timestamp_ms"]) for f in files
                     if f.name.startswith("predictions-"))["timestamp_ms"]
    in_window = rows.between(data["window_start_ms"], data["window_end_ms"]).sum()
    assert in_window >= data["rows"], (in_window, data["rows"])


def test_prediction_log_files_join_feedback(stack):
    if stack["mode"] != "embedded":
        pytest.skip("the file sink is the same code in both modes; checked once")
    keel = stack["keel"]
    assert keel.stop() == 0  # closing the server closes the files
    predictions = pd.concat(pd.read_parquet(f) for f in sorted(stack["log_dir"].rglob("predictions-*.parquet")))
    feedback = pd.concat(pd.read_parquet(f) for f in sorted(stack["log_dir"].rglob("feedback-*.parquet")))
    assert len(predictions) == 6000, len(predictions)
    assert len(feedback) == 2000
    joined = predictions.merge(feedback, on=["request_id", "row"])
    assert len(joined) == 2000
    assert {"input_0", "input_29", "label", "probabilities_1"} <= set(predictions.columns), predictions.columns
    assert np.isfinite(predictions["input_0"]).all()
    # What the feedback says against what was predicted: the 30% flipped labels show here too.
    agreement = (joined["label"].astype(float) == joined.filter(like="truth").iloc[:, 0].astype(float)).mean()
    assert 0.6 < agreement < 0.75, agreement


def test_sidecar_outage_is_counted_and_recovers(stack):
    if stack["mode"] != "sidecar":
        pytest.skip("sidecar only")
    keel, old = stack["keel"], stack["sidecar"]
    port = int(re.search(r":(\d+)$", [a for a in keel.proc.args if a.startswith("http://127.0.0.1:")][0]).group(1))
    old.kill()
    stack["traffic"].send(500)  # serving goes on
    dropped = wait_for("counted drops", lambda: [v for v in metric(keel.metrics, "keel_prediction_log_dropped_total",
                                                                 model="breast-cancer", reason="sidecar_unavailable")
                                                 if v > 0])
    assert dropped[0] > 0
    new = Sidecar(port, stack["receiver"], stack["tmp"] / "state", stack["log_dir"])
    stack["sidecar"] = new

    def resumed():
        stack["traffic"].send(100)
        return [v for v in metric(new.metrics, "keel_monitor_records_total", model="breast-cancer") if v > 0]
    wait_for("monitoring to resume", resumed, timeout=30)

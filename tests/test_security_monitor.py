"""Secure defaults of the drift monitor, end to end with the real binary: alerts delivered to an https
webhook receiver trusted through --ca-bundle (and not delivered without it), the `keel monitor` sidecar
on loopback by default and guarded by --api-token-file, which `keel serve --monitor-token-file` presents.

Certificates are made here with the openssl CLI: a CA, and a server certificate for 127.0.0.1 it signed."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from conftest import KEEL_BIN, ROOT, Keel
from pki import Pki
from test_monitoring import SECRET, Receiver, metric, wait_for

sys.path.insert(0, str(ROOT / "models"))
from traffic import Traffic  # noqa: E402

# Drift fires on the first evaluation past the threshold, from 100 rows: a few hundred shifted rows do.
FAST_DRIFT_TOML = """
[monitor]
min_samples = 100

[[monitor.rules]]
metric = "csi"
consecutive = 1
"""
SHIFT = {"mean radius": 3.0, "worst area": 3.0}
TOKEN = "monitor-token-0123456789abcdef"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.pem (a private CA), server.pem/server.key for 127.0.0.1 signed by it, other-ca.pem (unrelated)."""
    d = tmp_path_factory.mktemp("certs")
    Pki(d).issue("server")
    shutil.copy(Pki(d / "other").ca, d / "other-ca.pem")
    return d


def HttpsReceiver(certs: Path) -> Receiver:
    return Receiver(tls=(certs / "server.pem", certs / "server.key"))


def repository(tmp: Path, toml: str = FAST_DRIFT_TOML) -> Path:
    repo = tmp / "repo"
    (repo / "breast-cancer").mkdir(parents=True)
    shutil.copytree(ROOT / "models/breast-cancer/1", repo / "breast-cancer/1")
    (repo / "breast-cancer/model.toml").write_text(toml)
    return repo


class Monitor:
    """A `keel monitor` process; `grpc` and `http` are its bound addresses."""

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([KEEL_BIN, "monitor", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, NO_COLOR="1", **(env or {})))
        self.log: list[str] = []
        for line in self.proc.stdout:
            self.log.append(line)
            match = re.search(r"monitor_addr=(\S+) metrics_addr=(\S+)", line)
            if match:
                self.grpc, self.http = match.group(1), match.group(2)
                break
        else:
            raise RuntimeError("keel monitor did not start:\n" + "".join(self.log))
        threading.Thread(target=lambda: [self.log.append(l) for l in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def fails_to_start(*args: str, env: dict | None = None) -> str:
    """Runs `keel monitor` expecting it to exit at once with an error; returns what it printed."""
    done = subprocess.run([KEEL_BIN, "monitor", "--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, NO_COLOR="1", **(env or {})))
    assert done.returncode != 0, done
    return done.stdout + done.stderr


def webhook_outcome(addr: str, outcome: str) -> float:
    return sum(metric(addr, "keel_webhook_deliveries_total", outcome=outcome))


def drifted_alert(keel: Keel, receiver: HttpsReceiver):
    """Sends shifted rows until the alert reaches the receiver."""
    traffic = Traffic(f"http://{keel.http}", prefix="tls")

    def delivered():
        traffic.send(200, shift=SHIFT)
        return receiver.events
    return wait_for("a signed delivery over https", delivered, timeout=60)


@pytest.mark.parametrize("mode", ["embedded", "sidecar"])
def test_https_webhook_with_ca_bundle_gets_a_signed_delivery(mode, certs, tmp_path, monkeypatch):
    receiver = HttpsReceiver(certs)
    webhook = ["--webhook-url", receiver.url, "--ca-bundle", str(certs / "ca.pem"),
               "--state-dir", str(tmp_path / "state")]
    monkeypatch.setenv("KEEL_WEBHOOK_SECRET", SECRET)
    sidecar = None
    try:
        if mode == "embedded":
            keel = Keel(repository(tmp_path), "--monitor-evaluate-every", "0.3", *webhook)
            alerts_at = keel.metrics
        else:
            sidecar = Monitor("--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
                              "--evaluate-every", "0.3", *webhook)
            keel = Keel(repository(tmp_path), "--monitor-endpoint", f"http://{sidecar.grpc}")
            alerts_at = sidecar.http
        try:
            events = drifted_alert(keel, receiver)
            assert not receiver.bad, receiver.bad
            _, event = events[0]
            assert event["type"] == "dev.keel.drift.detected", event
            assert event["data"]["model"] == "breast-cancer"
            wait_for("the delivery counted", lambda: webhook_outcome(alerts_at, "delivered") >= 1)
            assert webhook_outcome(alerts_at, "retry") == 0
            # The state folder was made private to Keel's user.
            assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        finally:
            keel.stop()
    finally:
        if sidecar:
            sidecar.stop()
        receiver.close()


@pytest.mark.parametrize("bundle", [None, "other-ca.pem"])
def test_https_webhook_without_the_ca_is_not_delivered(bundle, certs, tmp_path, monkeypatch):
    """The system's roots alone, or with another CA than the one that signed the receiver's certificate."""
    receiver = HttpsReceiver(certs)
    monkeypatch.setenv("KEEL_WEBHOOK_SECRET", SECRET)
    ca = ["--ca-bundle", str(certs / bundle)] if bundle else []
    keel = Keel(repository(tmp_path), "--monitor-evaluate-every", "0.3", "--webhook-url", receiver.url,
                *ca, "--state-dir", str(tmp_path / "state"))
    try:
        traffic = Traffic(f"http://{keel.http}", prefix="untrusted")

        def failed():
            traffic.send(200, shift=SHIFT)
            return webhook_outcome(keel.metrics, "retry") >= 1
        wait_for("a failed delivery attempt", failed, timeout=60)
        assert webhook_outcome(keel.metrics, "delivered") == 0
        assert not receiver.events and not receiver.bad
        assert metric(keel.metrics, "keel_webhook_pending_events") == [1.0]
        # The failure is logged with its cause, and the receiver's URL is the only one in the line.
        line = wait_for("the logged failure", lambda: [l for l in keel.log if "delivery failed" in l])[0]
        assert re.search(r"certificate|UnknownIssuer", line, re.I), line
    finally:
        keel.stop()
        receiver.close()


def test_https_webhook_credentials_are_never_logged(certs, tmp_path, monkeypatch):
    receiver = HttpsReceiver(certs)
    monkeypatch.setenv("KEEL_WEBHOOK_SECRET", SECRET)
    url = receiver.url.replace("https://", "https://alerts:hunter2@")
    sidecar = Monitor("--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--webhook-url", url,
                      "--ca-bundle", str(certs / "ca.pem"), "--state-dir", str(tmp_path / "state"))
    try:
        wait_for("the webhook line", lambda: any("alerts are sent to the webhook" in l for l in sidecar.log))
        assert not [l for l in sidecar.log if "hunter2" in l], sidecar.log
        assert not [l for l in sidecar.log if "plain http" in l], sidecar.log
    finally:
        sidecar.stop()
        receiver.close()
    # user:password over plain http to another host: a warning, still without the password.
    plain = Monitor("--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
                    "--webhook-url", "http://alerts:hunter2@192.0.2.1:9/hook", "--state-dir", str(tmp_path / "state"))
    try:
        warned = wait_for("the plain-http warning", lambda: [l for l in plain.log if "plain http" in l])
        assert "http://192.0.2.1:9/hook" in warned[0], warned
        assert not [l for l in plain.log if "hunter2" in l], plain.log
    finally:
        plain.stop()
    # A start-up error with the URL does not show the password either.
    out = fails_to_start("--webhook-url", "ftp://alerts:hunter2@127.0.0.1/hook",
                         "--state-dir", str(tmp_path / "state2"), env={"KEEL_WEBHOOK_SECRET": SECRET})
    assert "hunter2" not in out and "ftp://127.0.0.1/hook" in out, out


def test_a_bad_ca_bundle_fails_start_up_naming_the_flag(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for bundle in [junk, tmp_path / "missing.pem"]:
        out = fails_to_start("--webhook-url", "https://127.0.0.1:9/hook", "--ca-bundle", str(bundle),
                             "--state-dir", str(tmp_path / "state"), env={"KEEL_WEBHOOK_SECRET": SECRET})
        assert "--ca-bundle" in out, out


def test_monitor_binds_loopback_by_default():
    """Both listeners on 127.0.0.1:8011/8012 when no address is given (if the ports are taken, the
    bind error names the address it tried)."""
    proc = subprocess.Popen([KEEL_BIN, "monitor"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items()
                                 if k not in ("KEEL_MONITOR_LISTEN", "KEEL_MONITOR_METRICS_ADDR")} | {"NO_COLOR": "1"})
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "monitor_addr=" in line or "cannot listen" in line:
                break
        text = "".join(seen)
        if "cannot listen" in text:
            assert "127.0.0.1:801" in text, text
        else:
            assert "monitor_addr=127.0.0.1:8011 metrics_addr=127.0.0.1:8012" in text, text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_monitor_token_guards_the_sidecar(tmp_path):
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{TOKEN}\n")
    tokens.chmod(0o600)
    sidecar = Monitor("--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--evaluate-every", "0.3",
                      "--api-token-file", str(tokens), "--state-dir", str(tmp_path / "state"))
    keel = None
    try:
        base = f"http://{sidecar.http}"
        # Probes and scrapes stay open; drift reports need the token.
        assert requests.get(f"{base}/healthz", timeout=5).text == "ok"
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 200
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]:
            r = requests.get(f"{base}/v1/drift/breast-cancer/1", headers=headers, timeout=5)
            assert r.status_code == 401, (headers, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "token" in r.json()["error"] and TOKEN not in r.text
        assert requests.get(f"{base}/v1/drift/breast-cancer/1", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=5).status_code == 404  # not monitored yet, but past the check

        # A server without the token: refused, its rows counted as dropped, nothing reaches the monitor.
        keel = Keel(repository(tmp_path / "without"), "--monitor-endpoint", f"http://{sidecar.grpc}")
        traffic = Traffic(f"http://{keel.http}", prefix="no-token")

        def dropped():
            traffic.send(50)
            return [v for v in metric(keel.metrics, "keel_prediction_log_dropped_total", model="breast-cancer",
                                      reason="sidecar_unavailable") if v > 0]
        wait_for("rows counted as dropped", dropped, timeout=30)
        refused = wait_for("the refusal logged", lambda: [l for l in keel.log if "UNAUTHENTICATED" in l])
        assert len(refused) == 1, refused  # once per outage, however often it retries
        assert TOKEN not in "".join(keel.log)
        assert not metric(sidecar.http, "keel_monitor_records_total")
        assert metric(sidecar.http, "keel_sidecar_rejected_total", reason="unauthenticated")[0] >= 1
        assert keel.stop() == 0
        keel = None

        # With the token (from a file, as a mounted Secret): streamed and monitored.
        client_token = tmp_path / "monitor-token"
        client_token.write_text(f"{TOKEN}\n")
        keel = Keel(repository(tmp_path / "with"), "--monitor-endpoint", f"http://{sidecar.grpc}",
                    "--monitor-token-file", str(client_token))

        def monitored():
            Traffic(f"http://{keel.http}", prefix="token").send(50)
            return [v for v in metric(sidecar.http, "keel_monitor_records_total", model="breast-cancer") if v > 0]
        wait_for("records reaching the monitor", monitored, timeout=30)
        r = requests.get(f"{base}/v1/drift/breast-cancer/1", headers={"Authorization": f"bearer {TOKEN}"},
                         timeout=5)
        assert r.status_code == 200 and r.json()["rows"] > 0, r.text
        assert not [l for l in keel.log if "UNAUTHENTICATED" in l]
    finally:
        if keel:
            keel.stop()
        sidecar.stop()


def test_monitor_refuses_an_empty_token_file(tmp_path):
    empty = tmp_path / "tokens"
    empty.write_text("\n")
    out = fails_to_start("--api-token-file", str(empty))
    assert "holds no token" in out, out

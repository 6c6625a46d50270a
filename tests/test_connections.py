"""Connection hygiene against the real binary over real sockets: header, idle and body deadlines, the
connection limit, the per-request deadline, and a shutdown that idle connections and streams cannot hold up."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import KEEL_BIN, ROOT, Keel, build_repository

ROW = np.load(ROOT / "tests/data/breast_cancer.npy")[:1].astype(np.float32)
BODY = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW.ravel().tolist()}]}


def host_port(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the server closes the socket (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def keel(repo):
    server = Keel(repo, "--header-read-timeout", "2", "--idle-timeout", "5", "--body-read-timeout", "2")
    yield server
    assert server.stop() == 0


def test_slow_half_open_connections_do_not_delay_requests_and_are_closed(keel):
    sockets = []
    for _ in range(300):
        s = socket.create_connection(host_port(keel.http))
        s.sendall(b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nHost: keel\r\nContent-")
        sockets.append(s)
    opened = time.monotonic()
    reply = requests.post(f"http://{keel.http}/v2/models/breast-cancer/infer", json=BODY, timeout=5)
    assert reply.status_code == 200
    # Every slow connection is closed once the 2 s header deadline passes (with margin for a busy box).
    still_open = [s for s in sockets if not closed_by_peer(s, max(0.1, opened + 6 - time.monotonic()))]
    assert not still_open, f"{len(still_open)} of 300 slow connections still open"
    for s in sockets:
        s.close()
    # A silent gRPC connection (no HTTP/2 preface) is closed by the same deadline.
    silent = socket.create_connection(host_port(keel.grpc))
    assert closed_by_peer(silent, 6)
    silent.close()


def test_idle_keep_alive_closes_after_the_idle_timeout_not_the_header_one(keel):
    s = socket.create_connection(host_port(keel.http))
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: keel\r\n\r\n")
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    # Past the 2 s header deadline the idle connection is still open...
    assert not closed_by_peer(s, 3)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: keel\r\n\r\n")
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    # ...and closed once it has been idle for the 5 s idle timeout.
    assert closed_by_peer(s, 9)
    s.close()


def test_a_body_that_never_finishes_gets_a_json_error(keel):
    s = socket.create_connection(host_port(keel.http))
    s.sendall(b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"inputs\": [")
    s.settimeout(10)
    reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert b"--body-read-timeout" in reply and b'"error"' in reply, reply
    s.close()


def test_a_request_past_its_deadline_is_answered_and_cancelled(repo):
    server = Keel(repo, "--request-timeout", "0.05")
    try:
        meta = requests.get(f"http://{server.http}/v2/models/slow-mlp", timeout=5).json()
        spec = meta["inputs"][0]
        rows = np.zeros((1024, spec["shape"][-1]), dtype=np.float32)
        body = {"inputs": [{"name": spec["name"], "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.ravel().tolist()}]}
        reply = requests.post(f"http://{server.http}/v2/models/slow-mlp/infer", json=body, timeout=30)
        assert reply.status_code == 503, reply.text
        assert "--request-timeout" in reply.json()["error"]
        client = grpcclient.InferenceServerClient(server.grpc)
        inp = grpcclient.InferInput(spec["name"], list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException) as late:
            client.infer("slow-mlp", [inp])
        assert "DEADLINE_EXCEEDED" in str(late.value.status()), late.value
        # The server serves on.
        assert requests.post(f"http://{server.http}/v2/models/breast-cancer/infer", json=BODY, timeout=5).ok
    finally:
        assert server.stop() == 0


def test_connection_limit_holds_further_clients_in_the_backlog(repo):
    server = Keel(repo, "--max-connections", "4", "--header-read-timeout", "30")
    try:
        held = [socket.create_connection(host_port(server.http)) for _ in range(4)]
        time.sleep(0.3)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"http://{server.http}/v2/health/live", timeout=1)
        held.pop().close()
        assert requests.get(f"http://{server.http}/v2/health/live", timeout=5).status_code == 200
        for s in held:
            s.close()
    finally:
        assert server.stop() == 0


def test_sigterm_with_idle_connections_and_an_open_stream_exits_quickly(repo, tmp_path):
    """Issue 11's target: SIGTERM with an idle HTTP/1.1 connection and an idle ModelStreamInfer stream open
    exits in under 5 s, and every row served before it is in a finished, readable Parquet file."""
    log_dir = tmp_path / "log"
    server = Keel(repo, "--prediction-log-dir", str(log_dir))
    for i in range(20):
        body = dict(BODY, id=f"http-{i}")
        assert requests.post(f"http://{server.http}/v2/models/breast-cancer/infer", json=body, timeout=5).ok
    idle_http = socket.create_connection(host_port(server.http))
    idle_http.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: keel\r\n\r\n")
    idle_http.settimeout(5)
    assert idle_http.recv(4096).startswith(b"HTTP/1.1 200")
    client = grpcclient.InferenceServerClient(server.grpc)
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    inp = grpcclient.InferInput("input", [1, 30], "FP32")
    inp.set_data_from_numpy(ROW)
    client.async_stream_infer("breast-cancer", [inp])
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        time.sleep(0.05)
    assert results and results[0][1] is None, results
    # The stream stays open and idle; the keep-alive connection too.
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=10)
    took = time.monotonic() - started
    client.stop_stream()
    idle_http.close()
    assert code == 0, "".join(server.log[-20:])
    assert took < 5, f"exit took {took:.1f} s"
    print(f"SIGTERM to exit with an idle HTTP/1.1 connection and an idle gRPC stream: {took:.2f} s")
    import pyarrow.parquet as pq
    assert not [p.name for p in log_dir.glob("*/.*")], "an unfinished file was left"
    ids = [i for path in sorted(log_dir.glob("breast-cancer/predictions-*.parquet"))
           for i in pq.read_table(path, columns=["request_id"]).column("request_id").to_pylist()]
    assert sorted(i for i in ids if i.startswith("http-")) == sorted(f"http-{i}" for i in range(20))
    assert len(ids) == 21, ids  # and the stream's request


def test_sigterm_during_a_slow_start_up_exits_cleanly(tmp_path):
    """Listeners are up and the signal handler installed before models load: a SIGTERM while a slow model
    is still warming up drains and exits 0 at once, instead of killing the process or waiting for the load."""
    shutil.copytree(ROOT / "tests/models/slow-mlp", tmp_path / "slow-mlp")
    (tmp_path / "slow-mlp/model.toml").write_text(
        "max_batch_size = 1024\n[dynamic_batching]\npreferred_batch_sizes = [1024]\n[reload]\nwarmup_runs = 400\n")
    env = dict(os.environ, NO_COLOR="1", KEEL_LOG="info")
    proc = subprocess.Popen(
        [KEEL_BIN, "serve", "--model-repository", str(tmp_path), "--http-addr", "127.0.0.1:0",
         "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--prediction-log-dir", str(tmp_path / "log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log = []
    for line in proc.stdout:
        log.append(line)
        if match := re.search(r"http=(\S+) grpc=", line):
            http = match.group(1)
            break
    assert requests.get(f"http://{http}/v2/health/live", timeout=5).status_code == 200
    assert requests.get(f"http://{http}/v2/health/ready", timeout=5).status_code == 503
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    took = time.monotonic() - started
    log += proc.stdout.readlines()
    assert code == 0, "".join(log[-20:])
    assert took < 5, f"exit took {took:.1f} s"
    assert not any("serving KServe V2" in line for line in log), "the load was expected to be still running"


def test_metrics_listener_has_the_same_deadlines_and_json_errors(keel):
    s = socket.create_connection(host_port(keel.metrics))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: keel\r\n")  # half a header
    assert closed_by_peer(s, within=6), "the half-open scrape connection was not closed"
    s.close()
    reply = requests.get(f"http://{keel.metrics}/nowhere", timeout=5)
    assert reply.status_code == 404 and "error" in reply.json()
    reply = requests.post(f"http://{keel.metrics}/metrics", timeout=5)
    assert reply.status_code == 405 and "error" in reply.json()
    assert requests.get(f"http://{keel.metrics}/metrics", timeout=5).status_code == 200


def h2_frames(sock: socket.socket, until: float):
    """Reads HTTP/2 frames (type, flags, payload) until the peer closes or `until` passes."""
    buf = b""
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length = int.from_bytes(buf[:3], "big")
            yield buf[3], buf[4], buf[9:9 + length]
            buf = buf[9 + length:]
        left = until - time.monotonic()
        if left <= 0:
            return
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            yield None, None, None  # closed by the peer
            return
        buf += data


def h2_frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + (0).to_bytes(4, "big") + payload


def test_grpc_announces_its_stream_limit_and_closes_peers_that_miss_keepalive_pings(repo):
    server = Keel(repo, "--grpc-max-concurrent-streams", "7", "--grpc-keepalive", "1")
    try:
        sock = socket.create_connection(host_port(server.grpc))
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0))
        settings, pings, closed = {}, 0, None
        started = time.monotonic()
        for kind, flags, payload in h2_frames(sock, until=started + 10):
            if kind is None or kind == 0x7:  # closed, or GOAWAY
                closed = time.monotonic() - started
                break
            if kind == 0x4 and not flags & 1:
                settings.update((int.from_bytes(payload[i:i + 2], "big"), int.from_bytes(payload[i + 2:i + 6], "big"))
                                for i in range(0, len(payload), 6))
                sock.sendall(h2_frame(0x4, 1))  # ACK their settings; never answer a PING
            if kind == 0x6 and not flags & 1:
                pings += 1
        sock.close()
        assert settings.get(0x3) == 7, settings  # SETTINGS_MAX_CONCURRENT_STREAMS
        assert pings >= 1, "no keepalive PING on an idle connection"
        assert closed is not None and closed < 5, f"a peer ignoring PINGs was not closed ({closed})"
    finally:
        assert server.stop() == 0


def test_a_grpc_request_in_flight_at_sigterm_is_answered_and_its_rows_logged(repo, tmp_path):
    """The original bug: gRPC drained only after the log had stopped, so late gRPC rows were lost."""
    import queue

    import pyarrow.parquet as pq

    log_dir = tmp_path / "log"
    server = Keel(repo, "--prediction-log-dir", str(log_dir))
    client = grpcclient.InferenceServerClient(server.grpc)
    inp = grpcclient.InferInput("input", [1024, 512], "FP32")
    inp.set_data_from_numpy(np.full((1024, 512), 0.25, np.float32))
    done = queue.Queue()
    client.async_infer("slow-mlp", [inp], request_id="in-flight", callback=lambda result, error: done.put(error))
    deadline = time.monotonic() + 30
    while not re.search(r'^keel_inflight_requests\{model="slow-mlp",version="1"\} [1-9]',
                        requests.get(f"http://{server.metrics}/metrics", timeout=5).text, re.M):
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.002)
    server.proc.send_signal(signal.SIGTERM)
    assert done.get(timeout=60) is None
    assert server.proc.wait(timeout=30) == 0, "".join(server.log[-20:])
    ids = [i for path in sorted(log_dir.glob("slow-mlp/predictions-*.parquet"))
           for i in pq.read_table(path, columns=["request_id"]).column("request_id").to_pylist()]
    assert ids.count("in-flight") == 1024, len(ids)

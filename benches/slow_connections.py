"""Slow-client figures for docs/limits.md: N connections that each send half a request header (a slowloris),
against `keel serve` with its default limits. Prints a normal client's latency before and while they are
open, when the server closed them (--header-read-timeout), and how long SIGTERM then takes with an idle
HTTP/1.1 keep-alive connection and an idle gRPC ModelStreamInfer stream open.

    cargo build --release --bin keel
    .venv/bin/python benches/slow_connections.py            # KEEL_BIN=... for another binary
"""

import sys
from pathlib import Path

# benches/logging.py would shadow the standard library's logging module (which grpc imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "breast-cancer"


def start(keel: str, repo: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [keel, "serve", "--model-repository", repo, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
         "--metrics-addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, NO_COLOR="1"))
    for line in proc.stdout:
        if m := re.search(r"http_addr=(\S+) grpc_addr=(\S+)", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1), m.group(2)
    raise RuntimeError("keel did not start")


def latencies(http: str, body: dict, n: int) -> tuple[float, float]:
    session = requests.Session()
    took = []
    for _ in range(n):
        t = time.perf_counter()
        reply = session.post(f"http://{http}/v2/models/{MODEL}/infer", json=body, timeout=10)
        took.append(time.perf_counter() - t)
        assert reply.status_code == 200, reply.text
    took.sort()
    return took[len(took) // 2] * 1e3, took[int(len(took) * 0.99)] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    keel = os.environ.get("KEEL_BIN", str(ROOT / "target/release/keel"))
    repo = tempfile.mkdtemp()
    shutil.copytree(ROOT / "models" / MODEL, Path(repo) / MODEL)
    row = np.load(ROOT / "tests/data/breast_cancer.npy")[:1].astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row.ravel().tolist()}]}
    proc, http, grpc = start(keel, repo)
    try:
        p50, p99 = latencies(http, body, args.requests)
        print(f"normal client, {args.requests} sequential requests: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        host, port = http.rsplit(":", 1)
        opened = time.monotonic()
        slow = []
        for _ in range(args.connections):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nHost: keel\r\nContent-")
            slow.append(s)
        p50, p99 = latencies(http, body, args.requests)
        print(f"with {args.connections} half-open connections: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        closed = []
        for s in slow:
            s.settimeout(max(0.1, opened + 60 - time.monotonic()))
            try:
                while s.recv(4096):
                    pass
            except (socket.timeout, ConnectionResetError):
                pass
            closed.append(time.monotonic() - opened)
            s.close()
        print(f"all {len(slow)} closed by the server {min(closed):.2f} to {max(closed):.2f} s after they opened "
              "(--header-read-timeout, default 10 s)")

        idle = socket.create_connection((host, int(port)))
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: keel\r\n\r\n")
        idle.recv(4096)
        client = grpcclient.InferenceServerClient(grpc)
        answered = []
        client.start_stream(callback=lambda result, error: answered.append(error))
        inp = grpcclient.InferInput("input", [1, 30], "FP32")
        inp.set_data_from_numpy(row)
        client.async_stream_infer(MODEL, [inp])
        while not answered:
            time.sleep(0.01)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"SIGTERM with an idle keep-alive connection and an idle gRPC stream open: exit {code} "
              f"in {time.monotonic() - started:.2f} s")
        client.stop_stream()
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()

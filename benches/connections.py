#!/usr/bin/env python3
"""Scale: many keep-alive connections held at once, and memory after an overload ends (issue 14, target 4).

    cargo build --release --bin keel
    ORT_DYLIB_PATH=$PWD/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 \\
        .venv/bin/python benches/connections.py [--connections 10000] [--overload 10] [--out target/connections.json]

1. `keel serve` (release, ./models, defaults) answers a few requests; its RSS then is the idle size.
2. `--connections` HTTP/1.1 keep-alive connections open, each sends one single-row inference request and
   reads its answer, and all stay open: RSS growth / connections = memory per held connection. Then every
   connection sends a second request (all at once), to show that held connections are served, not parked.
3. They close; then an overload: wrk with 1,000 connections and h2load with 64 x 32 streams for
   `--overload` seconds each, side by side. After it ends the bench waits (up to `--settle` s) for RSS
   to come back within 2x of the idle size, and reports how long it took.

Everything is read from /proc/PID/status (VmRSS). The client raises its own open-file limit; Keel's
`--max-connections` (16,384 by default) bounds what it accepts. KEEL_BIN picks another binary.
"""

import sys
from pathlib import Path

# benches/logging.py would shadow the standard library's logging module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import asyncio
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request

ROOT = Path(__file__).resolve().parent.parent
KEEL_BIN = os.environ.get("KEEL_BIN", str(ROOT / "target/release/keel"))
MODEL = "breast-cancer"
BODY = (ROOT / "tests/data/example_request.json").read_bytes()
REQUEST = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_keel() -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [KEEL_BIN, "serve", "--model-repository", str(ROOT / "models"), "--http-addr", "127.0.0.1:0",
         "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, NO_COLOR="1"))
    for line in proc.stdout:
        match = re.search(r"http_addr=(\S+) grpc_addr=(\S+)", line)
        if match:
            http, grpc = match.groups()
            break
    else:
        raise RuntimeError("keel did not start")
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as reply:
                if reply.status == 200:
                    return proc, http, grpc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("keel not ready")


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    await reader.readexactly(length)
    return status


async def hold(addr: str, count: int, pid: int) -> dict:
    host, port = addr.rsplit(":", 1)
    conns = []
    failed = 0
    sem = asyncio.Semaphore(256)

    async def open_one():
        nonlocal failed
        async with sem:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(REQUEST)
                status = await asyncio.wait_for(read_response(reader), 60)
                if status != 200:
                    failed += 1
                conns.append((reader, writer))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                failed += 1

    start = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    opened = time.monotonic() - start
    await asyncio.sleep(2)
    held_rss = rss_mib(pid)

    # Every held connection asks again, all at once.
    async def again(reader, writer):
        writer.write(REQUEST)
        return await asyncio.wait_for(read_response(reader), 120)

    start = time.monotonic()
    statuses = await asyncio.gather(*(again(r, w) for r, w in conns), return_exceptions=True)
    second = time.monotonic() - start
    ok = sum(1 for s in statuses if s == 200)
    # Anything else is an answer too (429 when the queue is full), or an error: counted apart.
    other = {}
    for s in statuses:
        if s != 200:
            key = str(s) if isinstance(s, int) else type(s).__name__
            other[key] = other.get(key, 0) + 1
    for _, writer in conns:
        writer.close()
    return {"held": len(conns), "open_failed": failed, "open_s": round(opened, 2), "held_rss_mib": held_rss,
            "second_round_ok": ok, "second_round_other": other, "second_round_s": round(second, 2)}


def overload(http: str, grpc: str, seconds: int) -> dict:
    procs = []
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(BODY.decode())}\n")
    body = tempfile.NamedTemporaryFile(suffix=".bin", delete=False)
    from tritonclient.grpc import service_pb2
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    # 256 rows per request: the overload moves tensors, not only headers.
    tensor.shape.extend([256, 30])
    features = json.loads(BODY)["inputs"][0]["data"]
    request.raw_input_contents.append(struct.pack("<7680f", *(features * 256)))
    message = request.SerializeToString()
    body.write(b"\x00" + struct.pack(">I", len(message)) + message)
    body.close()
    try:
        procs.append(subprocess.Popen(["wrk", "-t1", "-c1000", f"-d{seconds}s", "-s", script.name,
                                       f"http://{http}/v2/models/{MODEL}/infer"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        procs.append(subprocess.Popen(["h2load", "-c64", "-m32", "-t1", "-D", str(seconds),
                                       "-H", "content-type: application/grpc", "-H", "te: trailers",
                                       "-d", body.name, f"http://{grpc}/inference.GRPCInferenceService/ModelInfer"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs = [p.communicate(timeout=seconds + 120)[0] for p in procs]
    finally:
        os.unlink(script.name)
        os.unlink(body.name)
    wrk_rps = float(re.search(r"Requests/sec:\s+([\d.]+)", outs[0]).group(1))
    h2_rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", outs[1]).group(1))
    return {"wrk_rps": wrk_rps, "h2load_rps": h2_rps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--overload", type=int, default=10, help="seconds of overload")
    parser.add_argument("--settle", type=int, default=60, help="seconds to wait for RSS to come back")
    parser.add_argument("--out", default=str(ROOT / "target/connections.json"))
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing (Debian: wrk, nghttp2-client; `make bench-load` installs them)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 1024)), hard))

    proc, http, grpc = start_keel()
    report = {}
    try:
        for _ in range(50):
            urllib.request.urlopen(urllib.request.Request(f"http://{http}/v2/models/{MODEL}/infer", data=BODY))
        time.sleep(2)
        idle = rss_mib(proc.pid)
        report["idle_rss_mib"] = idle
        held = asyncio.run(hold(http, args.connections, proc.pid))
        held["per_connection_kib"] = round((held["held_rss_mib"] - idle) * 1024 / max(held["held"], 1), 1)
        report["connections"] = held
        print(f"idle RSS {idle:.1f} MiB; {held['held']} connections held ({held['open_failed']} failed): "
              f"RSS {held['held_rss_mib']:.1f} MiB = {held['per_connection_kib']} KiB per connection; "
              f"second request on each, all at once: {held['second_round_ok']} ok, others {held['second_round_other']}, "
              f"in {held['second_round_s']} s", flush=True)
        time.sleep(2)
        report["after_connections_rss_mib"] = rss_mib(proc.pid)

        peak = [0.0]
        import threading
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(proc.pid))
                time.sleep(0.1)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = overload(http, grpc, args.overload)
        stop.set()
        sampler.join()
        ended = time.monotonic()
        after = rss_mib(proc.pid)
        settled = None
        while time.monotonic() - ended < args.settle:
            after = rss_mib(proc.pid)
            if after <= 2 * idle:
                settled = round(time.monotonic() - ended, 1)
                break
            time.sleep(0.5)
        report["overload"] = dict(load, peak_rss_mib=peak[0], rss_after_mib=after,
                                  within_2x_idle=after <= 2 * idle, settled_after_s=settled)
        print(f"overload {args.overload} s (wrk 1000 conns {load['wrk_rps']:.0f} req/s, h2load 64x32 x 256 rows "
              f"{load['h2load_rps']:.0f} req/s): peak RSS {peak[0]:.1f} MiB; after: {after:.1f} MiB "
              f"({after / idle:.2f}x idle{'' if settled is None else f', within 2x after {settled} s'})", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written {args.out}")
    answered = report["connections"]["second_round_ok"] + report["connections"]["second_round_other"].get("429", 0)
    ok = answered == args.connections and report["overload"]["within_2x_idle"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

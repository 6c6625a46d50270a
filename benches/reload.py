#!/usr/bin/env python3
"""Measures what hot reload costs, in one run on this machine (release build, 127.0.0.1 only):

  1. p99 latency of an open-loop load while a new breast-cancer version is published every 2 s,
     vs the same load with no swaps (same server, same run)
  2. resident memory over 100 unload/load cycles of breast-cancer-gbt (ONNX Runtime)

    cargo build --release --bins && .venv/bin/python benches/reload.py [--duration 20] [--rate 1000]
"""

import argparse
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from targets import ROOT, BIN, load, start, stop

TOKEN = "bench-token"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def control(http: str, model: str, action: str):
    req = urllib.request.Request(f"http://{http}/v2/repository/models/{model}/{action}", data=b"",
                                 method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req, timeout=60).read()


def serving(http: str, model: str) -> list[str]:
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}", timeout=5) as r:
        return json.load(r)["versions"]


def publisher(repo: Path, stop_event: threading.Event, every: float, swaps: list):
    """Publishes version N+1 (alternating the two example models) by rename, every `every` seconds."""
    version = 1
    while not stop_event.wait(every):
        version += 1
        staging = repo / f".staging-{version}"
        staging.mkdir()
        source = ROOT / f"models/breast-cancer/{1 + version % 2}/model.onnx"
        shutil.copy(source, staging / "model.onnx")
        staging.rename(repo / "breast-cancer" / str(version))
        swaps.append(time.monotonic())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "breast-cancer").mkdir()
        shutil.copytree(ROOT / "models/breast-cancer/1", repo / "breast-cancer/1")
        shutil.copytree(ROOT / "models/breast-cancer-gbt", repo / "breast-cancer-gbt")
        proc, addrs = start([str(BIN / "keel"), "serve", "--model-repository", str(repo),
                             "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
                             "--metrics-addr", "127.0.0.1:0", "--repository-poll", "0.5",
                             "--admin-token", TOKEN])
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        http = addrs["http_addr"]
        try:
            steady = load(http, "http", rate=args.rate, duration=args.duration)
            stop_event, swaps = threading.Event(), []
            thread = threading.Thread(target=publisher, args=(repo, stop_event, 2.0, swaps))
            thread.start()
            swapping = load(http, "http", rate=args.rate, duration=args.duration)
            stop_event.set()
            thread.join()
            final = serving(http, "breast-cancer")

            for _ in range(5):
                control(http, "breast-cancer-gbt", "unload")
                control(http, "breast-cancer-gbt", "load")
            before = rss_mb(proc.pid)
            for _ in range(args.cycles):
                control(http, "breast-cancer-gbt", "unload")
                control(http, "breast-cancer-gbt", "load")
            time.sleep(1)
            after = rss_mb(proc.pid)
        finally:
            stop(proc)

    def p(result, q):
        return result["latency_us"][q] / 1000

    print(f"open loop {args.rate:.0f} req/s, {args.duration:.0f} s each, HTTP binary, 1 row")
    print(f"  steady:   p50 {p(steady, 'p50'):.3f} ms  p99 {p(steady, 'p99'):.3f} ms  errors {steady['errors']}")
    print(f"  swapping: p50 {p(swapping, 'p50'):.3f} ms  p99 {p(swapping, 'p99'):.3f} ms  errors {swapping['errors']}"
          f"  ({len(swaps)} versions published; serving {final} at the end)")
    print(f"  p99 swapping / steady: {p(swapping, 'p99') / p(steady, 'p99'):.2f}x (target <= 2x)")
    print(f"breast-cancer-gbt, {args.cycles} unload/load cycles: RSS {before:.1f} -> {after:.1f} MB "
          f"({after - before:+.1f} MB, target <= 10 MB)")


if __name__ == "__main__":
    main()

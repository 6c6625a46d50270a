#!/usr/bin/env python3
"""Serving throughput with the prediction log and embedded monitor on vs off, same load, same run
(release build, 127.0.0.1): breast-cancer, 1 row per request, closed loop. Runs alternate off/on
`--rounds` times so drift in the machine's speed hits both sides alike.

    cargo build --release --bins && .venv/bin/python benches/logging.py [--duration 10] [--rounds 3]
"""

import argparse
import statistics
import tempfile
import threading
from pathlib import Path

from targets import BIN, ROOT, load, start, stop


def serve(extra: list[str], log_dir: Path | None):
    args = [str(BIN / "keel"), "serve", "--model-repository", str(ROOT / "models"), "--http-addr", "127.0.0.1:0",
            "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", *extra]
    if log_dir:
        args += ["--prediction-log-dir", str(log_dir)]
    proc, addrs = start(args)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, addrs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    results = {"off": [], "on": [], "on+files": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, extra, log_dir in [("off", ["--monitor", "off"], None), ("on", [], None),
                                         ("on+files", [], Path(tmp))]:
                proc, addrs = serve(extra, log_dir)
                try:
                    r = load(addrs["http_addr"], "http", concurrency=args.concurrency, duration=args.duration)
                finally:
                    stop(proc)
                results[name].append(r["throughput_rps"])
    off = statistics.median(results["off"])
    print(f"breast-cancer, 1 row, HTTP binary, concurrency {args.concurrency}, {args.rounds} x {args.duration:.0f} s")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  logging {name:9s} {med:9.0f} req/s  ({med / off:.3f}x of off)   runs: {[round(v) for v in values]}")


if __name__ == "__main__":
    main()

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
    parser.add_argument("--no-files", action="store_true", help="skip the Parquet file sink runs")
    args = parser.parse_args()
    configs = [("off", ["--monitor", "off"], False), ("on", [], False), ("on+files", [], True)]
    if args.no_files:
        configs = configs[:2]
    results = {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, extra, files in configs:
                proc, addrs = serve(extra, Path(tmp) if files else None)
                try:
                    r = load(addrs["http_addr"], "http", concurrency=args.concurrency, duration=args.duration)
                finally:
                    stop(proc)
                results[name].append(r["throughput_rps"])
    off = statistics.median(results["off"])
    pairs = [on / off for on, off in zip(results["on"], results["off"])]
    print(f"breast-cancer, 1 row, HTTP binary, concurrency {args.concurrency}, {args.rounds} x {args.duration:.0f} s")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  logging {name:9s} {med:9.0f} req/s  ({med / off:.3f}x of off)   runs: {[round(v) for v in values]}")
    print(f"  on / off, run by run: {[round(p, 3) for p in pairs]}, median {statistics.median(pairs):.3f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make bench-instructions`: instructions per request, Keel against `keel-canned` (the protocol floor), counted
by valgrind's callgrind: a measure that does not move with the machine's load, for A/B comparisons finer than
throughput rounds resolve (a 3 s wrk round moves 5-10% on a shared 2-core VM; a count here moves well under 1%).

    .venv/bin/python benches/instructions.py [--requests 20000] [--protocols http,grpc] [--top 25]

Each server runs under callgrind with counting off; after a warm-up (3,000 requests) counting is turned on for
`--requests` requests (HTTP: `h2load --h1`, 32 connections, tests/data/example_request.json; gRPC: h2load 4 x 8,
the same row as a pre-framed ModelInferRequest), then off, and the counts are dumped. Servers: Keel with its
defaults, Keel with `--monitor off` (what the prediction log and monitor cost) and keel-canned. Printed per
request: all instructions (user space only: callgrind does not see the kernel), Keel's over keel-canned's, the
log's, and the functions whose own instructions differ most. Under valgrind the threads run one at a time, so
batches are larger than under real load (about 19 rows per backend call against 7 at wrk 32 connections): the
backend's share per request is smaller here. Instructions are not time (cache misses are not counted): use the
counts to tell what a change takes off, the throughput rounds (`make bench-load`) for what it is worth.
valgrind and h2load (Debian: valgrind, nghttp2-client) are installed when missing and we are root.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# benches/logging.py would shadow the standard library's logging module (grpc imports it): the folder is
# searched last, for bench_load alone.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benches"]
sys.path.append(str(ROOT / "benches"))
from bench_load import Server, ensure_tools, grpc_body, wait_ready  # noqa: E402

WARM_UP = 3000


def load(protocol: str, server: Server, requests: int, body_file: str):
    """`requests` requests of `protocol` to `server`, all of which must succeed."""
    if protocol == "http":
        argv = ["h2load", "--h1", "-n", str(requests), "-c", "32", "-H", "content-type: application/json",
                "-d", str(ROOT / "tests/data/example_request.json"),
                f"http://{server.http}/v2/models/breast-cancer/infer"]
    else:
        argv = ["h2load", "-n", str(requests), "-c", "4", "-m", "8", "-t", "1",
                "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body_file,
                f"http://{server.grpc}/inference.GRPCInferenceService/ModelInfer"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done or int(done.group(2)) != requests:
        raise RuntimeError(f"not every request succeeded:\n{out}")


def functions(profile: str) -> tuple[int, Counter]:
    """The profile's total instructions and each function's own (inlined code counted where it ran)."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100",
                          "--show-percs=no", profile], capture_output=True, text=True, check=True).stdout
    total, own = 0, Counter()
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+)\s+(.*)$", line)
        if not match:
            continue
        n, rest = int(match.group(1).replace(",", "")), match.group(2)
        if "PROGRAM TOTALS" in rest:
            total = n
            continue
        name = re.sub(r" \[[^\]]*\]$", "", rest.split(":", 1)[1] if ":" in rest else rest)
        own[name] += n
    return total, own


def measure(name: str, argv: list[str], protocol: str, requests: int, body_file: str, work: str) -> dict:
    out = os.path.join(work, f"{name}.{protocol}")
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    env = dict(os.environ, NO_COLOR="1", KEEL_LOG="info")
    started = time.monotonic()
    server = Server(name, valgrind + argv, env)
    try:
        if name != "canned":
            wait_ready(server.http)
        load(protocol, server, WARM_UP, body_file)
        pid = str(server.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        load(protocol, server, requests, body_file)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        server.stop()
    dumps = sorted(Path(work).glob(f"{name}.{protocol}.*"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no profile for {name}")
    total, own = functions(str(dumps[-1]))
    print(f"  {name} {protocol}: {total / requests:,.0f} instructions per request "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    return {"total": total / requests, "own": {k: v / requests for k, v in own.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--top", type=int, default=25, help="functions listed by Keel's own instructions "
                        "over keel-canned's")
    parser.add_argument("--keel", default=str(ROOT / "target/release/keel"))
    parser.add_argument("--canned", default=str(ROOT / "target/release/keel-canned"))
    parser.add_argument("--out", default=str(ROOT / "target/instructions.json"))
    args = parser.parse_args()
    ensure_tools((("valgrind", "valgrind"), ("callgrind_annotate", "valgrind"), ("h2load", "nghttp2-client")))

    request = json.loads((ROOT / "tests/data/example_request.json").read_text())
    work = tempfile.mkdtemp(prefix="keel-instructions-")
    body_file = os.path.join(work, "request.bin")
    Path(body_file).write_bytes(grpc_body(request["inputs"][0]["data"]))

    serve = [args.keel, "serve", "--model-repository", str(ROOT / "models"), "--http-addr", "127.0.0.1:0",
             "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]
    servers = {
        "keel": serve,
        "keel_nolog": [*serve, "--monitor", "off"],
        "canned": [args.canned, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
    }
    results = {}
    try:
        for protocol in args.protocols.split(","):
            results[protocol] = {name: measure(name, argv, protocol, args.requests, body_file, work)
                                 for name, argv in servers.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for protocol, by in results.items():
        keel, nolog, canned = by["keel"], by["keel_nolog"], by["canned"]
        print(f"\n{protocol}: instructions per request: keel {keel['total']:,.0f}, keel --monitor off "
              f"{nolog['total']:,.0f}, keel-canned {canned['total']:,.0f}; keel over canned "
              f"{keel['total'] - canned['total']:+,.0f}, the log and monitor {keel['total'] - nolog['total']:+,.0f}; "
              f"canned / keel {canned['total'] / keel['total']:.3f}")
        names = set(keel["own"]) | set(canned["own"])
        diff = sorted(names, key=lambda k: keel["own"].get(k, 0) - canned["own"].get(k, 0), reverse=True)
        print(f"  {'keel':>7} {'canned':>7} {'over':>7}  own instructions per request")
        for name in diff[:args.top]:
            k, c = keel["own"].get(name, 0), canned["own"].get(name, 0)
            print(f"  {k:7.0f} {c:7.0f} {k - c:+7.0f}  {name[:110]}")
    summary = {p: {n: round(r["total"], 1) for n, r in by.items()} for p, by in results.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"requests": args.requests, "per_request": summary}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

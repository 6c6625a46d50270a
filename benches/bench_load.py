#!/usr/bin/env python3
"""`make bench-load`: Keel against `keel-canned` (the protocol floor: Keel's HTTP/gRPC stacks answering a
canned response) under independent C load generators, side by side in one run, and the ratios.

    .venv/bin/python benches/bench_load.py [--duration 10] [--rounds 2] [--out target/bench-load.json]

- HTTP JSON: `wrk`, 1 thread, 32 keep-alive connections, single-row requests (tests/data/example_request.json:
  30 FP32 features) to the breast-cancer logistic regression.
- gRPC unary: `h2load`, 4 connections x 8 concurrent streams, a pre-framed ModelInferRequest of the same row
  (raw FP32 contents), `content-type: application/grpc`; p50 and p99 from h2load's per-request log.

Keel runs with its defaults (dynamic batching, embedded monitor, prediction log on) on ./models, and again
with `--monitor off` (no prediction log) for the cost of logging; all servers are release builds. Each
round measures one protocol at a time, the servers back to back, and rounds alternate the servers' order,
so drift of this shared machine hits all alike; the best round of each is reported (the least disturbed),
then the round-by-round ratios and their medians. Each measurement also records the server's own CPU time
per request (/proc/PID/stat), which the load generator's share of the CPU moves far less than throughput. Ratios come from one run: compare them, not the absolute numbers, across
machines. On a virtual machine the hypervisor may give some of the CPU to other guests (steal time, from
/proc/stat); each measurement records its share, and the round-by-round medians are given again over the
rounds where no measurement lost more than `--max-steal` of the CPU. wrk and h2load (Debian: wrk,
nghttp2-client) are installed when missing and we are root.
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# benches/logging.py would shadow the standard library's logging module (grpc imports it).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benches"]
MODEL = "breast-cancer"


def ensure_tools(tools=(("wrk", "wrk"), ("h2load", "nghttp2-client"))):
    """Installs the Debian package of each (tool, package) whose tool is not on the PATH."""
    missing = sorted({pkg for tool, pkg in tools if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing tools; install them: sudo apt-get install -y {' '.join(missing)}")
    print(f"installing {' '.join(missing)}", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


class Server:
    """A server process that prints `http_addr=... grpc_addr=...` once listening."""

    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 120
        self.metrics = None
        for line in self.proc.stdout:
            match = re.search(r"http_addr=(\S+) grpc_addr=(\S+)", line)
            if match:
                self.http, self.grpc = match.group(1), match.group(2)
                metrics = re.search(r"metrics_addr=(\S+)", line)
                self.metrics = metrics.group(1) if metrics else None
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError(f"{name} did not start")
        # Keep reading so the pipe never fills.
        import threading
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def wait_ready(http: str):
    import urllib.request
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("keel not ready")


def grpc_body(features: list[float]) -> bytes:
    """A ModelInferRequest with one FP32 row in raw_input_contents, framed for gRPC."""
    from tritonclient.grpc import service_pb2
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([1, len(features)])
    request.raw_input_contents.append(struct.pack(f"<{len(features)}f", *features))
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def check_grpc(addr: str, body: bytes):
    """One call through the real client first: h2load counts HTTP 200 as success, gRPC errors ride in trailers."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    with grpc.insecure_channel(addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest.FromString(body[5:])
        reply = stub.ModelInfer(request, timeout=10)
        assert reply.outputs, reply


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far (/proc/stat's first line, in ticks), or None where there is none."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the CPU time between two `cpu_ticks` that the hypervisor gave to other guests."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    # user nice system idle iowait irq softirq steal; guest time is already counted in user.
    delta = [b - a for a, b in zip(before[:8], after[:8])]
    total = sum(delta)
    return delta[7] / total if total > 0 else None


def process_cpu_s(pid: int | None) -> float | None:
    """The CPU time a process (all its threads) has used so far, in seconds (/proc/PID/stat's utime +
    stime), or None where there is none."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name may hold spaces: the fields after it start past its closing parenthesis.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def measured(run, *args, pid: int | None = None) -> dict:
    """`run(*args)`'s result with the CPU share stolen while it ran (`steal`, None if unknown) and, given
    the server's `pid`, the server's CPU time per request in µs (`cpu_us`: its CPU time over the run
    divided by the requests a second times the run's length, warm-up included on both sides)."""
    before, cpu_before, start = cpu_ticks(), process_cpu_s(pid), time.monotonic()
    result = run(*args)
    elapsed, cpu_after = time.monotonic() - start, process_cpu_s(pid)
    result["steal"] = steal_share(before, cpu_ticks())
    result["cpu_us"] = (1e6 * (cpu_after - cpu_before) / (result["rps"] * elapsed)
                        if cpu_before is not None and cpu_after is not None and result["rps"] > 0 else None)
    return result


def wrk(url: str, body: str, duration: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n'
                     'wrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(body)}\n"
                     "local errors = 0\n"
                     "response = function(status) if status ~= 200 then errors = errors + 1 end end\n")
    try:
        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", script.name, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # The latency distribution's line, not a "+/- Stdev" share that happens to end in 99% (87.99%).
    p99 = parse_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p99_ms": p99, "errors": int(bad.group(1)) if bad else 0}


def parse_ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not match:
        # Seen once in a run of many: a latency wrk printed in a form not listed here. Reported, not fatal.
        print(f"unreadable latency from the load generator: {text!r}", flush=True)
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def h2load(addr: str, body_file: str, duration: int, latencies: bool = True) -> dict:
    """`latencies`: also the p50 and p99 of the calls' times, from h2load's per-request log (h2load prints
    only their mean and spread). Writing the log costs h2load about 3% of its calls a second, alike for
    every server measured with it."""
    log = None
    if latencies:
        with tempfile.NamedTemporaryFile(suffix=".tsv", delete=False) as f:
            log = f.name
    try:
        out = subprocess.run(
            ["h2load", "-c4", "-m8", "-t1", "-D", str(duration), "--warm-up-time=1",
             *([f"--log-file={log}"] if log else []),
             "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body_file,
             f"http://{addr}/inference.GRPCInferenceService/ModelInfer"],
            capture_output=True, text=True, check=True).stdout
        times = call_times_ms(log) if log else []
    finally:
        if log:
            os.unlink(log)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    failed = int(re.search(r"(\d+) failed", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
    errors = failed + sum(int(status.group(i)) for i in (2, 3, 4))
    succeeded = int(re.search(r"(\d+) succeeded", out).group(1))
    nan = float("nan")
    return {"rps": rps, "mean_ms": parse_ms(mean), "errors": errors, "succeeded": succeeded,
            "p50_ms": quantile(times, 0.50) if times else nan, "p99_ms": quantile(times, 0.99) if times else nan}


def call_times_ms(log: str) -> list[float]:
    """The third column of h2load's `--log-file` (microseconds from a request's start to the end of its
    response), in ms, sorted. h2load appends to the file, so each measurement writes a new one."""
    with open(log) as f:
        return sorted(int(line.split("\t")[2]) / 1e3 for line in f if line.count("\t") >= 2)


def quantile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank quantile (as wrk reports its percentiles)."""
    rank = min(len(sorted_values), max(1, math.ceil(len(sorted_values) * q)))
    return sorted_values[rank - 1]


def grpc_batch_body(rows: int) -> bytes:
    """A ModelInferRequest of `rows` rows drawn uniformly within the training range of each feature
    (models/breast-cancer/2/baseline.json), so the monitor bins realistic values; framed for gRPC."""
    import random
    from tritonclient.grpc import service_pb2
    rng = random.Random(1)
    features = json.loads((ROOT / "models/breast-cancer/2/baseline.json").read_text())["features"]
    values = [rng.uniform(f["min"], f["max"]) for _ in range(rows) for f in features]
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([rows, len(features)])
    request.raw_input_contents.append(struct.pack(f"<{len(values)}f", *values))
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def counter(text: str, name: str, label: str = "") -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line)


def monitor_peak(server: "Server", duration: int, rows: int = 256) -> dict:
    """Peak gRPC load of `rows`-row requests (h2load 4 x 8): the share of served rows that reach the
    embedded monitor's drift window (`keel_monitor_records_total`), `sample_rate = 1`."""
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as reply:
            return reply.read().decode()

    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(grpc_batch_body(rows))
    try:
        before = scrape()
        load = measured(h2load, server.grpc, f.name, duration, False)
        time.sleep(2)  # the drain's last batch
        after = scrape()
    finally:
        os.unlink(f.name)
    # Keel's own count of the rows it served: h2load leaves its warm-up second out of its figures.
    served = counter(after, "keel_inference_rows_total", f'model="{MODEL}"') - \
        counter(before, "keel_inference_rows_total", f'model="{MODEL}"')
    binned = counter(after, "keel_monitor_records_total", f'model="{MODEL}"') - \
        counter(before, "keel_monitor_records_total", f'model="{MODEL}"')
    dropped = counter(after, "keel_prediction_log_dropped_total") - counter(before, "keel_prediction_log_dropped_total")
    return {"rps": load["rps"], "rows_per_s": load["rps"] * rows, "served_rows": served, "binned_rows": binned,
            "dropped_rows": dropped, "binned_share": binned / served if served else 0.0, "steal": load["steal"]}


def percent(share: float | None) -> str:
    return "?" if share is None else f"{share * 100:.1f}%"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keel", default=str(ROOT / "target/release/keel"))
    parser.add_argument("--canned", default=str(ROOT / "target/release/keel-canned"))
    parser.add_argument("--out", default=str(ROOT / "target/bench-load.json"))
    parser.add_argument("--max-steal", type=float, default=0.02, help="the largest share of the CPU the "
                        "hypervisor may take from a round's measurements for it to count as quiet")
    parser.add_argument("--canned-threads", type=int, default=0, help="also run keel-canned with this many "
                        "connection threads, as Keel serves by default, and report Keel against it (0: skip)")
    parser.add_argument("--peak", type=int, default=10, help="seconds of 256-row gRPC peak load for the "
                        "monitor's share of rows (0: skip)")
    args = parser.parse_args()
    ensure_tools()

    request = (ROOT / "tests/data/example_request.json").read_text()
    features = json.loads(request)["inputs"][0]["data"]
    body = grpc_body(features)
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(body)
        body_file = f.name

    env = dict(os.environ, NO_COLOR="1", KEEL_LOG="warn")
    serve = [args.keel, "serve", "--model-repository", str(ROOT / "models"), "--http-addr", "127.0.0.1:0",
             "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]
    servers = {
        "keel": Server("keel", serve, dict(env, KEEL_LOG="info")),
        # The same Keel with the prediction log and monitor off: the cost of logging (target: on/off >= 0.97).
        "keel_nolog": Server("keel --monitor off", [*serve, "--monitor", "off"], dict(env, KEEL_LOG="info")),
        "canned": Server("keel-canned", [args.canned, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
                         env),
    }
    if args.canned_threads:
        # The canned server with Keel's threading (conn_threads.rs): the floor for Keel's own design.
        servers["canned_threads"] = Server(
            f"keel-canned --connection-threads {args.canned_threads}",
            [args.canned, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
             "--connection-threads", str(args.canned_threads)], env)
    results = {key: {"http": [], "grpc": []} for key in servers}
    try:
        for key in ("keel", "keel_nolog"):
            wait_ready(servers[key].http)
        for server in servers.values():
            check_grpc(server.grpc, body)
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            # One protocol at a time, the servers back to back: the measurements a ratio compares are at
            # most two apart, so the box's drift between them is small.
            for proto in ("http", "grpc"):
                for key in order:
                    server = servers[key]
                    pid = server.proc.pid
                    if proto == "http":
                        m = measured(wrk, f"http://{server.http}/v2/models/{MODEL}/infer", request,
                                     args.duration, pid=pid)
                        detail = f"p99 {m['p99_ms']:.2f} ms"
                    else:
                        m = measured(h2load, server.grpc, body_file, args.duration, pid=pid)
                        detail = f"mean {m['mean_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms"
                    results[key][proto].append(m)
                    cpu = f"{m['cpu_us']:.1f} µs" if m["cpu_us"] is not None else "?"
                    print(f"round {round_ + 1} {proto:4} {key:10} {m['rps']:>9.0f} req/s {detail}"
                          f"   server CPU {cpu} per request   steal {percent(m['steal'])}", flush=True)
        peak = monitor_peak(servers["keel"], args.peak) if args.peak else None
    finally:
        for server in servers.values():
            server.stop()
        os.unlink(body_file)

    best = {k: {p: max(v[p], key=lambda r: r["rps"]) for p in v} for k, v in results.items()}
    errors = sum(r["errors"] for k in results.values() for runs in k.values() for r in runs)
    summary = {
        "http_ratio": best["keel"]["http"]["rps"] / best["canned"]["http"]["rps"],
        "http_p99_ratio": best["keel"]["http"]["p99_ms"] / best["canned"]["http"]["p99_ms"],
        "grpc_ratio": best["keel"]["grpc"]["rps"] / best["canned"]["grpc"]["rps"],
        "grpc_p99_ratio": best["keel"]["grpc"]["p99_ms"] / best["canned"]["grpc"]["p99_ms"],
        "logging_http_ratio": best["keel"]["http"]["rps"] / best["keel_nolog"]["http"]["rps"],
        "logging_grpc_ratio": best["keel"]["grpc"]["rps"] / best["keel_nolog"]["grpc"]["rps"],
        "errors": errors,
    }
    print()
    print("| | Keel | canned | Keel / canned |")
    print("|---|---|---|---|")
    print(f"| HTTP JSON, wrk 1 thread, 32 connections | {best['keel']['http']['rps'] / 1e3:.1f}k req/s, "
          f"p99 {best['keel']['http']['p99_ms']:.2f} ms | {best['canned']['http']['rps'] / 1e3:.1f}k, "
          f"p99 {best['canned']['http']['p99_ms']:.2f} ms | **{summary['http_ratio']:.2f}** "
          f"(p99 {summary['http_p99_ratio']:.2f}x) |")
    print(f"| gRPC unary, h2load 4 x 8 streams | {best['keel']['grpc']['rps'] / 1e3:.1f}k, "
          f"p99 {best['keel']['grpc']['p99_ms']:.2f} ms | {best['canned']['grpc']['rps'] / 1e3:.1f}k, "
          f"p99 {best['canned']['grpc']['p99_ms']:.2f} ms | **{summary['grpc_ratio']:.2f}** "
          f"(p99 {summary['grpc_p99_ratio']:.2f}x) |")
    print(f"logging on / off: HTTP {summary['logging_http_ratio']:.3f}, gRPC {summary['logging_grpc_ratio']:.3f} "
          f"(off: {best['keel_nolog']['http']['rps'] / 1e3:.1f}k, {best['keel_nolog']['grpc']['rps'] / 1e3:.1f}k)")
    if "canned_threads" in best:
        for proto, label in (("http", "HTTP"), ("grpc", "gRPC")):
            ratio = best["keel"][proto]["rps"] / best["canned_threads"][proto]["rps"]
            summary[f"{proto}_ratio_canned_threads"] = ratio
            print(f"{label}: keel-canned --connection-threads {args.canned_threads} "
                  f"{best['canned_threads'][proto]['rps'] / 1e3:.1f}k req/s, Keel / it **{ratio:.2f}**")
    # The same ratios round by round (each round runs the servers back to back), and their medians: how
    # far one round moves on a shared box, next to the best-of figures above.
    summary["per_round"] = {}
    summary["quiet_rounds"] = {}
    pairs_to_report = [("keel / canned", "keel", "canned"), ("logging on / off", "keel", "keel_nolog")]
    if "canned_threads" in results:
        pairs_to_report.append(("keel / canned with connection threads", "keel", "canned_threads"))
    for name, top, bottom in pairs_to_report:
        line, quiet_line = [], []
        for proto in ("http", "grpc"):
            pairs = list(zip(results[top][proto], results[bottom][proto]))
            ratios = [a["rps"] / b["rps"] for a, b in pairs]
            summary["per_round"][f"{name} {proto}"] = ratios
            label = "HTTP" if proto == "http" else "gRPC"
            line.append(f"{label} {' '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})")
            # A round counts as quiet when neither side of the ratio lost more than --max-steal of the CPU.
            quiet = [r for r, (a, b) in zip(ratios, pairs)
                     if max(a["steal"] or 0, b["steal"] or 0) <= args.max_steal]
            summary["quiet_rounds"][f"{name} {proto}"] = quiet
            quiet_line.append(f"{label} {len(quiet)} of {len(ratios)}"
                              + (f", median {statistics.median(quiet):.3f}" if quiet else ""))
        print(f"{name}, round by round: {'; '.join(line)}")
        print(f"{name}, rounds with at most {args.max_steal * 100:.0f}% of the CPU stolen: {'; '.join(quiet_line)}")
    # The servers' own CPU time per request, round by round: steadier than requests a second on a shared
    # box (the load generator's share and the hypervisor's drift move throughput, much less this).
    for proto, label in (("http", "HTTP"), ("grpc", "gRPC")):
        cpu = {k: [r["cpu_us"] for r in results[k][proto] if r.get("cpu_us") is not None] for k in results}
        if all(cpu.values()):
            medians = {k: statistics.median(v) for k, v in cpu.items()}
            summary.setdefault("cpu_us_per_request", {})[proto] = medians
            print(f"server CPU per request, {label} (median of rounds): keel {medians['keel']:.1f} µs, "
                  f"keel --monitor off {medians['keel_nolog']:.1f}, keel-canned {medians['canned']:.1f}; "
                  f"canned / keel {medians['canned'] / medians['keel']:.3f}")
    # Target 1's latency half: Keel's p99 at most 1.5x the canned server's, round by round.
    p99 = []
    for proto, label in (("http", "HTTP"), ("grpc", "gRPC")):
        ratios = [a["p99_ms"] / b["p99_ms"] for a, b in zip(results["keel"][proto], results["canned"][proto])]
        summary["per_round"][f"p99 keel / canned {proto}"] = ratios
        p99.append(f"{label} {' '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")
    print(f"p99 keel / canned, round by round: {'; '.join(p99)}")
    steals = [r["steal"] for k in results.values() for runs in k.values() for r in runs if r["steal"] is not None]
    if steals:
        summary["steal_max"] = max(steals)
        print(f"CPU stolen by the hypervisor per measurement: {percent(min(steals))} to {percent(max(steals))}")
    if peak:
        summary["monitor_binned_share"] = peak["binned_share"]
        print(f"monitor at peak (gRPC 256-row requests, h2load 4 x 8): {peak['rps']:.0f} req/s = "
              f"{peak['rows_per_s'] / 1e6:.2f}M rows/s; {peak['binned_share'] * 100:.1f}% of the served rows reached "
              f"the drift window ({peak['dropped_rows']:.0f} dropped, counted; {percent(peak['steal'])} of the CPU "
              "stolen)")
    print(f"errors (non-2xx, failed): {errors}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rounds": results, "best": best, "summary": summary, "peak": peak},
                                         indent=2))
    print(f"written {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

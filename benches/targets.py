#!/usr/bin/env python3
"""Measures Keel's serving targets in one run on this machine (release builds, 127.0.0.1 only):

  1. single-row breast-cancer, concurrency 32: Keel vs the canned-response server, HTTP and gRPC
  2. concurrency 1: Keel's p50 minus the backend's own time for one row
  3. the heavy MLP (tests/models/slow-mlp), concurrency 64: dynamic batching on vs off, and p99 vs
     max_queue_delay + 2x the compute time of a full batch
  4. open loop (Poisson) at 80% of measured capacity: p99 / p50 (the MLP, and breast-cancer)
  5. idle RSS with the example repository, and RSS over a sustained run

    cargo build --release --bins && .venv/bin/python benches/targets.py [--duration 10] [--soak 300]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release"


def start(cmd, env=None) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1", **(env or {})})
    for line in proc.stdout:
        addrs = dict(re.findall(r"(\w+_addr)=(\S+)", line))
        if "grpc_addr" in addrs:
            return proc, addrs
    raise RuntimeError(f"{cmd[0]} did not start")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def load(url, protocol, model="breast-cancer", concurrency=None, rate=None, duration=10, fmt="binary", **extra):
    out = tempfile.mktemp(suffix=".json")
    cmd = [str(BIN / "keel-load"), "--url", f"http://{url}", "--protocol", protocol, "--model", model,
           "--duration", str(duration), "--warmup", "2", "--json", out]
    if protocol == "http":
        cmd += ["--format", fmt]
    cmd += ["--concurrency", str(concurrency)] if rate is None else ["--rate", str(rate)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    subprocess.run(cmd, check=True, capture_output=True)
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def flat(result):
    """The figures this script uses from keel-load's JSON report."""
    lat = result["latency_us"]
    return {"throughput_rps": result["throughput_rps"], "errors": result["errors"], "dropped": result["dropped"],
            "p50_us": lat["p50"], "p90_us": lat["p90"], "p99_us": lat["p99"], "p999_us": lat["p999"]}


def metrics(addr) -> str:
    return urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mb(pid) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--soak", type=int, default=300, help="seconds of sustained load for the RSS check")
    args = parser.parse_args()
    d = args.duration
    ort = next((ROOT / ".venv/lib").glob("python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))

    repo = Path(tempfile.mkdtemp())
    shutil.copytree(ROOT / "models/breast-cancer", repo / "breast-cancer")
    shutil.copytree(ROOT / "models/breast-cancer-gbt", repo / "breast-cancer-gbt")
    shutil.copytree(ROOT / "tests/models/slow-mlp", repo / "mlp")
    (repo / "mlp/model.toml").write_text("max_batch_size = 64\n")
    shutil.copytree(ROOT / "tests/models/slow-mlp", repo / "mlp-unbatched")
    (repo / "mlp-unbatched/model.toml").write_text("max_batch_size = 0\n")

    keel_cmd = [str(BIN / "keel"), "serve", "--model-repository", str(repo), "--http-addr", "127.0.0.1:0",
                "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]
    report = {}

    # 5a. Idle RSS with the example repository, before any traffic.
    keel, k = start(keel_cmd, {"ORT_DYLIB_PATH": str(ort)})
    time.sleep(2)
    report["idle_rss_mb"] = round(rss_mb(keel.pid), 1)

    # 5b. RSS over a sustained run at a load this machine carries (no growth expected).
    rss = [rss_mb(keel.pid)]
    step = max(10, args.soak // 5)
    for _ in range(max(1, args.soak // step)):
        load(k["http_addr"], "http", concurrency=16, duration=step, rows=4)
        rss.append(rss_mb(keel.pid))
    report["soak_rss_mb"] = [round(r, 1) for r in rss]

    # 1. Keel vs canned, back to back, concurrency 32, single rows.
    canned, c = start([str(BIN / "keel-canned"), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
    for proto in ("http", "grpc"):
        addr_k, addr_c = (k["http_addr"], c["http_addr"]) if proto == "http" else (k["grpc_addr"], c["grpc_addr"])
        keel_r = flat(load(addr_k, proto, concurrency=32, duration=d))
        canned_r = flat(load(addr_c, proto, concurrency=32, duration=d))
        report[f"c32_{proto}"] = {
            "keel_rps": keel_r.get("throughput_rps"), "canned_rps": canned_r.get("throughput_rps"),
            "ratio": round(keel_r["throughput_rps"] / canned_r["throughput_rps"], 3),
            "keel_errors": keel_r.get("errors"),
        }
    canned_c1 = flat(load(c["http_addr"], "http", concurrency=1, duration=d))
    stop(canned)

    # 2. Concurrency 1: p50 minus the backend's own time per request (compute_infer from the statistics).
    before = json.load(urllib.request.urlopen(f"http://{k['http_addr']}/v2/models/breast-cancer/versions/2/stats"))
    c1 = flat(load(k["http_addr"], "http", concurrency=1, duration=d))
    after = json.load(urllib.request.urlopen(f"http://{k['http_addr']}/v2/models/breast-cancer/versions/2/stats"))
    ib, ia = before["model_stats"][0]["inference_stats"], after["model_stats"][0]["inference_stats"]
    infer_us = (ia["compute_infer"]["ns"] - ib["compute_infer"]["ns"]) / max(1, ia["compute_infer"]["count"] - ib["compute_infer"]["count"]) / 1000
    report["c1_http"] = {"p50_us": c1["p50_us"], "backend_us": round(infer_us, 1),
                         "p50_minus_backend_us": round(c1["p50_us"] - infer_us, 1),
                         "canned_p50_us": canned_c1["p50_us"],
                         "keel_over_canned_minus_backend_us": round(c1["p50_us"] - canned_c1["p50_us"] - infer_us, 1)}

    # 3. Batching on vs off, heavy MLP (512 features), concurrency 64.
    m0 = metrics(k["metrics_addr"])
    on = flat(load(k["http_addr"], "http", model="mlp", concurrency=64, duration=d, features=512, outputs="output"))
    m1 = metrics(k["metrics_addr"])
    off = flat(load(k["http_addr"], "http", model="mlp-unbatched", concurrency=64, duration=d, features=512,
                    outputs="output"))
    lab = dict(model="mlp", version="1")
    delta = lambda name: metric(m1, name, **lab) - metric(m0, name, **lab)
    batches = delta("keel_compute_duration_seconds_count")
    rows = delta("keel_batch_rows_sum")
    mean_batch_us = delta("keel_compute_duration_seconds_sum") / max(1, batches) * 1e6
    # The compute time of a full batch (64 rows), measured alone.
    m2 = metrics(k["metrics_addr"])
    load(k["http_addr"], "http", model="mlp", concurrency=1, duration=3, features=512, outputs="output", rows=64)
    m3 = metrics(k["metrics_addr"])
    full = lambda name: metric(m3, name, **lab) - metric(m2, name, **lab)
    full_batch_us = full("keel_compute_duration_seconds_sum") / max(1, full("keel_compute_duration_seconds_count")) * 1e6
    report["c64_mlp"] = {
        "batched_rps": on["throughput_rps"], "unbatched_rps": off["throughput_rps"],
        "ratio": round(on["throughput_rps"] / off["throughput_rps"], 2),
        "mean_rows_per_batch": round(rows / max(1, batches), 1), "mean_batch_compute_us": round(mean_batch_us),
        "full_batch_compute_us": round(full_batch_us),
        "batched_p50_us": on["p50_us"], "batched_p99_us": on["p99_us"],
        "p99_bound_us (max_queue_delay 0 + 2 x full batch compute)": round(2 * full_batch_us),
        "errors": on["errors"] + off["errors"],
    }

    # 4. Open loop at 80% of capacity. The MLP's capacity is its closed-loop throughput above; for
    # breast-cancer the load generator shares the 2 cores, so capacity is what an open loop achieves.
    mlp_rate = round(0.8 * on["throughput_rps"])
    ol = flat(load(k["http_addr"], "http", model="mlp", rate=mlp_rate, duration=d, features=512, outputs="output"))
    report["open_loop_80pct_mlp"] = {"rate": mlp_rate, "achieved_rps": ol["throughput_rps"], "p50_us": ol["p50_us"],
                                     "p99_us": ol["p99_us"], "p99_over_p50": round(ol["p99_us"] / ol["p50_us"], 2),
                                     "dropped": ol["dropped"], "errors": ol["errors"]}
    probe = flat(load(k["http_addr"], "http", rate=round(report["c32_http"]["keel_rps"]), duration=d))
    bc_rate = round(0.8 * probe["throughput_rps"])
    ol = flat(load(k["http_addr"], "http", rate=bc_rate, duration=d))
    report["open_loop_80pct_breast_cancer"] = {"open_loop_capacity_rps": probe["throughput_rps"], "rate": bc_rate,
                                               "achieved_rps": ol["throughput_rps"], "p50_us": ol["p50_us"],
                                               "p99_us": ol["p99_us"], "p99_over_p50": round(ol["p99_us"] / ol["p50_us"], 2),
                                               "dropped": ol["dropped"], "errors": ol["errors"]}
    report["rss_after_all_mb"] = round(rss_mb(keel.pid), 1)
    stop(keel)
    shutil.rmtree(repo)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

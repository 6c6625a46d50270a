#!/usr/bin/env python3
"""Peak memory under hostile requests (issue 11, "Validate before allocating"): for each attack kind a fresh
`keel serve` (release build, example models, defaults: 64 MiB body and gRPC message limits) gets 4
concurrent worst-case requests near the size limit; the bench samples the server's /proc/PID/status
(VmRSS, VmHWM), then checks that a normal request still gets 200, and prints one table row per kind.

    cargo build --release --bin keel
    ORT_DYLIB_PATH=$PWD/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 \\
        .venv/bin/python benches/memory_attack.py [--kinds a,b] [--concurrency 4] [--rss-cap-mib 6144]

KEEL_BIN picks another binary. The server is killed (and the row says so) if its RSS passes --rss-cap-mib, so
a vulnerable build cannot take the machine down; a killed row means "at least the cap".

Amplification = peak RSS growth / bytes the attack requests carried together (concurrency x body; for gzip,
the decompressed message size, the wire size being shown apart).
"""

import sys
from pathlib import Path

# benches/logging.py would shadow the standard library's logging module (which grpc imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import gzip
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
from tritonclient.grpc import service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
KEEL_BIN = os.environ.get("KEEL_BIN", str(ROOT / "target/release/keel"))
MIB = 1 << 20
LIMIT = 64 * MIB
# A little under the limit, so the body itself is accepted and the decoder is what is attacked.
BODY = LIMIT - 64 * 1024
ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.0787, 1.095, 0.9053, 8.589,
       153.4, 0.0064, 0.049, 0.0537, 0.0159, 0.03, 0.0062, 25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656,
       0.7119, 0.2654, 0.4601, 0.1189]
GOOD_INPUT = {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}


def status_kib(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def fill_json(prefix: bytes, item: bytes, suffix: bytes, size: int = BODY) -> bytes:
    """prefix + item, item, ... + suffix, about `size` bytes; `item` ends with its separator."""
    n = (size - len(prefix) - len(suffix)) // len(item)
    return prefix + item * n + suffix


# ---- the attacks: each returns (description, payload bytes, what the server gets) ----------------------

def http_parameters_array():
    # {"parameters": {"x": [0,0,...,0]}, "inputs": [a valid input]}: the protocol allows only scalars there.
    body = fill_json(b'{"parameters": {"x": [', b"0,", b'0]}, "inputs": [' + json.dumps(GOOD_INPUT).encode() + b"]}")
    return "HTTP infer, parameters {\"x\": [0,0,...]}", body


def http_bytes_for_fp32():
    # BYTES declared for the FP32 model, with millions of empty strings.
    prefix = b'{"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, NNNNNNNNNN], "data": ['
    n = (BODY - len(prefix) - 8) // 3
    prefix = prefix.replace(b"NNNNNNNNNN", str(n).encode().rjust(10))
    body = prefix + b'"",' * (n - 1) + b'""]}]}'
    return "HTTP infer, BYTES [\"\",\"\",...] for FP32 input", body


def http_feedback_label_arrays():
    body = fill_json(b'{"feedback": [{"id": "a", "label": [', b"0,", b"0]}]}")
    return "HTTP feedback, label [0,0,...]", body


def grpc_message(entries_tag: int, n: int, datatype: str = "BYTES") -> bytes:
    """A ModelInferRequest for breast-cancer whose one input carries `n` empty entries of repeated field
    `entries_tag` of InferTensorContents (8: bytes_contents)."""
    contents = (varint(entries_tag << 3 | 2) + b"\x00") * n
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=[1, n]).SerializeToString()
    tensor += field(5, contents)
    head = pb.ModelInferRequest(model_name="breast-cancer").SerializeToString()
    return head + field(5, tensor)


def grpc_bytes_contents():
    n = (BODY - 256) // 2
    return "gRPC ModelInfer, bytes_contents: millions of empty entries", grpc_message(8, n)


def grpc_empty_inputs():
    # Millions of empty InferInputTensor entries: each is ~300 B once prost has decoded it.
    n = (BODY - 256) // 2
    head = pb.ModelInferRequest(model_name="breast-cancer").SerializeToString()
    return "gRPC ModelInfer, millions of empty `inputs` entries", head + b"\x2a\x00" * n


HTTP = {
    "http-parameters-array": ("/v2/models/breast-cancer/infer", http_parameters_array),
    "http-bytes-for-fp32": ("/v2/models/breast-cancer/infer", http_bytes_for_fp32),
    "http-feedback-label-arrays": ("/v2/models/breast-cancer/feedback", http_feedback_label_arrays),
}
GRPC = {
    "grpc-bytes-contents": (grpc_bytes_contents, False),
    "grpc-bytes-contents-gzip": (grpc_bytes_contents, True),
    "grpc-empty-inputs": (grpc_empty_inputs, False),
}


def start_keel(extra: list[str]) -> tuple[subprocess.Popen, dict]:
    cmd = [KEEL_BIN, "serve", "--model-repository", str(ROOT / "models"), "--http-addr", "127.0.0.1:0",
           "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    for line in proc.stdout:
        addrs = dict(re.findall(r"(\w+_addr)=(\S+)", line))
        if "grpc_addr" in addrs:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, addrs
    raise RuntimeError("keel did not start")


def http_post(addr: str, path: str, body: bytes, timeout=120) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(200).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(300).decode(errors="replace")
    except Exception as e:  # connection reset by a dying server, timeouts
        return 0, f"{type(e).__name__}: {e}"[:200]


def grpc_send(addr: str, message: bytes, compress: bool, timeout=120) -> tuple[str, str]:
    options = [("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB)]
    with grpc.insecure_channel(addr, options=options,
                               compression=grpc.Compression.Gzip if compress else None) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=None, response_deserializer=None)
        try:
            call(message, timeout=timeout)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, (e.details() or "")[:200]


def normal_request(addrs: dict) -> int:
    status, _ = http_post(addrs["http_addr"], "/v2/models/breast-cancer/infer",
                          json.dumps({"inputs": [GOOD_INPUT]}).encode(), timeout=30)
    return status


def run_kind(kind: str, concurrency: int, cap_kib: int, extra: list[str]) -> dict:
    proc, addrs = start_keel(extra)
    try:
        for _ in range(3):
            assert normal_request(addrs) == 200, "the server does not serve a normal request"
        time.sleep(0.5)
        base = status_kib(proc.pid)["VmRSS"]
        if kind in HTTP:
            path, build = HTTP[kind]
            what, body = build()
            wire = decoded = len(body)
            send = lambda: http_post(addrs["http_addr"], path, body)  # noqa: E731
        else:
            build, compress = GRPC[kind]
            what, body = build()
            decoded = len(body)
            wire = len(gzip.compress(body, 6)) if compress else decoded
            what += " (gzip)" if compress else ""
            send = lambda: grpc_send(addrs["grpc_addr"], body, compress)  # noqa: E731
        results: list = [None] * concurrency
        peak = [base]
        killed = [False]

        def attack(i):
            results[i] = send()

        threads = [threading.Thread(target=attack, args=(i,)) for i in range(concurrency)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            try:
                rss = status_kib(proc.pid)["VmRSS"]
            except (FileNotFoundError, KeyError, ProcessLookupError):
                break
            peak[0] = max(peak[0], rss)
            if rss > cap_kib and not killed[0]:
                killed[0] = True
                proc.send_signal(signal.SIGKILL)
            time.sleep(0.005)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        alive = proc.poll() is None
        if alive:
            peak[0] = max(peak[0], status_kib(proc.pid)["VmHWM"])
            after = normal_request(addrs)
        else:
            after = None
        growth = (peak[0] - base) * 1024
        return {
            "kind": kind, "what": what, "body": decoded, "wire": wire, "base_mib": base / 1024,
            "peak_mib": peak[0] / 1024, "growth_mib": growth / MIB,
            "amplification": growth / (concurrency * decoded), "killed": killed[0] or not alive,
            "statuses": [r[0] for r in results], "first_error": next((r[1] for r in results if r[1]), ""),
            "after": after, "seconds": elapsed,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default=",".join([*HTTP, *GRPC]))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rss-cap-mib", type=int, default=6144,
                        help="kill the server past this RSS (protects the machine from a vulnerable build)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("extra", nargs="*", help="more `keel serve` flags (after --)")
    args = parser.parse_args()
    rows = []
    for kind in args.kinds.split(","):
        row = run_kind(kind, args.concurrency, args.rss_cap_mib * 1024, args.extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{args.concurrency} concurrent requests per kind, {KEEL_BIN}")
    print(f"| kind | body (wire) | base RSS | peak RSS | growth | amplification | answers | normal request after |")
    print(f"|---|---|---|---|---|---|---|---|")
    for r in rows:
        body = f"{r['body'] / MIB:.1f} MiB" + (f" ({r['wire'] / 1024:.0f} KiB)" if r["wire"] != r["body"] else "")
        peak = f"{r['peak_mib']:.0f} MiB" + (" (killed at cap)" if r["killed"] else "")
        statuses = ",".join(sorted(set(str(s) for s in r["statuses"])))
        after = "server dead" if r["after"] is None else str(r["after"])
        print(f"| {r['kind']} | {body} | {r['base_mib']:.0f} MiB | {peak} | {r['growth_mib']:.0f} MiB | "
              f"{r['amplification']:.2f} | {statuses} | {after} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

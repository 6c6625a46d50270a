#!/usr/bin/env bash
# Triton's perf_analyzer against a release `keel serve` on 127.0.0.1: throughput and p50/p99 latency at
# concurrency 1 and 16, for HTTP with JSON tensors, HTTP with binary tensors, and gRPC, on breast-cancer.
#   usage: benches/perf_analyzer.sh [MODEL]      (run `make test` once first: it installs perf_analyzer)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-breast-cancer}
PA=.tools/perf_analyzer/bin/perf_analyzer
[ -x "$PA" ] || PYTHON=.venv/bin/python benches/install-perf-analyzer.sh .tools/perf_analyzer
cargo build --release --bin keel -q
ORT=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)
LOG=$(mktemp)
NO_COLOR=1 ORT_DYLIB_PATH=$ORT ./target/release/keel serve --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 >"$LOG" 2>&1 &
KEEL=$!
trap 'kill $KEEL 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 100); do grep -q grpc_addr= "$LOG" && break; sleep 0.1; done
HTTP=$(grep -o 'http_addr=[^ ]*' "$LOG" | cut -d= -f2)
GRPC=$(grep -o 'grpc_addr=[^ ]*' "$LOG" | cut -d= -f2)

printf '%-12s %5s %12s %9s %9s\n' mode conc 'infer/s' 'p50 us' 'p99 us'
for mode in http-json http-binary grpc; do
  case $mode in
    http-json) args=(-i http -u "$HTTP" --input-tensor-format json --output-tensor-format json) ;;
    http-binary) args=(-i http -u "$HTTP" --input-tensor-format binary --output-tensor-format binary) ;;
    grpc) args=(-i grpc -u "$GRPC") ;;
  esac
  for c in 1 16; do
    out=$("$PA" -m "$MODEL" "${args[@]}" --concurrency-range "$c" --measurement-interval 2000 \
      --max-trials 10 --stability-percentage 20)
    tput=$(grep -m1 'Throughput:' <<<"$out" | awk '{print $2}')
    p50=$(grep -m1 'p50 latency' <<<"$out" | awk '{print $3}')
    p99=$(grep -m1 'p99 latency' <<<"$out" | awk '{print $3}')
    printf '%-12s %5s %12s %9s %9s\n' "$mode" "$c" "$tput" "$p50" "$p99"
  done
done

# Keel: the two quick-start commands are `make serve` and `make test`; both work from a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# The ONNX Runtime wheel that provides libonnxruntime.so (also pinned in models/requirements.txt).
ONNXRUNTIME := onnxruntime==1.31.1
HTTP_ADDR ?= 0.0.0.0:8000
MODEL_REPOSITORY ?= models
PERF_ANALYZER := .tools/perf_analyzer/bin/perf_analyzer
ORT_LIB = $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*))

.PHONY: help serve traffic demo test test-rust test-python lint models bench system-deps soak fuzz image kubeflow bench-load bench-instructions

help:
	@echo "make serve   build Keel (release) and serve ./models on :8000"
	@echo "make test    install everything the tests need, then run the Rust and Python test suites"
	@echo "make traffic replay training rows against make serve (TRAFFIC_ARGS='--rows 3000 --shift \"mean radius=2\"')"
	@echo "make demo    the closed MLOps loop: MLflow -> Keel -> drift -> signed webhook -> retraining pipeline -> new version served"
	@echo "make image   the container image keel:latest (podman; release build, Debian base from mmdebstrap, no registry)"
	@echo "make lint    cargo fmt --check and clippy -D warnings"
	@echo "make models  regenerate the example models (deterministic)"
	@echo "make kubeflow regenerate the compiled retraining pipeline, deploy/kubeflow/retrain_pipeline.yaml"
	@echo "make bench   criterion benchmarks"
	@echo "make bench-load  wrk (HTTP) and h2load (gRPC) against Keel and keel-canned side by side; prints the ratios"
	@echo "make bench-instructions  instructions per request under callgrind, Keel against keel-canned"
	@echo "make fuzz    long fuzz run: a million cases per fuzz target (release), schemathesis at 1000 examples per operation"
	@echo "make soak    30-minute soak and chaos bench (release build; figures in target/soak.json, see docs/soak.md)"

# Debian packages the build and the tests need, installed only when missing. Without root it prints the
# apt-get command to run instead.
system-deps:
	@missing=""; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	{ command -v promtool && command -v prometheus; } >/dev/null || missing="$$missing prometheus"; \
	command -v $(PYTHON) >/dev/null || missing="$$missing python3"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv python3-pip"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "missing Debian packages; install them, then run make again:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }

# Runtime venv for `make serve`: only the ONNX Runtime wheel. Without python3, python3-venv or PyPI, Keel
# serves on tract alone (ONNX Runtime-only models then report themselves unavailable, with the reason).
$(VENV)/.ort:
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo "no $(PYTHON) with venv (Debian: apt-get install python3-venv): serving with tract only"; \
	elif $(PYTHON) -m venv $(VENV) && $(VPY) -m pip install -q --disable-pip-version-check $(ONNXRUNTIME); then \
	  touch $@; \
	else echo "could not install $(ONNXRUNTIME) into $(VENV): serving with tract only"; fi

# The walkthrough's traffic generator (models/traffic.py) needs numpy and scikit-learn.
$(VENV)/.traffic: models/requirements.txt
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { $(MAKE) --no-print-directory system-deps; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r models/requirements.txt
	touch $@

# Everything the tests need: model generator, onnxruntime, tritonclient, pytest.
$(VENV)/.test: models/requirements.txt tests/requirements.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check --upgrade pip
	cd tests && ../$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $(VENV)/.ort $(VENV)/.traffic $@

# Triton's perf_analyzer under .tools/ (benches/install-perf-analyzer.sh; nothing system-wide).
$(PERF_ANALYZER): benches/install-perf-analyzer.sh | $(VENV)/.test
	PYTHON=$(VPY) benches/install-perf-analyzer.sh .tools/perf_analyzer

serve: $(VENV)/.ort
	cargo build --release --bin keel
	@echo
	@echo "Keel on http://localhost:$(lastword $(subst :, ,$(HTTP_ADDR))), gRPC on :8001, metrics on http://localhost:8002/metrics   (Ctrl-C stops it)"
	@echo "  curl localhost:$(lastword $(subst :, ,$(HTTP_ADDR)))/v2/models/breast-cancer"
	@echo "  curl localhost:$(lastword $(subst :, ,$(HTTP_ADDR)))/v2/models/breast-cancer/infer -d @tests/data/example_request.json"
	@echo
	ORT_DYLIB_PATH=$(ORT_LIB) ./target/release/keel serve --model-repository $(MODEL_REPOSITORY) --http-addr $(HTTP_ADDR)

# The container image (deploy/container/Containerfile, see deploy/README.md) from this host's release build
# (stripped) and the pinned wheel's libonnxruntime.so, on a Debian trixie base built with mmdebstrap and kept
# as localhost/keel-base:trixie-slim: no registry needed. IMAGE=... RUNTIME_BASE=... ENGINE=docker also work.
IMAGE ?= keel:latest
image: $(VENV)/.ort
	cargo build --release --bin keel
	deploy/container/build-image.sh --keel target/release/keel $(if $(ORT_LIB),--onnxruntime $(ORT_LIB)) --tag $(IMAGE)

# Replays training rows against a running `make serve`: make traffic TRAFFIC_ARGS='--rows 3000 --shift "mean radius=2"'
TRAFFIC_ARGS ?= --rows 2000
traffic: $(VENV)/.traffic
	$(VPY) models/traffic.py --url http://127.0.0.1:$(lastword $(subst :, ,$(HTTP_ADDR))) $(TRAFFIC_ARGS)

# The closed loop end to end on real MLflow, Keel, the retraining hook and the retraining pipeline run with
# kfp.local (models/demo.py); the same loop is tests/test_closed_loop.py.
demo: $(VENV)/.test
	cargo build --release --bin keel
	KEEL_BIN=$(abspath target/release/keel) ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) $(VPY) models/demo.py

# The retraining pipeline's compiled KFP spec (deterministic; tests/test_kubeflow.py checks it is current).
kubeflow: $(VENV)/.test
	$(VPY) deploy/kubeflow/retrain_pipeline.py compile

test: system-deps $(VENV)/.test $(PERF_ANALYZER)
	$(MAKE) --no-print-directory test-rust test-python

test-rust:
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) cargo test --workspace --all-targets

# The Python compatibility suite runs the real tritonclient against the keel binary built by test-rust.
test-python: $(PERF_ANALYZER)
	$(VPY) models/make_models.py --check
	cargo build --bin keel
	KEEL_BIN=$(abspath target/debug/keel) ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) \
	  PERF_ANALYZER=$(abspath $(PERF_ANALYZER)) $(VPY) -m pytest -q tests

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

models: $(VENV)/.test
	$(VPY) models/make_models.py

bench:
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) cargo bench -p keel-benches

# Keel (defaults: batching, embedded monitor, prediction log) against keel-canned, the protocol floor, under
# wrk and h2load (installed from Debian when missing); figures in target/bench-load.json (docs/performance.md).
BENCH_LOAD_ARGS ?= --duration 10 --rounds 2
bench-load: $(VENV)/.test
	cargo build --release --bin keel --bin keel-canned
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) $(VPY) benches/bench_load.py $(BENCH_LOAD_ARGS)

# Instructions per request under valgrind's callgrind (installed from Debian when missing), Keel, Keel
# --monitor off and keel-canned: counts for A/B comparisons finer than throughput rounds resolve; figures in
# target/instructions.json (docs/performance.md).
BENCH_INSTRUCTIONS_ARGS ?= --requests 20000
bench-instructions: $(VENV)/.test
	cargo build --release --bin keel --bin keel-canned
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) $(VPY) benches/instructions.py $(BENCH_INSTRUCTIONS_ARGS)

# Soak and chaos bench (benches/soak.py, docs/soak.md): 30 min of mixed HTTP/gRPC traffic, a swap every 10 s,
# sidecar, webhook, MLflow and keel itself failing once each. tests/test_soak.py is its one-minute variant.
SOAK_DURATION ?= 1800
SOAK_OUT ?= target/soak.json
soak: $(VENV)/.test
	cargo build --release --bin keel
	KEEL_BIN=$(abspath target/release/keel) ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) \
	  $(VPY) benches/soak.py --duration $(SOAK_DURATION) --swap-every 10 --out $(SOAK_OUT)

# Fuzzing (docs/fuzzing.md): each property/fuzz target FUZZ_CASES cases in release from a fresh seed (printed,
# KEEL_FUZZ_SEED replays it), then schemathesis against docs/openapi.yaml at FUZZ_EXAMPLES examples per
# operation. `make test` runs the same targets at 256 cases and 25 examples. Runs everything, fails if any failed.
FUZZ_CASES ?= 1000000
FUZZ_EXAMPLES ?= 1000
FUZZ_SEED ?= $(shell date +%s)
fuzz: $(VENV)/.test
	@status=0; export KEEL_FUZZ_CASES=$(FUZZ_CASES) KEEL_FUZZ_SEED=$(FUZZ_SEED); \
	cargo test --release -p keel-server --test fuzz -- --nocapture --test-threads 1 || status=1; \
	cargo test --release -p keel-monitor --test fuzz_baseline -- --nocapture || status=1; \
	cargo build --bin keel && \
	KEEL_BIN=$(abspath target/debug/keel) ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) KEEL_SCHEMATHESIS_EXAMPLES=$(FUZZ_EXAMPLES) \
	  $(VPY) -m pytest -q tests/test_openapi.py || status=1; \
	exit $$status

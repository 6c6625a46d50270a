"""Smoke test with Triton's own load tool: perf_analyzer must accept Keel as a Triton server over HTTP
(JSON and binary tensors) and gRPC, and finish without an error, on Keel's example repository and on a
Triton-layout one (config.pbtxt only). Short runs: CI time matters."""

import os
import subprocess

import pytest

import triton_repo
from conftest import ROOT, Keel

PERF_ANALYZER = os.environ.get("PERF_ANALYZER", str(ROOT / ".tools/perf_analyzer/bin/perf_analyzer"))

MODES = {
    "http-json": ["-i", "http", "--input-tensor-format", "json", "--output-tensor-format", "json"],
    "http-binary": ["-i", "http", "--input-tensor-format", "binary", "--output-tensor-format", "binary"],
    "grpc": ["-i", "grpc"],
}


@pytest.fixture(scope="module")
def triton_keel(tmp_path_factory):
    server = Keel(triton_repo.write(tmp_path_factory.mktemp("triton") / "models"))
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_perf_analyzer_runs_clean(keel, mode):
    run_clean(keel, "breast-cancer", mode)


@pytest.mark.parametrize("model", ["simple", "simple_string"])
@pytest.mark.parametrize("mode", MODES)
def test_perf_analyzer_on_a_triton_repository(triton_keel, model, mode):
    run_clean(triton_keel, model, mode)


def run_clean(keel, model: str, mode: str):
    assert os.path.exists(PERF_ANALYZER), "perf_analyzer missing: `make test` installs it into .tools/"
    url = keel.grpc if mode == "grpc" else keel.http
    # A smoke test, not a measurement: any variation between windows counts as stable, so a busy CI
    # machine cannot fail it; the real figures come from benches/perf_analyzer.sh.
    # simple_string's inputs are decimal numbers: perf_analyzer's default random strings would not parse.
    data = ["--string-data", "7"] if model == "simple_string" else []
    cmd = [PERF_ANALYZER, "-m", model, "-u", url, *MODES[mode], *data, "--concurrency-range", "4",
           "--measurement-interval", "500", "--max-trials", "10", "--stability-percentage", "1000"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Throughput:" in output, output
    assert "error" not in output.lower() and "failed" not in output.lower(), output
    # perf_analyzer read Keel's statistics extension for its server-side breakdown.
    assert "Successful request count:" in output, output

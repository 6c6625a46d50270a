"""Smoke test with Triton's own load tool: perf_analyzer must accept Keel as a Triton server over HTTP
(JSON and binary tensors) and gRPC, and finish without an error. Short runs: CI time matters."""

import os
import subprocess

import pytest

from conftest import ROOT

PERF_ANALYZER = os.environ.get("PERF_ANALYZER", str(ROOT / ".tools/perf_analyzer/bin/perf_analyzer"))

MODES = {
    "http-json": ["-i", "http", "--input-tensor-format", "json", "--output-tensor-format", "json"],
    "http-binary": ["-i", "http", "--input-tensor-format", "binary", "--output-tensor-format", "binary"],
    "grpc": ["-i", "grpc"],
}


@pytest.mark.parametrize("mode", MODES)
def test_perf_analyzer_runs_clean(keel, mode):
    assert os.path.exists(PERF_ANALYZER), "perf_analyzer missing: `make test` installs it into .tools/"
    url = keel.grpc if mode == "grpc" else keel.http
    # A smoke test, not a measurement: any variation between windows counts as stable, so a busy CI
    # machine cannot fail it; the real figures come from benches/perf_analyzer.sh.
    cmd = [PERF_ANALYZER, "-m", "breast-cancer", "-u", url, *MODES[mode], "--concurrency-range", "4",
           "--measurement-interval", "500", "--max-trials", "10", "--stability-percentage", "1000"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Throughput:" in output, output
    assert "error" not in output.lower() and "failed" not in output.lower(), output
    # perf_analyzer read Keel's statistics extension for its server-side breakdown.
    assert "Successful request count:" in output, output

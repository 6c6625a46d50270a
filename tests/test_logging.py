"""Log output of the real binary: on stderr, plain text without terminal escape codes when stderr is a pipe
(log files, `kubectl logs`), or one JSON object per line with --log-format json."""

import json
import os
import signal
import subprocess

from conftest import KEEL_BIN, ROOT

SERVE = ["serve", "--model-repository", str(ROOT / "models"), "--http-addr", "127.0.0.1:0",
         "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]


def run_until_serving(*args: str, env: dict | None = None) -> tuple[str, list[str]]:
    """Starts keel, waits for its "serving" line, stops it; returns (stdout, stderr lines)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "KEEL_LOG_FORMAT")}
    proc = subprocess.Popen([KEEL_BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(environment, **(env or {})))
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "serving KServe V2" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + err
    return out, lines + err.splitlines(keepends=True)


def test_text_logs_go_to_stderr_without_escape_codes_when_piped():
    out, lines = run_until_serving(*SERVE)
    assert out == ""
    text = "".join(lines)
    assert "\x1b[" not in text
    assert any(" INFO " in line and "serving KServe V2" in line for line in lines), text
    assert any("http_addr=127.0.0.1:" in line for line in lines), text


def test_json_logs_are_one_object_per_line():
    out, lines = run_until_serving("--log-format", "json", *SERVE)
    assert out == ""
    records = [json.loads(line) for line in lines if line.strip()]
    assert records and all({"timestamp", "level", "target", "message"} <= r.keys() for r in records)
    listening = next(r for r in records if r["message"].startswith("listening"))
    assert listening["level"] == "INFO" and listening["http"].startswith("127.0.0.1:")
    ready = [r for r in records if r["message"] == "model version ready"]
    assert {(r["model"], r["version"]) for r in ready} >= {("breast-cancer", 1), ("breast-cancer", 2)}
    assert any(r["message"] == "stopped" for r in records)


def test_the_format_comes_from_the_environment_and_applies_to_the_sidecar():
    proc = subprocess.Popen([KEEL_BIN, "monitor", "--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, KEEL_LOG_FORMAT="json"))
    try:
        first = json.loads(proc.stderr.readline())
        assert first["level"] == "INFO" and "monitor" in first["message"], first
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0

"""Shared fixtures: a real `keel serve` process on 127.0.0.1, and reference results from onnxruntime."""

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
KEEL_BIN = os.environ.get("KEEL_BIN", str(ROOT / "target/debug/keel"))


class Keel:
    """A running keel process; `http` is host:port, `log` the lines it printed so far."""

    def __init__(self, repository: Path, *args: str):
        env = dict(os.environ, NO_COLOR="1", KEEL_LOG="info")
        env.pop("KEEL_ADMIN_TOKEN", None)
        self.proc = subprocess.Popen(
            [KEEL_BIN, "serve", "--model-repository", str(repository), "--http-addr", "127.0.0.1:0",
             "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self.http, self.grpc, self.metrics = self._wait_for_addresses()
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_addresses(self) -> tuple[str, str, str]:
        deadline = time.monotonic() + 60
        for line in self.proc.stdout:
            self.log.append(line)
            match = re.search(r"http_addr=(\S+) grpc_addr=(\S+) metrics_addr=(\S+)", line)
            if match:
                return match.group(1), match.group(2), match.group(3)
            if time.monotonic() > deadline:
                break
        raise RuntimeError("keel did not start:\n" + "".join(self.log))

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def build_repository(dest: Path) -> Path:
    """The example models under their own names, plus tract copies and the datatype model on both backends."""
    models = ROOT / "models"
    shutil.copytree(models / "breast-cancer", dest / "breast-cancer")
    shutil.copytree(models / "breast-cancer-gbt", dest / "breast-cancer-gbt")
    shutil.copytree(models / "breast-cancer", dest / "breast-cancer-tract")
    (dest / "breast-cancer-tract/model.toml").write_text('backend = "tract"\nversion_policy = "all"\n')
    shutil.copytree(ROOT / "tests/models/slow-mlp", dest / "slow-mlp")
    (dest / "slow-mlp/model.toml").write_text("max_batch_size = 1024\n[dynamic_batching]\nmax_queue_size = 2\n")
    for name, backend in [("datatypes", "onnxruntime"), ("datatypes-tract", "tract")]:
        shutil.copytree(ROOT / "tests/models/datatypes", dest / name)
        (dest / name / "model.toml").write_text(f'backend = "{backend}"\n')
    return dest


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def keel(tmp_path_factory):
    server = Keel(build_repository(tmp_path_factory.mktemp("repo")), "--admin-token", ADMIN_TOKEN)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def features() -> np.ndarray:
    return np.load(ROOT / "tests/data/breast_cancer.npy")


_sessions: dict[str, ort.InferenceSession] = {}


def reference(model_path: Path, feeds: dict) -> dict:
    """Outputs of onnxruntime's own Python API: what Keel must agree with."""
    key = str(model_path)
    if key not in _sessions:
        _sessions[key] = ort.InferenceSession(key, providers=["CPUExecutionProvider"])
    session = _sessions[key]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))

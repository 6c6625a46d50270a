"""A real `mlflow server` on 127.0.0.1 for the tests (sqlite store, artifacts served by the server), and
the registry calls they make."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

MLFLOW_BIN = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """Start, stop and restart on the same port and store, as an outage would."""

    def __init__(self, workdir: Path, tls: tuple[Path, Path, Path] | None = None):
        """`tls`: (certificate, key, CA) to serve https; the caller sets MLFLOW_TRACKING_SERVER_CERT_PATH."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.uri = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc = None
        self.start()
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def start(self, timeout: float = 120):
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = open(self.workdir / "mlflow.log", "ab")
        self.proc = subprocess.Popen(
            [MLFLOW_BIN, "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.workdir}/mlflow.db",
             "--artifacts-destination", str(self.workdir / "artifacts"),
             "--serve-artifacts", "--workers", "1", *self._tls_args()],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + (self.workdir / "mlflow.log").read_text()[-3000:])
            try:
                if requests.get(f"{self.uri}/health", timeout=1, verify=str(self.tls[2]) if self.tls else True).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError("mlflow server did not become healthy")

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        cert, key, _ = self.tls
        return ["--uvicorn-opts", f"--ssl-certfile {cert} --ssl-keyfile {key}"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # uvicorn serving TLS can sit on open keep-alive connections past SIGTERM.
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=15)

    def register(self, name: str, files: dict[str, bytes]) -> int:
        """Logs `files` as a run's `model/` artifacts and registers them as the next version of `name`."""
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        experiment = self.client.get_experiment_by_name("keel-tests") or None
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("keel-tests")
        run = self.client.create_run(experiment_id)
        stage = self.workdir / f"stage-{run.info.run_id}"
        stage.mkdir()
        for file, data in files.items():
            (stage / file).write_bytes(data)
        self.client.log_artifacts(run.info.run_id, str(stage), artifact_path="model")
        self.client.set_terminated(run.info.run_id)
        version = self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        return int(version.version)

    def set_alias(self, name: str, alias: str, version: int):
        self.client.set_registered_model_alias(name, alias, str(version))
